"""A run's ``best/`` directory: what a trained run is used through (``distgru predict``, evaluation, Tune).

The best epoch's weights with what rebuilds the network (``BestMeta``), the fitted processor state that turns new
bars into the same features, and the resolved config. Epoch checkpoints are ``TrainState`` (state.py).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from distgru.config import Config
from distgru.models import build_model
from distgru.processing.processors import ProcessorState
from distgru.training.rundir import BEST_DIR, CONFIG_FILE, read_config, write_config
from distgru.training.state import TrainState

MODEL_FILE = "model.pt"
PROCESSOR_FILE = "processor_state.json"


@dataclass(kw_only=True)
class BestMeta:
    """What is saved beside the best weights."""

    window_len: int
    """Days per sample window (``Config.window_len``)."""
    feature_names: list[str]
    """The processed panel's feature columns, in order."""
    best_epoch: int
    """Epoch (from 1) the weights come from; 0 when no epoch improved (initial weights)."""
    best_score: float
    """Its early-stopping score."""


@dataclass
class BestModel:
    model: nn.Module
    """The network with the best epoch's weights, in eval mode on the CPU."""
    cfg: Config
    processor_state: ProcessorState
    meta: BestMeta


def save_best(run_dir: str | Path, cfg: Config, state: TrainState, processor_state: ProcessorState) -> Path:
    """Write ``run_dir/best/`` from a run's (final) state: model.pt (best weights + meta), processor_state.json
    and config.yaml."""
    best = Path(run_dir) / BEST_DIR
    best.mkdir(parents=True, exist_ok=True)
    meta = BestMeta(window_len=cfg.window_len, feature_names=list(processor_state.feature_names),
                    best_epoch=state.best_epoch, best_score=state.best_score)
    tmp = best / f".{MODEL_FILE}.tmp"
    torch.save({"model": {k: v.detach().cpu() for k, v in state.best_model.items()}, **dataclasses.asdict(meta)},
               tmp)
    tmp.replace(best / MODEL_FILE)
    processor_state.save(best / PROCESSOR_FILE)
    write_config(best / CONFIG_FILE, cfg)
    return best


def load_best(run_dir: str | Path) -> BestModel:
    best = Path(run_dir) / BEST_DIR
    if not (best / MODEL_FILE).is_file():
        raise FileNotFoundError(f"{best / MODEL_FILE} not found: is {run_dir} a finished distgru run directory?")
    cfg = read_config(best / CONFIG_FILE)
    payload = torch.load(best / MODEL_FILE, map_location="cpu", weights_only=True)
    if "window_len" not in payload:
        raise FileNotFoundError(f"{best / MODEL_FILE} was written by an older distgru (no window_len); train the "
                                "run again with this version")
    meta = BestMeta(**{f.name: payload[f.name] for f in dataclasses.fields(BestMeta)})
    model = build_model(cfg.model, meta.window_len)
    model.load_state_dict(payload["model"])
    model.eval()
    return BestModel(model, cfg, ProcessorState.load(best / PROCESSOR_FILE), meta)
