"""THE result schema: ``result.json`` of a training run (Tune trials and benchmarks reuse it), with provenance."""

from __future__ import annotations

import hashlib
import importlib.metadata
import os
import platform
import socket
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from distgru.config import Config
from distgru.processing.panel import ProcessedPanel
from distgru.version import git, source_digest

SCHEMA_VERSION = 2
"""1: 0-based ``best_epoch``; 2: epochs counted from 1."""


@dataclass(kw_only=True)
class Provenance:
    """Where a result came from: enough to tell two runs' code, data and hardware apart."""

    git_commit: str | None
    """HEAD of the repository distgru was imported from; None outside a git checkout."""
    git_dirty: bool | None
    """Uncommitted changes in that checkout."""
    source_sha256: str | None = None
    """``distgru.version.source_digest()``: the code's identity where there is no checkout (a job's uploaded
    working directory); ``python -m distgru --version`` prints it for a checkout. None in results older than it."""
    packages: dict[str, str]
    """Versions of python, distgru, torch, ray, numpy, pandas, pyarrow."""
    data_fingerprint: str
    """Content hash of the processed panel (features, labels, membership, calendar, instruments)."""
    data_source: str
    """``cfg.data.source`` plus its location (provider/path) or the synthetic seed."""
    hostname: str
    platform: str
    cpu: str
    cpu_count: int
    gpus: list[str]
    """Names of the CUDA devices visible to the driver (empty on CPU hosts or remote clusters)."""
    num_workers: int
    use_gpu: bool
    devices: list[str]
    """``device@host/node-ip`` of each training worker, by rank (``cpu@node1/10.0.0.5``, ``cuda:0@node2/10.0.0.6``,
    ...)."""
    command: str
    """The command line that produced the run."""


@dataclass(kw_only=True)
class RunResult:
    """``result.json``: the summary of one training run. Tune trials and benchmarks reuse this schema."""

    schema_version: int = SCHEMA_VERSION
    name: str
    run_dir: str
    started: str
    """ISO timestamp at the start of the command."""
    finished: str
    best_epoch: int
    """Epoch (from 1) whose weights were kept (best valid ``early_stop_metric``); 0 when none improved."""
    epochs: int
    """Epochs actually run (across restarts, counted once)."""
    stopped_early: bool
    early_stop_metric: str
    """``train.metric``: loss (qlib's -MSE), ic or rank_ic."""
    best_score: float
    """The early-stopping score at ``best_epoch`` (higher is better)."""
    valid: dict[str, float]
    """Signal metrics of the best model on the valid segment (IC, ICIR, RankIC, RankICIR, ...)."""
    test: dict[str, float]
    """Signal metrics of the best model on the test segment against the raw label."""
    oracle_ic: float | None = None
    """Synthetic data only: daily Pearson IC of the planted expected label return on the test samples: the
    ceiling any model can reach on this market."""
    samples: dict[str, int] = field(default_factory=dict)
    """Sample counts per segment (train, valid, test)."""
    train_samples_per_s: float
    """Training throughput across all workers (train passes only, mean over epochs)."""
    train_wall_s: float
    """Wall seconds of the Ray Train fit (worker start, data, every epoch, restarts)."""
    wall_s: float
    """Wall seconds of the whole command: Ray start, data, training, evaluation."""
    restarts: int = 0
    """Worker-group restarts Ray Train resumed from a checkpoint (one before the first checkpoint starts over and
    is not counted)."""
    provenance: Provenance
    evaluation: dict[str, Any] | None = None
    """Test-segment evaluation (``distgru evaluate``, run by ``distgru train`` at its end): ``metrics`` (signal
    metrics and the TopK-Dropout backtest's annualized_return, information_ratio, max_drawdown of the excess
    return with cost, ``*_without_cost``, turnover), ``window`` (first/last backtest day) and ``files``. None
    before the evaluation ran."""


def panel_fingerprint(panel: ProcessedPanel) -> str:
    h = hashlib.sha256()
    h.update(np.asarray(panel.calendar.asi8).tobytes())
    h.update("\n".join(panel.instruments).encode())
    h.update("\n".join(panel.feature_names).encode())
    for arr in (panel.features, panel.label_raw, panel.label_learn):
        h.update(np.ascontiguousarray(arr).tobytes())
    h.update(np.packbits(panel.membership).tobytes())
    return h.hexdigest()[:20]


def _cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _version(dist: str) -> str:
    try:
        return importlib.metadata.version(dist)
    except importlib.metadata.PackageNotFoundError:
        return "missing"


def _data_source(cfg: Config) -> str:
    d = cfg.data
    if d.source == "synthetic":
        s = d.synthetic
        return f"synthetic(n_instruments={s.n_instruments}, n_days={s.n_days}, seed={s.seed})"
    return f"{d.source}:{d.provider or d.path}"


def collect_provenance(cfg: Config, panel: ProcessedPanel, devices: list[str]) -> Provenance:
    commit = git("rev-parse", "HEAD")
    status = git("status", "--porcelain") if commit else None
    try:
        import torch
        gpus = [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())]
    except Exception:  # CUDA driver trouble on the driver host is not worth failing a result over
        gpus = []
    return Provenance(
        git_commit=commit, git_dirty=None if status is None else bool(status), source_sha256=source_digest(),
        packages={"python": platform.python_version(), **{m: _version(m) for m in
                  ("distgru", "torch", "ray", "numpy", "pandas", "pyarrow")}},
        data_fingerprint=panel_fingerprint(panel), data_source=_data_source(cfg),
        hostname=socket.gethostname(), platform=platform.platform(), cpu=_cpu_name(),
        cpu_count=os.cpu_count() or 1, gpus=gpus,
        num_workers=cfg.resources.num_workers, use_gpu=cfg.resources.use_gpu, devices=devices,
        command=" ".join(sys.argv),
    )
