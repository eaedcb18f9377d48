"""Checkpoint files: Ray Train epoch checkpoints (the loop's full state) and a run's ``best/`` directory.

``best/`` is what a trained run is used through (``distgru predict``, evaluation, Tune): the best epoch's
weights with what is needed to rebuild the network, the fitted processor state that turns new bars into the same
features, and the resolved config.
"""

from __future__ import annotations

import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from distgru.config import Config
from distgru.models import build_model
from distgru.processing.processors import ProcessorState
from distgru.training.rundir import BEST_DIR, CONFIG_FILE, read_config, write_config

STATE_FILE = "state.pt"
MODEL_FILE = "model.pt"
PROCESSOR_FILE = "processor_state.json"


def save_state(state: dict[str, Any], directory: str | Path) -> Path:
    path = Path(directory) / STATE_FILE
    torch.save(state, path)
    return path


def load_state(directory: str | Path, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    # Not weights_only: the loop's state carries numpy/python RNG states, and these files are our own.
    return torch.load(Path(directory) / STATE_FILE, map_location=map_location, weights_only=False)


@contextmanager
def state_checkpoint(state: dict[str, Any] | None) -> Iterator[Any]:
    """A ``ray.train.Checkpoint`` of ``state`` in a temporary directory (None for None) while the block runs:
    ``ray.train.report`` copies it to storage before returning."""
    if state is None:
        yield None
        return
    from ray.train import Checkpoint

    with tempfile.TemporaryDirectory(prefix="distgru-ckpt-") as tmp:
        save_state(state, tmp)
        yield Checkpoint.from_directory(tmp)


@dataclass
class BestModel:
    model: nn.Module
    """The network with the best epoch's weights, in eval mode on the CPU."""
    cfg: Config
    processor_state: ProcessorState
    meta: dict[str, Any]
    """``step_len`` (window length), ``feature_names``, ``best_epoch``, ``best_score``."""


def save_best(run_dir: str | Path, cfg: Config, weights: dict[str, torch.Tensor], processor_state: ProcessorState,
              meta: dict[str, Any]) -> Path:
    """Write ``run_dir/best/``: model.pt (weights + meta), processor_state.json and config.yaml."""
    best = Path(run_dir) / BEST_DIR
    best.mkdir(parents=True, exist_ok=True)
    torch.save({"model": {k: v.detach().cpu() for k, v in weights.items()}, **meta}, best / MODEL_FILE)
    processor_state.save(best / PROCESSOR_FILE)
    write_config(best / CONFIG_FILE, cfg)
    return best


def load_best(run_dir: str | Path) -> BestModel:
    best = Path(run_dir) / BEST_DIR
    if not (best / MODEL_FILE).is_file():
        raise FileNotFoundError(f"{best / MODEL_FILE} not found: is {run_dir} a finished distgru run directory?")
    cfg = read_config(best / CONFIG_FILE)
    payload = torch.load(best / MODEL_FILE, map_location="cpu", weights_only=True)
    weights = payload.pop("model")
    model = build_model(cfg.model, int(payload["step_len"]))
    model.load_state_dict(weights)
    model.eval()
    return BestModel(model, cfg, ProcessorState.load(best / PROCESSOR_FILE), payload)
