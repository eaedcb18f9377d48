"""Per-sample training-loss weights (qlib's Reweighter, §4.6), aligned with a sample list."""

from __future__ import annotations

import importlib

import numpy as np

from distgru.config.schema import ReweighterConfig
from distgru.processing.panel import ProcessedPanel


def load_class(path: str) -> type:
    """``package.module:ClassName`` → the class."""
    module, sep, name = path.partition(":")
    if not sep or not module or not name:
        raise ValueError(f"reweighter class_path {path!r}: expected 'package.module:ClassName'")
    return getattr(importlib.import_module(module), name)


def sample_weights(cfg: ReweighterConfig, panel: ProcessedPanel, inst: np.ndarray, day: np.ndarray) -> np.ndarray:
    """float32 weights for the samples (inst[i], day[i]); all ones for ``none`` (qlib's default)."""
    if cfg.kind == "none":
        w = np.ones(len(inst))
    elif cfg.kind == "column":
        if panel.weight is None:
            raise ValueError("train.reweighter.kind 'column' needs a weight column in the data")
        w = panel.weight[inst, day]
    elif cfg.kind == "time_decay":
        # Age in trading days, so holidays do not decay weights; the last train day weighs 1.
        last_train_day = panel.segments["train"][1] - 1
        w = 0.5 ** ((last_train_day - day) / cfg.half_life_days)
    else:
        reweighter = load_class(cfg.class_path)()
        dates = panel.calendar[day]
        instruments = np.asarray(panel.instruments, dtype=object)[inst]
        w = np.asarray(reweighter.reweight(dates, instruments), dtype=np.float64)
        if w.shape != (len(inst),):
            raise ValueError(f"{cfg.class_path}.reweight returned shape {w.shape}, expected ({len(inst)},)")
    w = np.asarray(w, dtype=np.float32)
    if not np.all(np.isfinite(w)) or np.any(w < 0):
        raise ValueError(f"reweighter {cfg.kind!r}: weights must be finite and >= 0")
    return w
