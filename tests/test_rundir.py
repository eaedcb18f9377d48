"""Run directory, result schema, predictions and best/ round trips (no Ray)."""

from __future__ import annotations

import dataclasses
import json
from datetime import datetime

import numpy as np
import pandas as pd
import pytest
import torch

from distgru.models import build_model
from distgru.training.checkpoint import load_best, save_best
from distgru.training.finish import oracle_ic
from distgru.training.rundir import (
    PREDICTION_COLUMNS,
    RESULT_FILE,
    RunDir,
    atomic_write_text,
    read_config,
    write_predictions,
)
from distgru.training.scoring import prediction_frame
from distgru.training.state import TrainState
from distgru.training.windows import sample_index
from tests.ray_fixtures import STEP, sample_result, tiny_config, tiny_panel, tiny_state


def test_run_dir_layout_and_config_roundtrip(tmp_path) -> None:
    cfg = tiny_config(str(tmp_path / "runs"), "train.lr=0.01")
    now = datetime(2026, 5, 1, 12, 0, 0)
    first, second = RunDir.create(cfg, now), RunDir.create(cfg, now)
    assert first.path.name == "tiny-20260501-120000" and second.path.name == "tiny-20260501-120000-2"
    assert read_config(first.config) == cfg == first.read_config()


def test_metrics_keep_the_last_row_per_epoch(tmp_path) -> None:
    run = RunDir(tmp_path)
    for epoch, attempt in ((1, 0), (2, 0), (3, 0), (3, 1), (4, 1)):
        run.append_metrics({"epoch": epoch, "attempt": attempt, "valid_ic": np.float32(0.5), "x": float("nan")})
    with open(run.metrics, "a") as f:
        f.write('{"epoch": 5, "attem')  # a line cut by a crash is skipped, not fatal
    rows = run.read_metrics()
    assert [(r["epoch"], r["attempt"]) for r in rows] == [(1, 0), (2, 0), (3, 1), (4, 1)]
    assert rows[0]["x"] is None


def test_atomic_writes_leave_the_old_file_when_the_new_one_fails(tmp_path, monkeypatch) -> None:
    path = atomic_write_text(tmp_path / "result.json", "old")

    def broken(self, text, encoding=None):  # a crash in the middle of writing the new file
        raise OSError("disk full")

    monkeypatch.setattr(type(path), "write_text", broken)
    with pytest.raises(OSError):
        atomic_write_text(path, "new")
    monkeypatch.undo()
    assert path.read_text() == "old"


def test_result_json_is_strict_json_and_round_trips(tmp_path) -> None:
    result = sample_result(tmp_path)
    path = RunDir(tmp_path).write_result(result)
    assert path.name == RESULT_FILE
    data = json.loads(path.read_text(), parse_constant=lambda c: pytest.fail(f"non-JSON constant {c}"))
    for key in ("best_epoch", "epochs", "valid", "test", "train_samples_per_s", "wall_s", "oracle_ic",
                "provenance"):
        assert key in data
    assert {"IC", "ICIR", "RankIC", "RankICIR"} <= set(data["test"])
    prov = data["provenance"]
    assert {"torch", "ray", "numpy", "pandas"} <= set(prov["packages"])
    assert prov["data_fingerprint"] and prov["hostname"] and prov["devices"] == ["cpu@host"]
    back = RunDir(tmp_path).read_result()
    assert np.isnan(back.test["ICIR"])
    assert dataclasses.replace(back, test={}) == dataclasses.replace(result, test={})


def test_predictions_are_sorted_with_the_raw_label(tmp_path) -> None:
    panel = tiny_panel()
    inst, day = sample_index(panel, "test", "infer")  # instrument-major, as the loop scores them
    frame = prediction_frame(panel, inst, day, inst * 1000.0 + day)
    assert tuple(frame.columns) == PREDICTION_COLUMNS
    assert frame["datetime"].is_monotonic_increasing
    assert len(frame) == len(inst)
    inst_back = frame["instrument"].map({s: i for i, s in enumerate(panel.instruments)}).to_numpy()
    day_back = panel.calendar.get_indexer(frame["datetime"])
    np.testing.assert_array_equal(frame["score"], inst_back * 1000.0 + day_back)
    np.testing.assert_array_equal(frame["label"], panel.label_raw[inst_back, day_back].astype(np.float64))
    write_predictions(tmp_path / "p.parquet", frame)
    pd.testing.assert_frame_equal(pd.read_parquet(tmp_path / "p.parquet"), frame, check_dtype=False)


def test_oracle_ic_of_the_label_itself_is_one() -> None:
    panel = tiny_panel()
    inst, day = sample_index(panel, "test", "infer")
    assert oracle_ic(panel.label_raw.astype(np.float64), panel, inst, day) == pytest.approx(1.0)
    assert 0.2 < oracle_ic(panel.features[:, :, 0] * 0.5, panel, inst, day) < 0.7


def test_state_and_best_round_trip(tmp_path) -> None:
    cfg = tiny_config(str(tmp_path))
    model = build_model(cfg.model, STEP)
    state = TrainState(epoch=3, model={}, optimizer={}, scaler={}, best_score=0.3, best_epoch=2, patience=1,
                       best_model=model.state_dict())
    save_best(tmp_path, cfg, state, tiny_state())
    best = load_best(tmp_path)
    assert best.cfg == cfg and best.meta.window_len == STEP and best.meta.best_epoch == 2
    assert best.meta.feature_names == list(tiny_state().feature_names)
    assert best.processor_state.feature_names == tiny_state().feature_names
    x = torch.randn(5, STEP, 3)
    torch.testing.assert_close(best.model(x), model.eval()(x))
    with pytest.raises(FileNotFoundError, match="finished distgru run"):
        load_best(tmp_path / "nope")


def test_a_crash_while_writing_a_checkpoint_leaves_the_previous_one_loadable(tmp_path, monkeypatch) -> None:
    def state(epoch: int) -> TrainState:
        return TrainState(epoch=epoch, model={"w": torch.full((3,), float(epoch))}, optimizer={}, scaler={},
                          best_score=0.1, best_epoch=1, patience=0, best_model={})

    state(1).save(tmp_path)

    def crash(obj, f, *args, **kwargs):  # half the bytes, then the process dies
        with open(f, "wb") as out:
            out.write(b"PK\x03\x04 half a zip")
        raise KeyboardInterrupt

    monkeypatch.setattr(torch, "save", crash)
    with pytest.raises(KeyboardInterrupt):
        state(2).save(tmp_path)
    monkeypatch.undo()
    back = TrainState.load(tmp_path)
    assert back.epoch == 1 and torch.equal(back.model["w"], torch.ones(3))
