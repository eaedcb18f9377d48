"""One record per Tune trial, read from its reported epoch rows: the results-table row and its history."""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd

from distgru.config import Config
from distgru.tuning.space import tune_of


@dataclass
class TrialRecord:
    row: dict[str, Any]
    """The results-table row."""
    history: pd.DataFrame
    """One row per epoch the trial reported (epochs from 1; empty when it reported none)."""


def trial_id(result: Any) -> str:
    return Path(result.path).name.removeprefix("trial_")


def _history(result: Any) -> pd.DataFrame:
    frame = result.metrics_dataframe
    if frame is None or "epoch" not in frame:
        return pd.DataFrame(columns=["epoch"])
    # A restored trial re-reports the epochs after its last checkpoint: keep each epoch's latest report.
    return frame.drop_duplicates("epoch", keep="last").sort_values("epoch").reset_index(drop=True)


def cell(value: Any) -> Any:
    """Parquet wants one type per column: lists (e.g. features.columns choices) become their text."""
    return value if value is None or isinstance(value, int | float | str | bool) else json.dumps(value)


def trial_params(grid: Any) -> dict[str, dict[str, Any]]:
    """Each trial's sampled parameters by trial id (a Result has them once its trial reported)."""
    return {trial_id(result): result.config for result in grid}


def trial_records(cfg: Config, grid: Any, params: dict[str, dict[str, Any]], trial_cfgs: dict[str, Config],
                  unfinished: frozenset[str] = frozenset()) -> list[TrialRecord]:
    """``params``: each trial's sampled parameters and ``trial_cfgs`` its validated config, by trial id;
    ``unfinished``: the ids of trials a stopped search had not ended by its saved state (they continue on
    ``--resume``), whose best value so far is not final unless the trial's own loop had ended."""
    tc = tune_of(cfg)
    metric, mode = tc.metric, tc.resolved_mode
    records = []
    for result in grid:
        hist = _history(result)
        tid = trial_id(result)
        row: dict[str, Any] = {"trial_id": tid}
        row.update({d.key: cell(params[tid].get(d.key)) for d in tc.dists})
        best_value, best_epoch = math.nan, 0
        if metric in hist and hist[metric].notna().any():
            idx = hist[metric].idxmax() if mode == "max" else hist[metric].idxmin()
            best_value, best_epoch = float(hist.loc[idx, metric]), int(hist.loc[idx, "epoch"])
        epochs = len(hist)
        if result.error is not None:
            stopped_by = "error"
        elif epochs >= trial_cfgs[tid].train.n_epochs:
            stopped_by = "completed"
        elif epochs and bool(hist["stopped_early"].iloc[-1]):
            stopped_by = "patience"  # the loop's own early stop (on train.metric)
        elif tid in unfinished:  # after the two above: a killed driver's last saved state can lag its trials
            stopped_by = "unfinished"
        else:
            stopped_by = "scheduler"
        row.update({f"best_{metric}": best_value, "best_epoch": best_epoch, "epochs": epochs,
                    "status": {"error": "ERROR", "unfinished": "UNFINISHED"}.get(stopped_by, "TERMINATED"),
                    "stopped_by": stopped_by,
                    "stopped_early": stopped_by in ("patience", "scheduler"), "trial_dir": str(result.path)})
        records.append(TrialRecord(row, hist))
    return records
