"""THE run directory: its layout, and every file write and read of it (atomic where a crash could leave half a
file). Training, evaluation, Tune, seeds, resume and shared storage all go through here.

Layout of ``<output_dir>/<name>-<timestamp>/``::

    config.yaml              resolved config (every key, defaults included)
    metrics.jsonl            one JSON object per epoch (epochs from 1), appended by rank 0 as training goes
    best/                    best weights + processor state + config: what ``distgru predict`` loads
    predictions.parquet      test segment: datetime, instrument, score, label (raw), sorted by (datetime, instrument)
    pred.pkl, label.pkl      the same in qlib's form (written by the evaluation)
    report.html              evaluation report; backtest_report.parquet its daily backtest
    result.json              ``distgru.training.result.RunResult``
    status.json              running / interrupted / failed / finished, and the command that resumes the run
    checkpoint_*/            Ray Train's epoch checkpoints (the run dir is also the Ray Train run's storage)
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
from datetime import datetime
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import yaml

from distgru.config import Config, config_from_dict, to_dict
from distgru.training.result import Provenance, RunResult

CONFIG_FILE = "config.yaml"
METRICS_FILE = "metrics.jsonl"
RESULT_FILE = "result.json"
PREDICTIONS_FILE = "predictions.parquet"
BEST_DIR = "best"
STATUS_FILE = "status.json"
STATES = ("running", "interrupted", "failed", "finished")
PREDICTION_COLUMNS = ("datetime", "instrument", "score", "label")


def json_safe(value: Any) -> Any:
    """JSON has no NaN/Infinity or numpy scalars: NaN/inf become null so every reader can parse the file."""
    if isinstance(value, dict):
        return {k: json_safe(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [json_safe(v) for v in value]
    if isinstance(value, float | np.floating):
        return float(value) if math.isfinite(value) else None
    if isinstance(value, np.integer):
        return int(value)
    if isinstance(value, np.bool_):
        return bool(value)
    return value


def atomic_write_text(path: str | Path, text: str) -> Path:
    """Write via a temporary file and a rename: readers see the old file or the new one, never half of one."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(text, encoding="utf-8")
    tmp.replace(path)
    return path


def write_json(path: str | Path, obj: Any) -> Path:
    return atomic_write_text(path, json.dumps(json_safe(obj), indent=2) + "\n")


def write_config(path: str | Path, cfg: Config) -> Path:
    return atomic_write_text(path, yaml.safe_dump(to_dict(cfg), sort_keys=False))


def read_config(path: str | Path) -> Config:
    return config_from_dict(yaml.safe_load(Path(path).read_text()) or {})


def _nan(value: Any) -> float:
    return float("nan") if value is None else float(value)


@dataclasses.dataclass(frozen=True)
class RunDir:
    """A run directory's paths and files."""

    path: Path

    def __init__(self, path: str | Path) -> None:
        object.__setattr__(self, "path", Path(path))

    @classmethod
    def create(cls, cfg: Config, now: datetime | None = None) -> RunDir:
        """Make ``<output_dir>/<name>-<timestamp>/`` (suffixed when two runs start in the same second) with the
        resolved config.yaml."""
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
        run = cls(path.resolve())
        write_config(run.config, cfg)
        return run

    def __str__(self) -> str:
        return str(self.path)

    def __truediv__(self, name: str) -> Path:
        return self.path / name

    @property
    def config(self) -> Path:
        return self.path / CONFIG_FILE

    @property
    def metrics(self) -> Path:
        return self.path / METRICS_FILE

    @property
    def result(self) -> Path:
        return self.path / RESULT_FILE

    @property
    def predictions(self) -> Path:
        return self.path / PREDICTIONS_FILE

    @property
    def best(self) -> Path:
        return self.path / BEST_DIR

    def read_config(self) -> Config:
        return read_config(self.config)

    def append_metrics(self, row: dict[str, Any]) -> None:
        # One line per write, flushed at close: a crash can cut only the last line, which readers skip.
        with open(self.metrics, "a") as f:
            f.write(json.dumps(json_safe(row)) + "\n")

    def read_metrics(self) -> list[dict[str, Any]]:
        """Epoch rows, the last one per epoch: a restarted run re-reports the epochs after its checkpoint."""
        if not self.metrics.is_file():
            return []
        rows: dict[int, dict[str, Any]] = {}
        for line in self.metrics.read_text().splitlines():
            try:
                row = json.loads(line)
            except json.JSONDecodeError:  # blank, or a line cut by a crash
                continue
            rows[int(row["epoch"])] = row
        return [rows[k] for k in sorted(rows)]

    def write_result(self, result: RunResult) -> Path:
        return write_json(self.result, dataclasses.asdict(result))

    def read_result(self) -> RunResult:
        return read_result(self.result)

    def write_predictions(self, frame: pd.DataFrame, path: str | Path | None = None) -> Path:
        return write_predictions(path or self.predictions, frame)

    @property
    def status(self) -> Path:
        return self.path / STATUS_FILE

    def write_status(self, state: str, *, kind: str, resume: str | None = None, message: str = "",
                     **info: Any) -> Path:
        """Say what the run is doing: ``kind`` (train, seeds, tune) and, unless finished, how to resume it."""
        assert state in STATES, state
        return write_json(self.status, {"state": state, "kind": kind, "updated": datetime.now().isoformat(
            timespec="seconds"), "resume": resume, "message": message, **info})

    def read_status(self) -> dict[str, Any] | None:
        if not self.status.is_file():
            return None
        return json.loads(self.status.read_text())


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


def write_predictions(path: str | Path, frame: pd.DataFrame) -> Path:
    missing = [c for c in PREDICTION_COLUMNS if c not in frame.columns]
    if missing:
        raise ValueError(f"predictions frame lacks columns {missing}")
    path = Path(path)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    frame.to_parquet(tmp, index=False)
    tmp.replace(path)
    return path
