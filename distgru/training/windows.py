"""qlib TSDatasetH/TSDataSampler sample lists and windows, vectorised.

A sample is an (instrument, day) pair whose row is *available* in the data key: a universe member (``infer``), and
for ``learn`` also a row DropnaLabel kept (finite ``label_learn``). Samples are listed instrument-major, as
TSDataSampler lists them.

A sample's window covers the last ``step_len`` calendar days ending at its day, reaching back before the segment
start (qlib extends each segment by step_len days). Each position takes the row of that day if available, else the
latest available row earlier inside the window (ffill), else — a leading gap — the first available row inside the
window (bfill). Rows outside the window never leak in.

qlib's window calendar is the set of days with at least one row in the data key; days where no instrument has a
row (in DK_L: only the last days of the data, whose labels are unknown) are therefore absent there but present in
``panel.calendar`` here. Windows only look back, so no sample's window differs.

Both lookup tables are ``[N, D]``: ``last_le[n, d]`` is the last available day ≤ d (−1 if none) and
``first_ge[n, d]`` the first available day ≥ d (D if none). They give each sample's window as ``T`` rows of the
panel seen as one ``[N*D, F]`` table (``WindowIndex.rows``); the trainer looks the rows up once per sample, so a
batch of windows is then a single ``index_select`` (``cut``).
"""

from __future__ import annotations

import warnings
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from typing import Literal

import numpy as np
import torch

from distgru.processing.panel import ProcessedPanel
from distgru.training.streamed import prefetch

DataKey = Literal["learn", "infer"]


def available(panel: ProcessedPanel, data_key: DataKey) -> np.ndarray:
    """bool [N, D]: the rows present in the data key."""
    if data_key == "infer":
        return panel.membership.copy()
    return panel.membership & np.isfinite(panel.label_learn)


def sample_index(panel: ProcessedPanel, segment: str, data_key: DataKey) -> tuple[np.ndarray, np.ndarray]:
    """(instrument, day) int64 arrays of the segment's samples, instrument-major then by day."""
    lo, hi = panel.segments[segment]
    inst, day = np.nonzero(available(panel, data_key)[:, lo:hi])  # row-major nonzero = instrument-major
    return inst.astype(np.int64), day.astype(np.int64) + lo


def _lookup_tables(avail: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    n_inst, n_days = avail.shape
    days = np.broadcast_to(np.arange(n_days, dtype=np.int64), avail.shape)
    last_le = np.maximum.accumulate(np.where(avail, days, -1), axis=1)
    first_ge = np.minimum.accumulate(np.where(avail, days, n_days)[:, ::-1], axis=1)[:, ::-1]
    return last_le, first_ge.copy()  # a copy: torch rejects the reversed view's negative strides


def row_dtype(n_rows: int) -> torch.dtype:
    """Index dtype for a flat panel of ``n_rows`` rows: int32 (half the memory of a per-sample row table) while
    every row id fits."""
    return torch.int32 if n_rows < 2**31 else torch.int64


def cut(features: torch.Tensor, rows: torch.Tensor, pin: bool = False) -> torch.Tensor:
    """THE window gather: ``[..., T, F]`` windows of the flat panel ``features`` ``[N*D, F]`` at ``rows``
    ``[..., T]`` (``WindowIndex.rows``), one ``index_select``; written into page-locked memory when ``pin``."""
    out = torch.empty((rows.numel(), features.shape[1]), dtype=features.dtype, pin_memory=True) if pin else None
    return torch.index_select(features, 0, rows.reshape(-1), out=out).view(*rows.shape, features.shape[1])


@dataclass(frozen=True)
class WindowIndex:
    """Window source days for one data key, as device tensors. ``step_len`` 1 is flat mode (the own day)."""

    step_len: int
    last_le: torch.Tensor
    """int64 [N, D]."""
    first_ge: torch.Tensor
    """int64 [N, D]."""

    @classmethod
    def build(cls, avail: np.ndarray, step_len: int, device: torch.device | str | None = None) -> WindowIndex:
        last_le, first_ge = _lookup_tables(np.asarray(avail, dtype=bool))
        return cls(step_len, torch.from_numpy(last_le).to(device), torch.from_numpy(first_ge).to(device))

    def source_days(self, inst: torch.Tensor, day: torch.Tensor) -> torch.Tensor:
        """int64 [B, T]: the day whose row fills each window position (the samples' own rows must be available)."""
        start = day - (self.step_len - 1)  # may be negative: qlib pads those positions, then back-fills them
        pos = start[:, None] + torch.arange(self.step_len, device=day.device)
        inst2 = inst[:, None]
        prev = self.last_le[inst2, pos.clamp(min=0)]
        first = self.first_ge[inst, start.clamp(min=0)][:, None]
        # A forward-fill source before the window (or none, −1) leaves a leading gap: back-fill it.
        return torch.where((pos >= 0) & (prev >= start.clamp(min=0)[:, None]), prev, first)

    def rows(self, inst: torch.Tensor, day: torch.Tensor) -> torch.Tensor:
        """[B, T] rows of the flat ``[N*D, F]`` panel filling each window position (``row_dtype``)."""
        n_inst, n_days = self.last_le.shape
        return (inst[:, None] * n_days + self.source_days(inst, day)).to(row_dtype(n_inst * n_days))

    def gather(self, features: torch.Tensor, inst: torch.Tensor, day: torch.Tensor) -> torch.Tensor:
        """[B, T, F] windows from ``features`` [N, D, F] (same device as the tables)."""
        return cut(features.reshape(-1, features.shape[-1]), self.rows(inst, day))


def keep_on_device(mode: str, nbytes: int, device: torch.device, free_bytes: int | None = None) -> bool:
    """Whether a panel of ``nbytes`` stays on ``device`` (``resources.panel_on_device``).

    ``auto``: a CPU device's memory is host memory, so always; a GPU when the panel takes at most half of its
    free memory (``free_bytes``; default: what CUDA reports), leaving the rest to the model and batches.
    """
    if mode != "auto":
        return mode == "always"
    if device.type != "cuda":
        return True
    if free_bytes is None:
        free_bytes = torch.cuda.mem_get_info(device)[0]
    return nbytes <= free_bytes // 2


@dataclass(frozen=True)
class WindowSource:
    """Batches of windows delivered on ``device``: cut there from a resident panel, or cut in host memory from a
    panel too large for the device and streamed to it, a few batches ahead of the step using them."""

    features: torch.Tensor
    """[N*D, F] on ``device`` (resident) or on the host (streamed; pinned when the device is a GPU)."""
    index: WindowIndex
    """On the same device as ``features``."""
    device: torch.device
    streamed: bool
    """Windows are cut in host memory and copied to ``device`` batch by batch."""

    @classmethod
    def place(cls, features: np.ndarray, avail: np.ndarray, step_len: int, device: torch.device | str,
              mode: str = "auto") -> WindowSource:
        device = torch.device(device)
        resident = keep_on_device(mode, features.nbytes, device)
        home = device if resident else torch.device("cpu")
        with warnings.catch_warnings():
            # A panel from the object store is a read-only view (in Ray Train workers, Tune trials and the driver,
            # see ray_train.shared_panel); windows are cut from it and never written back. The only read-only
            # array the loop turns into a tensor: with this filter alone, the Ray tests pass with the warning an
            # error (PYTHONWARNINGS="error:The given NumPy array is not writable").
            warnings.filterwarnings("ignore", message="The given NumPy array is not writable")
            panel = torch.from_numpy(features).reshape(-1, features.shape[-1])
        if resident:
            panel = panel.to(device)
        elif device.type == "cuda":
            panel = panel.pin_memory()  # page-locked: host→device copies run at full bus speed
        return cls(panel, WindowIndex.build(avail, step_len, home), device, streamed=not resident)

    @property
    def home(self) -> torch.device:
        """Where windows are cut: ``device``, or the host when streamed."""
        return self.features.device

    def rows(self, inst: torch.Tensor, day: torch.Tensor) -> torch.Tensor:
        """[B, T] panel rows of the samples' windows (``WindowIndex.rows``), on ``home``."""
        return self.index.rows(inst.to(self.home), day.to(self.home))

    def windows(self, blocks: Iterable[torch.Tensor]) -> Iterator[torch.Tensor]:
        """[B, T, F] windows on ``device`` for each block of rows (on ``home``), in order. Streamed, a thread cuts
        them ahead into pinned memory and uploads them on a side stream while the caller computes (``prefetch``).
        Close the iterator when leaving it early (``contextlib.closing``): that stops the thread."""
        if not self.streamed:
            return (cut(self.features, rows) for rows in blocks)
        pin = self.device.type == "cuda"
        return prefetch(lambda rows: cut(self.features, rows, pin), blocks, self.device)
