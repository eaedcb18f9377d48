"""Scoring samples with a model: THE path from weights to a predictions frame, for train, tune, seeds and predict.

    frame = score_segment(cfg, panel, weights, "test")      # datetime, instrument, score, label (raw)

Train and valid samples are the learn rows the loop trains and early-stops on; test samples are every universe
member (infer rows), as qlib scores its test segment.
"""

from __future__ import annotations

import contextlib

import numpy as np
import pandas as pd
import torch
from torch import nn

from distgru.config import Config
from distgru.models import build_model
from distgru.processing.panel import ProcessedPanel
from distgru.training import parallel as par
from distgru.training.windows import DataKey, WindowSource, available, sample_index

SEGMENT_KEYS: dict[str, DataKey] = {"train": "learn", "valid": "learn", "test": "infer"}
Samples = dict[str, tuple[np.ndarray, np.ndarray]]


def segment_samples(panel: ProcessedPanel) -> Samples:
    """(inst, day) of each segment's samples."""
    return {seg: sample_index(panel, seg, key) for seg, key in SEGMENT_KEYS.items()}


SCORE_CHUNK = 16384
"""Samples per forward pass when scoring on a GPU: large, so a validation pass is a few launches instead of one per
training batch (an eval forward keeps no activations for backward, so a chunk needs little memory)."""


def score_chunk(device: torch.device, batch_size: int) -> int:
    """Samples per scoring forward pass on ``device``: ``SCORE_CHUNK`` on CUDA, the training batch size on the
    CPU, whose GRU slows down on large batches as its working set leaves the caches (24,000 windows of the default
    GRU took 2.0 s of CPU in chunks of 16384 against 1.0-1.3 s in chunks of 256-800, one thread)."""
    return max(batch_size, SCORE_CHUNK) if device.type == "cuda" else batch_size


@torch.no_grad()
def score_rows(model: nn.Module, source: WindowSource, rows: torch.Tensor, chunk: int) -> torch.Tensor:
    """Scores of the samples whose windows are ``rows`` [S, T] (``source.rows``), in eval mode, float32, on the
    source's device, ``chunk`` samples per forward pass."""
    was_training = model.training
    model.eval()
    with contextlib.closing(source.windows(rows.split(chunk))) as windows:
        parts = [model(x).float() for x in windows]
    model.train(was_training)
    return torch.cat(parts) if parts else torch.zeros(0, device=source.device)


def predict(model: nn.Module, panel: ProcessedPanel, inst: np.ndarray, day: np.ndarray, window_len: int,
            batch_size: int, device: torch.device | str, panel_on_device: str = "auto") -> np.ndarray:
    """Scores of the samples (inst[i], day[i]) over infer (DK_I) windows, float32, in the given order."""
    device = torch.device(device)
    source = WindowSource.place(panel.features, available(panel, "infer"), window_len, device, panel_on_device)
    rows = source.rows(torch.as_tensor(inst, dtype=torch.int64), torch.as_tensor(day, dtype=torch.int64))
    return score_rows(par.unwrap(model).to(device), source, rows, batch_size).cpu().numpy()


def prediction_frame(panel: ProcessedPanel, inst: np.ndarray, day: np.ndarray, score: np.ndarray) -> pd.DataFrame:
    """Scores of samples (inst, day) as the predictions schema: raw label, sorted by (datetime, instrument)."""
    frame = pd.DataFrame({
        "datetime": panel.calendar[day],
        "instrument": np.asarray(panel.instruments, dtype=object)[inst],
        "score": np.asarray(score, dtype=np.float64),
        "label": panel.label_raw[inst, day].astype(np.float64),
    })
    return frame.sort_values(["datetime", "instrument"], kind="stable").reset_index(drop=True)


def score_segment(cfg: Config, panel: ProcessedPanel, weights: dict[str, torch.Tensor] | nn.Module,
                  segment: str, *, device: torch.device | None = None, batch_size: int | None = None
                  ) -> pd.DataFrame:
    """The segment's samples scored with ``weights`` (a state_dict or a built model) as a predictions frame."""
    if isinstance(weights, nn.Module):
        model = weights
    else:
        model = build_model(cfg.model, cfg.window_len)
        model.load_state_dict(weights)
    inst, day = sample_index(panel, segment, SEGMENT_KEYS.get(segment, "infer"))
    device = torch.device(device or par.pick_device(cfg.resources.use_gpu))
    score = predict(model, panel, inst, day, cfg.window_len, batch_size or score_chunk(device, cfg.train.batch_size),
                    device, cfg.resources.panel_on_device)
    return prediction_frame(panel, inst, day, score)
