"""The run directory and THE result schema every distgru command reads and writes.

Layout of ``<output_dir>/<name>-<timestamp>/``::

    config.yaml              resolved config (every key, defaults included)
    metrics.jsonl            one JSON object per epoch, written by rank 0 as training goes
    best/                    best weights + processor state + config: what ``distgru predict`` loads
    predictions.parquet      test segment: datetime, instrument, score, label (raw), sorted by (datetime, instrument)
    pred.pkl, label.pkl      the same in qlib's form (``distgru.evaluation.evaluate``, written by the evaluation)
    report.html              evaluation report; backtest_report.parquet its daily backtest
    result.json              ``RunResult`` below
    checkpoint_*/            Ray Train's epoch checkpoints (the run dir is also the Ray Train run's storage)
"""

from __future__ import annotations

import dataclasses
import hashlib
import importlib.metadata
import json
import math
import os
import platform
import socket
import subprocess
import sys
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import yaml

from distgru.config import Config, config_from_dict, to_dict
from distgru.evaluation.metrics import signal_metrics
from distgru.features.table import ProcessedPanel

CONFIG_FILE = "config.yaml"
METRICS_FILE = "metrics.jsonl"
RESULT_FILE = "result.json"
PREDICTIONS_FILE = "predictions.parquet"
BEST_DIR = "best"
PREDICTION_COLUMNS = ("datetime", "instrument", "score", "label")
SCHEMA_VERSION = 1


@dataclass(kw_only=True)
class Provenance:
    """Where a result came from: enough to tell two runs' code, data and hardware apart."""

    git_commit: str | None
    """HEAD of the repository distgru was imported from; None outside a git checkout."""
    git_dirty: bool | None
    """Uncommitted changes in that checkout."""
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
    """``device@host`` of each training worker, by rank (``cpu@node1``, ``cuda:0@node2``...)."""
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
    """0-based epoch whose weights were kept (best valid ``early_stop_metric``)."""
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


def _clean(value: Any) -> Any:
    """JSON has no NaN/Infinity: write them as null so every reader can parse result.json."""
    if isinstance(value, dict):
        return {k: _clean(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_clean(v) for v in value]
    if isinstance(value, float | np.floating):
        return float(value) if math.isfinite(value) else None
    if isinstance(value, np.integer):
        return int(value)
    if isinstance(value, np.bool_):
        return bool(value)
    return value


def _nan(value: Any) -> float:
    return float("nan") if value is None else float(value)


def create_run_dir(cfg: Config, now: datetime | None = None) -> Path:
    """Make ``<output_dir>/<name>-<timestamp>/`` (suffixed when two runs start in the same second)."""
    stamp = (now or datetime.now()).strftime("%Y%m%d-%H%M%S")
    root = Path(cfg.output_dir).expanduser()
    root.mkdir(parents=True, exist_ok=True)
    base = root / f"{cfg.name}-{stamp}"
    path, n = base, 1
    while True:
        try:
            path.mkdir()
            break
        except FileExistsError:
            n += 1
            path = base.with_name(f"{base.name}-{n}")
    write_config(path / CONFIG_FILE, cfg)
    return path.resolve()


def write_config(path: Path, cfg: Config) -> None:
    path.write_text(yaml.safe_dump(to_dict(cfg), sort_keys=False))


def read_config(path: Path) -> Config:
    return config_from_dict(yaml.safe_load(Path(path).read_text()) or {})


def append_metrics(run_dir: str | Path, row: dict[str, Any]) -> None:
    with open(Path(run_dir) / METRICS_FILE, "a") as f:
        f.write(json.dumps(_clean(row)) + "\n")


def read_metrics(run_dir: str | Path) -> list[dict[str, Any]]:
    """Epoch rows, the last one per epoch: a restarted run re-reports the epochs after its checkpoint."""
    path = Path(run_dir) / METRICS_FILE
    if not path.is_file():
        return []
    rows: dict[int, dict[str, Any]] = {}
    for line in path.read_text().splitlines():
        if line.strip():
            row = json.loads(line)
            rows[int(row["epoch"])] = row
    return [rows[k] for k in sorted(rows)]


def write_result(run_dir: str | Path, result: RunResult) -> Path:
    path = Path(run_dir) / RESULT_FILE
    path.write_text(json.dumps(_clean(dataclasses.asdict(result)), indent=2) + "\n")
    return path


def read_result(path: str | Path) -> RunResult:
    """Read result.json (a run directory or the file itself); nulls in metric maps come back as NaN."""
    p = Path(path)
    data = json.loads((p / RESULT_FILE if p.is_dir() else p).read_text())
    data["provenance"] = Provenance(**data["provenance"])
    for key in ("valid", "test"):
        data[key] = {k: _nan(v) for k, v in data[key].items()}
    data["best_score"] = _nan(data["best_score"])
    if data.get("evaluation"):
        data["evaluation"]["metrics"] = {k: _nan(v) for k, v in data["evaluation"].get("metrics", {}).items()}
    return RunResult(**data)


def prediction_frame(panel: ProcessedPanel, inst: np.ndarray, day: np.ndarray, score: np.ndarray) -> pd.DataFrame:
    """Scores of samples (inst, day) as the predictions schema: raw label, sorted by (datetime, instrument)."""
    frame = pd.DataFrame({
        "datetime": panel.calendar[day],
        "instrument": np.asarray(panel.instruments, dtype=object)[inst],
        "score": np.asarray(score, dtype=np.float64),
        "label": panel.label_raw[inst, day].astype(np.float64),
    })
    return frame.sort_values(["datetime", "instrument"], kind="stable").reset_index(drop=True)


def write_predictions(path: str | Path, frame: pd.DataFrame) -> Path:
    missing = [c for c in PREDICTION_COLUMNS if c not in frame.columns]
    if missing:
        raise ValueError(f"predictions frame lacks columns {missing}")
    frame.to_parquet(path, index=False)
    return Path(path)


def oracle_ic(expected: np.ndarray, panel: ProcessedPanel, inst: np.ndarray, day: np.ndarray) -> float:
    """Mean daily Pearson IC of a planted expected label return [N, D] against the raw label on these samples."""
    return signal_metrics(prediction_frame(panel, inst, day, expected[inst, day]))["IC"]


def panel_fingerprint(panel: ProcessedPanel) -> str:
    h = hashlib.sha256()
    h.update(np.asarray(panel.calendar.asi8).tobytes())
    h.update("\n".join(panel.instruments).encode())
    h.update("\n".join(panel.feature_names).encode())
    for arr in (panel.features, panel.label_raw, panel.label_learn):
        h.update(np.ascontiguousarray(arr).tobytes())
    h.update(np.packbits(panel.membership).tobytes())
    return h.hexdigest()[:20]


def _git(*args: str) -> str | None:
    repo = Path(__file__).resolve().parents[2]
    try:
        out = subprocess.run(["git", "-C", str(repo), *args], capture_output=True, text=True, timeout=5)
    except (OSError, subprocess.TimeoutExpired):
        return None
    return out.stdout.strip() if out.returncode == 0 else None


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
    commit = _git("rev-parse", "HEAD")
    status = _git("status", "--porcelain") if commit else None
    try:
        import torch
        gpus = [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())]
    except Exception:  # CUDA driver trouble on the driver host is not worth failing a result over
        gpus = []
    return Provenance(
        git_commit=commit, git_dirty=None if status is None else bool(status),
        packages={"python": platform.python_version(), **{m: _version(m) for m in
                  ("distgru", "torch", "ray", "numpy", "pandas", "pyarrow")}},
        data_fingerprint=panel_fingerprint(panel), data_source=_data_source(cfg),
        hostname=socket.gethostname(), platform=platform.platform(), cpu=_cpu_name(),
        cpu_count=os.cpu_count() or 1, gpus=gpus,
        num_workers=cfg.resources.num_workers, use_gpu=cfg.resources.use_gpu, devices=devices,
        command=" ".join(sys.argv),
    )
