"""The training state: what an epoch checkpoint holds, what resume restores, and what a finished run returns.

One typed record for all three, so a key is spelled once. Epochs are counted from 1 in the state and in every
artifact a person reads (metrics.jsonl, result.json, terminal lines, reports): ``epoch`` is the number of epochs
completed, ``best_epoch`` the epoch whose weights are kept (0: none improved on -inf, e.g. a NaN metric; the
initial weights are kept then, as qlib does).

Saved as plain tensors, numbers, strings, lists and dicts so ``torch.load(..., weights_only=True)`` reads it: a
checkpoint from elsewhere cannot run code. ``FORMAT_VERSION`` changes whenever a field changes meaning.
"""

from __future__ import annotations

import dataclasses
import random
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

FORMAT_VERSION = 2
"""1: the untyped dict of distgru 0.1 (0-based epochs, numpy RNG state pickled)."""
STATE_FILE = "state.pt"

EpochRow = dict[str, Any]
"""One epoch's metrics as reported and written to metrics.jsonl (``epoch`` 1-based, ``patience``,
``stopped_early``, losses and valid metrics, throughput). ``grad_norm`` and ``clip_frac`` are means over the steps
that measured their gradient (training/steps.py ``GRAD_STATS_EVERY``). The first row of each worker start (a
fresh run's epoch 1, a resumed run's first epoch) adds the start-up, so fit time can be told apart from it:
``startup_s``, seconds from the worker's start to its first step (model, panel placement, window tables), and
``warmup_s``, the part of that epoch's ``epoch_s`` the first steps took (eager: the first step; graph: the
warm-up steps and the capture)."""
TIMINGS = ("samples_per_s", "epoch_s", "startup_s", "warmup_s")
"""The wall-clock fields of a row: the rest is the same bit for bit when a deterministic run is repeated."""


class StateFormatError(ValueError):
    """A checkpoint written by another distgru version's state format."""


@dataclass
class EarlyStopping:
    """THE early-stopping rule: stop after ``limit`` epochs without a better valid score, or at ``n_epochs``."""

    limit: int
    """``train.early_stop``."""
    n_epochs: int
    """``train.n_epochs``."""
    best_score: float = -float("inf")
    best_epoch: int = 0
    patience: int = 0
    """Epochs since the last improvement."""

    def update(self, epoch: int, score: float) -> bool:
        """Record epoch ``epoch``'s score; True when it is the new best (NaN never is)."""
        if score > self.best_score:
            self.best_score, self.best_epoch, self.patience = score, epoch, 0
            return True
        self.patience += 1
        return False

    def done(self, epoch: int) -> bool:
        """Training ends after epoch ``epoch`` (completed epochs)."""
        return epoch >= self.n_epochs or self.patience >= self.limit

    def stopped_early(self, epoch: int) -> bool:
        return self.patience >= self.limit and epoch < self.n_epochs

    @property
    def patience_left(self) -> int:
        return max(self.limit - self.patience, 0)


@dataclass(kw_only=True)
class TrainState:
    """Everything that continues a run exactly, plus its best weights and history."""

    epoch: int
    """Epochs completed."""
    model: dict[str, torch.Tensor]
    """Current weights (CPU)."""
    optimizer: dict[str, Any]
    """``optimizer.state_dict()`` (CPU tensors)."""
    scaler: dict[str, Any]
    """fp16 GradScaler state (empty when disabled)."""
    best_score: float
    best_epoch: int
    patience: int
    best_model: dict[str, torch.Tensor]
    """Weights of ``best_epoch`` (CPU); the initial weights while ``best_epoch`` is 0."""
    history: list[EpochRow] = field(default_factory=list)
    rng: dict[str, Any] = field(default_factory=dict)
    """Global RNG streams (see ``capture_rng``); the loop reseeds per epoch, these serve other code in the process."""
    attempt: int = 0
    """Worker-group restarts so far (Ray Train)."""
    finished: bool = False
    """True in the last checkpoint of a run that ended (by early stop or epoch limit)."""
    devices: list[str] = field(default_factory=list)
    """``device@host/node-ip`` of each worker, by rank (set when finished)."""

    def stopping(self, limit: int, n_epochs: int) -> EarlyStopping:
        return EarlyStopping(limit, n_epochs, self.best_score, self.best_epoch, self.patience)

    @property
    def stopped_early(self) -> bool:
        return bool(self.history) and bool(self.history[-1].get("stopped_early"))

    def to_payload(self) -> dict[str, Any]:
        return {"format_version": FORMAT_VERSION, **{f.name: getattr(self, f.name) for f in dataclasses.fields(self)}}

    @classmethod
    def from_payload(cls, payload: dict[str, Any], where: str = "checkpoint") -> TrainState:
        version = payload.get("format_version", 1)
        if version != FORMAT_VERSION:
            raise StateFormatError(f"{where}: training state format {version}, this distgru reads format "
                                   f"{FORMAT_VERSION}; train again (distgru train CONFIG) or use the distgru "
                                   "version that wrote it")
        names = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in payload.items() if k in names})

    def save(self, directory: str | Path) -> Path:
        path = Path(directory) / STATE_FILE
        tmp = path.with_name(path.name + ".tmp")
        torch.save(self.to_payload(), tmp)
        tmp.replace(path)  # atomic: a crash mid-write never leaves a loadable half state
        return path

    @classmethod
    def load(cls, directory: str | Path) -> TrainState:
        path = Path(directory) / STATE_FILE
        try:
            payload = torch.load(path, map_location="cpu", weights_only=True)
        except Exception as e:  # the format-1 dict pickled numpy objects, which weights_only refuses
            raise StateFormatError(f"{path}: not a distgru {FORMAT_VERSION} training state ({type(e).__name__}); "
                                   "train again, or use the distgru version that wrote it") from None
        return cls.from_payload(payload, str(path))


def capture_rng() -> dict[str, Any]:
    """Global torch/numpy/python RNG states as tensors and numbers (``weights_only`` loadable)."""
    kind, keys, pos, has_gauss, gauss = np.random.get_state()
    version, words, py_gauss = random.getstate()
    return {"torch": torch.get_rng_state(),
            "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
            "numpy": {"kind": kind, "keys": torch.from_numpy(keys.astype(np.int64)), "pos": int(pos),
                      "has_gauss": int(has_gauss), "gauss": float(gauss)},
            "python": {"version": version, "words": torch.tensor(words, dtype=torch.int64), "gauss": py_gauss}}


def restore_rng(state: dict[str, Any]) -> None:
    if not state:
        return
    torch.set_rng_state(state["torch"])
    n = state["numpy"]
    np.random.set_state((n["kind"], n["keys"].numpy().astype(np.uint32), n["pos"], n["has_gauss"], n["gauss"]))
    p = state["python"]
    random.setstate((p["version"], tuple(int(w) for w in p["words"].tolist()), p["gauss"]))
    # A worker restarted on a node with fewer visible GPUs restores the streams it has.
    cuda = state["cuda"][: torch.cuda.device_count()] if torch.cuda.is_available() else []
    for i, s in enumerate(cuda):
        torch.cuda.set_rng_state(s, i)
