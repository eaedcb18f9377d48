"""One Ray runtime for the whole test session, and a tiny processed panel with a planted signal.

Import the fixture into a test module (``from tests.ray_fixtures import ray_runtime  # noqa: F401``); every module
then shares the same ``ray.init``, because starting Ray costs ~10 s here.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest

from distgru.config import Config, config_from_dict
from distgru.processing.panel import ProcessedPanel
from distgru.processing.processors import ProcessorState
from distgru.training.result import RunResult, collect_provenance

N_INST, N_DAYS, N_FEAT, STEP = 64, 110, 3, 5
SEGMENTS = {"train": (10, 70), "valid": (70, 90), "test": (90, 110)}


@pytest.fixture(scope="session")
def ray_runtime(tmp_path_factory: pytest.TempPathFactory) -> Iterator[None]:
    import ray

    if ray.is_initialized():  # each importing module defines its own copy of this fixture; the first one owns Ray
        yield
        return
    # Faster detection of a dead worker than the 2 s default; propagated to the Train controller and workers.
    os.environ.setdefault("RAY_TRAIN_HEALTH_CHECK_INTERVAL_S", "0.5")
    ray.init(num_cpus=4, _temp_dir=str(tmp_path_factory.mktemp("ray")), log_to_driver=False)
    yield
    ray.shutdown()


def tiny_panel(seed: int = 0) -> ProcessedPanel:
    """64 instruments × 110 days × 3 features; the label is feature 0 of the sample day plus noise. (64 keeps the
    valid set large enough that a 1- and a 2-worker run's IC differ by batch composition far less than 0.003.)"""
    rng = np.random.default_rng(seed)
    features = rng.standard_normal((N_INST, N_DAYS, N_FEAT)).astype(np.float32)
    label = (0.5 * features[:, :, 0] + rng.standard_normal((N_INST, N_DAYS))).astype(np.float32)
    membership = rng.random((N_INST, N_DAYS)) > 0.1
    learn = np.where(membership, label, np.nan).astype(np.float32)
    return ProcessedPanel(
        calendar=pd.bdate_range("2021-01-04", periods=N_DAYS), instruments=tuple(f"S{i:03d}" for i in range(N_INST)),
        feature_names=tuple(f"F{i}" for i in range(N_FEAT)), features=features, label_raw=label,
        label_learn=learn, membership=membership, segments=dict(SEGMENTS))


def tiny_state() -> ProcessorState:
    return ProcessorState(feature_set="alpha158", feature_names=tuple(f"F{i}" for i in range(N_FEAT)), columns=None,
                          label_expression="synthetic", infer=[], learn=[], fit_start="2021-01-18",
                          fit_end="2021-04-09")


def tiny_config(tmp_dir: str, *overrides: str) -> Config:
    base = {
        "name": "tiny", "output_dir": tmp_dir,
        "model": {"d_feat": N_FEAT, "hidden_size": 8, "num_layers": 1},
        "dataset": {"step_len": STEP},
        "train": {"n_epochs": 6, "early_stop": 3, "batch_size": 128, "lr": 3e-3, "metric": "ic",
                  "deterministic": True, "seed": 1},
        "resources": {"num_workers": 2},
    }
    return config_from_dict(base, list(overrides))


def sample_result(tmp_path: Path, **changes: Any) -> RunResult:
    """A complete RunResult with round numbers (one NaN metric)."""
    cfg = tiny_config(str(tmp_path))
    base = RunResult(
        name="tiny", run_dir=str(tmp_path), started="2026-01-01T00:00:00", finished="2026-01-01T00:01:00",
        best_epoch=3, epochs=9, stopped_early=True, early_stop_metric="ic", best_score=0.1,
        valid={"IC": 0.1, "ICIR": 1.0, "RankIC": 0.09, "RankICIR": 0.9}, test={"IC": 0.05, "ICIR": float("nan"),
                                                                              "RankIC": 0.04, "RankICIR": 0.3},
        oracle_ic=0.11, samples={"train": 100, "valid": 20, "test": 20}, train_samples_per_s=1234.5,
        train_wall_s=30.0, wall_s=60.0, provenance=collect_provenance(cfg, tiny_panel(), ["cpu@host"]))
    return dataclasses.replace(base, **changes)
