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
from distgru.training.checkpoint import load_best, load_state, save_best, save_state
from distgru.training.rundir import (
    CONFIG_FILE,
    PREDICTION_COLUMNS,
    RESULT_FILE,
    append_metrics,
    create_run_dir,
    oracle_ic,
    prediction_frame,
    read_config,
    read_metrics,
    read_result,
    write_predictions,
    write_result,
)
from distgru.training.windows import sample_index
from tests.ray_fixtures import STEP, sample_result, tiny_config, tiny_panel, tiny_state


def test_run_dir_layout_and_config_roundtrip(tmp_path) -> None:
    cfg = tiny_config(str(tmp_path / "runs"), "train.lr=0.01")
    now = datetime(2026, 5, 1, 12, 0, 0)
    first, second = create_run_dir(cfg, now), create_run_dir(cfg, now)
    assert first.name == "tiny-20260501-120000" and second.name == "tiny-20260501-120000-2"
    assert read_config(first / CONFIG_FILE) == cfg


def test_metrics_keep_the_last_row_per_epoch(tmp_path) -> None:
    for epoch, attempt in ((0, 0), (1, 0), (2, 0), (2, 1), (3, 1)):
        append_metrics(tmp_path, {"epoch": epoch, "attempt": attempt, "valid_ic": np.float32(0.5), "x": float("nan")})
    rows = read_metrics(tmp_path)
    assert [(r["epoch"], r["attempt"]) for r in rows] == [(0, 0), (1, 0), (2, 1), (3, 1)]
    assert rows[0]["x"] is None


def test_result_json_is_strict_json_and_round_trips(tmp_path) -> None:
    result = sample_result(tmp_path)
    path = write_result(tmp_path, result)
    assert path.name == RESULT_FILE
    data = json.loads(path.read_text(), parse_constant=lambda c: pytest.fail(f"non-JSON constant {c}"))
    for key in ("best_epoch", "epochs", "valid", "test", "train_samples_per_s", "wall_s", "oracle_ic",
                "provenance"):
        assert key in data
    assert {"IC", "ICIR", "RankIC", "RankICIR"} <= set(data["test"])
    prov = data["provenance"]
    assert {"torch", "ray", "numpy", "pandas"} <= set(prov["packages"])
    assert prov["data_fingerprint"] and prov["hostname"] and prov["devices"] == ["cpu@host"]
    back = read_result(tmp_path)
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
    state = {"epoch": 3, "rng": np.random.get_state(), "w": torch.arange(4.0)}
    save_state(state, tmp_path)
    assert load_state(tmp_path)["epoch"] == 3

    cfg = tiny_config(str(tmp_path))
    model = build_model(cfg.model, STEP)
    save_best(tmp_path, cfg, model.state_dict(), tiny_state(),
              {"step_len": STEP, "feature_names": ["F0", "F1", "F2"], "best_epoch": 2, "best_score": 0.3})
    best = load_best(tmp_path)
    assert best.cfg == cfg and best.meta["step_len"] == STEP
    assert best.processor_state.feature_names == tiny_state().feature_names
    x = torch.randn(5, STEP, 3)
    torch.testing.assert_close(best.model(x), model.eval()(x))
    with pytest.raises(FileNotFoundError, match="finished distgru run"):
        load_best(tmp_path / "nope")
