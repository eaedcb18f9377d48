"""qlib's training loss and validation metrics.

Training: ``mean(w * err²)`` over the non-NaN labels, divided by the sample count, not by Σw (qlib's ``mse``); or
the same with Huber (δ = 1) terms.

Validation scores every valid sample once; qlib instead averages per-batch values and drops the last partial
batch (``drop_last=True``). That deliberate difference makes the score independent of the batch size and of how
samples are split across ranks.
"""

from __future__ import annotations

import warnings
from typing import Literal

import numpy as np
import torch
import torch.nn.functional as F

from distgru.metrics import daily_ic

LossKind = Literal["mse", "huber"]


def batch_loss(pred: torch.Tensor, label: torch.Tensor, weight: torch.Tensor, kind: LossKind = "mse", *,
               finite: bool = False) -> torch.Tensor:
    """Σ w·ℓ(err) over the finite labels / len(pred) (NaN labels contribute 0 but still count in the divisor).

    Under DDP every rank holds ``len(pred)`` = global batch / world samples, and DDP averages gradients, so the
    gradient is that of Σ_global w·ℓ / global batch: qlib's loss on the whole batch, whatever each rank's Σw.
    (Training samples never have NaN labels, so qlib's divisor, the count of finite labels, is the same.)

    ``finite``: the caller guarantees every label is finite (the training loop checks its samples once), and the
    mask, a multiplication by ones, is skipped: the same loss and gradient bits with fewer kernels.
    """
    if not finite:
        mask = torch.isfinite(label)
        label = torch.where(mask, label, pred.detach())  # a finite stand-in keeps NaN out of the graph
        weight = weight * mask
    terms = (pred - label) ** 2 if kind == "mse" else F.huber_loss(pred, label, reduction="none", delta=1.0)
    return (weight * terms).sum() / pred.shape[0]


def qlib_mse(pred: torch.Tensor, label: torch.Tensor, weight: torch.Tensor | None = None) -> torch.Tensor:
    """qlib's ``loss_fn``: mean of w·err² over the finite labels (the divisor is their count)."""
    mask = torch.isfinite(label)
    w = torch.ones_like(pred) if weight is None else weight
    return (w[mask] * (pred[mask] - label[mask]) ** 2).mean()


def valid_metrics(pred: np.ndarray, label_learn: np.ndarray, label_raw: np.ndarray,
                  day: np.ndarray) -> dict[str, float]:
    """``loss`` = −unweighted MSE against the learn label (qlib's score), and the mean over days of the daily
    Pearson ``ic`` / Spearman ``rank_ic`` against the raw label. All arrays are aligned 1-D over the valid samples."""
    ok = np.isfinite(label_learn)
    err = pred[ok].astype(np.float64) - label_learn[ok]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # no day with a defined IC: NaN, which never improves
        return {
            "loss": -float(np.mean(err**2)) if err.size else float("nan"),
            "ic": float(np.nanmean(daily_ic(pred, label_raw, day, "pearson"))),
            "rank_ic": float(np.nanmean(daily_ic(pred, label_raw, day, "spearman"))),
        }
