"""Ray Train end to end on a tiny panel: shards, checkpoints, run directory, world-size parity, resume, pre-flight.

The three fits (2 workers, 1 worker, 2 workers with a killed rank) are cached per module and shared by the tests.
"""

from __future__ import annotations

import time
from datetime import datetime
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml

from distgru.config import ConfigError
from distgru.training.capacity import autoscaler_ceiling, check_resources
from distgru.training.checkpoint import load_best
from distgru.training.finish import finish_run
from distgru.training.preflight import check_data
from distgru.training.ray_train import FAIL_ENV, run_training
from distgru.training.result import RunResult
from distgru.training.rundir import PREDICTIONS_FILE, RunDir, read_result
from distgru.training.scoring import predict, segment_samples
from tests.ray_fixtures import ray_runtime, tiny_config, tiny_panel, tiny_state  # noqa: F401

_FITS: dict[str, tuple[Path, RunResult]] = {}


def _fit(tmp_path_factory: pytest.TempPathFactory, key: str, *overrides: str) -> tuple[Path, RunResult]:
    if key not in _FITS:
        cfg = tiny_config(str(tmp_path_factory.mktemp(key)), *overrides)
        panel = tiny_panel()
        run = RunDir.create(cfg)
        t0 = time.perf_counter()
        final = run_training(cfg, panel, run.path, progress=False)
        _FITS[key] = run.path, finish_run(cfg, panel, tiny_state(), final, run, started=datetime.now(), t0=t0,
                                          train_wall_s=time.perf_counter() - t0)
    return _FITS[key]


@pytest.mark.ray
def test_two_workers_end_to_end(ray_runtime, tmp_path_factory) -> None:  # noqa: F811
    run_dir, result = _fit(tmp_path_factory, "two")
    panel = tiny_panel()
    assert list(run_dir.glob("checkpoint_*/state.pt")), "Ray Train wrote no checkpoint into the run directory"
    epochs = [row["epoch"] for row in RunDir(run_dir).read_metrics()]
    assert epochs == list(range(1, result.epochs + 1))
    assert result.provenance.num_workers == 2 and len(result.provenance.devices) == 2

    preds = pd.read_parquet(run_dir / PREDICTIONS_FILE)
    inst, day = segment_samples(panel)["test"]
    assert len(preds) == len(inst)
    expected = set(zip(panel.calendar[day], np.asarray(panel.instruments)[inst], strict=True))
    assert set(zip(preds["datetime"], preds["instrument"], strict=True)) == expected
    assert preds[["datetime", "instrument"]].equals(preds.sort_values(["datetime", "instrument"])[
        ["datetime", "instrument"]].reset_index(drop=True))
    assert result.test["IC"] > 0.2  # the planted signal's IC is ~0.45

    # best/ alone reproduces the predictions (what `distgru predict` relies on).
    best = load_best(run_dir)
    scores = predict(best.model, panel, inst, day, best.meta.window_len, 256, "cpu")
    frame = pd.DataFrame({"datetime": panel.calendar[day], "instrument": np.asarray(panel.instruments)[inst],
                          "s": scores}).sort_values(["datetime", "instrument"])
    np.testing.assert_allclose(frame["s"].to_numpy(), preds["score"].to_numpy(), rtol=1e-5, atol=1e-6)
    assert read_result(run_dir).best_epoch == result.best_epoch


@pytest.mark.ray
def test_one_worker_matches_two(ray_runtime, tmp_path_factory) -> None:  # noqa: F811
    _, two = _fit(tmp_path_factory, "two")
    _, one = _fit(tmp_path_factory, "one", "resources.num_workers=1")
    assert abs(one.best_epoch - two.best_epoch) <= 1
    assert one.valid["IC"] == pytest.approx(two.valid["IC"], abs=0.003)


@pytest.mark.ray
def test_killed_worker_resumes_exactly(ray_runtime, tmp_path_factory, monkeypatch) -> None:  # noqa: F811
    _, clean = _fit(tmp_path_factory, "two")
    monkeypatch.setenv(FAIL_ENV, "1:3")  # rank 1 dies at epoch 3 (after epoch 2's checkpoint), first attempt only
    run_dir, resumed = _fit(tmp_path_factory, "killed", "resources.max_failures=1")
    assert resumed.restarts == 1
    rows = RunDir(run_dir).read_metrics()
    assert [r["epoch"] for r in rows] == list(range(1, resumed.epochs + 1))
    assert any(r["attempt"] == 1 for r in rows)
    assert resumed.best_epoch == clean.best_epoch and resumed.epochs == clean.epochs
    for key in ("IC", "ICIR", "RankIC", "RankICIR"):
        assert resumed.test[key] == pytest.approx(clean.test[key], abs=1e-6)


@pytest.mark.ray
def test_too_many_workers_fails_before_any_worker(ray_runtime, tmp_path) -> None:  # noqa: F811
    cfg = tiny_config(str(tmp_path), "resources.num_workers=5")
    run = RunDir.create(cfg)
    t0 = time.perf_counter()
    with pytest.raises(ConfigError, match=r"resources\.num_workers: 5 workers .* the Ray cluster has 4"):
        run_training(cfg, tiny_panel(), run.path, progress=False)
    assert time.perf_counter() - t0 < 5
    assert not list(run.path.glob("checkpoint_*"))


def test_data_preflight_names_the_key(tmp_path) -> None:
    panel = tiny_panel()
    n_train = len(segment_samples(panel)["train"][0])
    with pytest.raises(ConfigError, match=rf"train\.batch_size: 5000 .* {n_train} training samples"):
        check_data(tiny_config(str(tmp_path), "train.batch_size=5000"), panel)
    with pytest.raises(ConfigError, match=r"model\.d_feat: 7"):
        check_data(tiny_config(str(tmp_path), "model.d_feat=7"), panel)
    empty = tiny_panel()
    empty.segments["test"] = (110, 110)
    with pytest.raises(ConfigError, match=r"dataset\.test"):
        check_data(tiny_config(str(tmp_path)), empty)


def test_resource_preflight() -> None:
    res = tiny_config("unused").resources
    check_resources(res, {"CPU": 2.0})
    with pytest.raises(ConfigError, match=r"resources\.use_gpu"):
        check_resources(type(res)(num_workers=1, use_gpu=True), {"CPU": 8.0})
    with pytest.raises(ConfigError, match=r"resources\.num_workers: 4 workers .* GPUs"):
        check_resources(type(res)(num_workers=4, use_gpu=True), {"CPU": 8.0, "GPU": 2.0})
    check_resources(type(res)(num_workers=64), {"CPU": 2.0}, autoscaling=True)  # ceiling unknown: not checked


def test_autoscaler_ceiling_from_the_bootstrap_config(tmp_path) -> None:
    config = {"max_workers": 5, "head_node_type": "head", "available_node_types": {
        "head": {"resources": {"CPU": 4}},
        "gpu": {"max_workers": 4, "resources": {"CPU": 8, "GPU": 1}},
        "big_cpu": {"max_workers": 3, "resources": {"CPU": 32}}}}
    path = tmp_path / "ray_bootstrap_config.yaml"
    path.write_text(yaml.safe_dump(config))
    # GPUs: the 4 GPU nodes; CPUs: 3 × 32 + 2 × 8 (5 nodes at most) + the head's 4.
    assert autoscaler_ceiling(path) == {"CPU": 116.0, "GPU": 4.0}
    res = tiny_config("unused").resources
    check_resources(type(res)(num_workers=4, use_gpu=True), {"CPU": 4.0}, True, autoscaler_ceiling(path))
    with pytest.raises(ConfigError, match=r"need 5 GPUs; its autoscaler can reach at most 4"):
        check_resources(type(res)(num_workers=5, use_gpu=True), {"CPU": 4.0}, True, autoscaler_ceiling(path))
    with pytest.raises(ConfigError, match=r"need 200 CPUs; its autoscaler can reach at most 116"):
        check_resources(type(res)(num_workers=200), {"CPU": 4.0}, True, autoscaler_ceiling(path))
    # A node type that leaves its resources to instance-type detection makes the ceiling unknown (the shipped
    # cluster/aws-gpu.yaml declares them: tests/test_cluster.py).
    config["available_node_types"]["gpu"]["resources"] = {}
    path.write_text(yaml.safe_dump(config))
    assert autoscaler_ceiling(path) is None
    assert autoscaler_ceiling(tmp_path / "missing.yaml") is None
