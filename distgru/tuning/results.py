"""What a finished search leaves in the experiment directory, beside Tune's own trial directories::

    results.csv, results.parquet   one row per trial: id, parameters, best metric, epochs, status, who stopped it,
                                   and the test IC / Rank IC of its best weights (to see if valid ranking holds)
    best_config.yaml               the best trial's resolved training config (``distgru train best_config.yaml``)
    best/                          its best-epoch weights, processor state and config (``distgru predict`` layout)
    predictions.parquet            its TEST segment scores (rundir's predictions schema)
    tune_result.json               best trial, its parameters, valid metric, test signal metrics, trial counts
    report.html                    learning curves of all trials and the parameter/metric table
"""

from __future__ import annotations

import json
import math
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd
import torch

from distgru.config import Config
from distgru.evaluation.metrics import signal_metrics
from distgru.models import build_model
from distgru.training.checkpoint import save_best
from distgru.training.loop import predict, window_len
from distgru.training.ray_train import segment_samples
from distgru.training.rundir import PREDICTIONS_FILE, prediction_frame, write_config, write_predictions
from distgru.tuning.runner import Data
from distgru.tuning.space import base_dict, data_key, trial_config, tune_of
from distgru.tuning.trial import trial_best_weights

RESULTS_CSV = "results.csv"
RESULTS_PARQUET = "results.parquet"
BEST_CONFIG = "best_config.yaml"
SUMMARY_FILE = "tune_result.json"
REPORT_FILE = "report.html"


@dataclass
class TrialRecord:
    row: dict[str, Any]
    """The results-table row."""
    history: pd.DataFrame
    """One row per epoch the trial reported (empty when it reported none)."""


def _history(result: Any) -> pd.DataFrame:
    frame = result.metrics_dataframe
    if frame is None or "epoch" not in frame:
        return pd.DataFrame(columns=["epoch"])
    # A restored trial re-reports the epochs after its last checkpoint: keep each epoch's latest report.
    return frame.drop_duplicates("epoch", keep="last").sort_values("epoch").reset_index(drop=True)


def _cell(value: Any) -> Any:
    """Parquet wants one type per column: lists (e.g. features.columns choices) become their text."""
    return value if value is None or isinstance(value, int | float | str | bool) else json.dumps(value)


def _json_safe(value: Any) -> Any:
    """JSON has no NaN: write null."""
    if isinstance(value, dict):
        return {k: _json_safe(v) for k, v in value.items()}
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    return value


def trial_records(cfg: Config, grid: Any) -> list[TrialRecord]:
    tc = tune_of(cfg)
    metric, mode, base = tc.metric, tc.resolved_mode, base_dict(cfg)
    records = []
    for result in grid:
        hist = _history(result)
        trial_cfg = trial_config(base, result.config)
        row: dict[str, Any] = {"trial_id": Path(result.path).name.removeprefix("trial_")}
        row.update({d.key: _cell(result.config.get(d.key)) for d in tc.dists})
        best_value, best_epoch = math.nan, -1
        if metric in hist and hist[metric].notna().any():
            idx = hist[metric].idxmax() if mode == "max" else hist[metric].idxmin()
            best_value, best_epoch = float(hist.loc[idx, metric]), int(hist.loc[idx, "epoch"])
        epochs = len(hist)
        if result.error is not None:
            stopped_by = "error"
        elif epochs >= trial_cfg.train.n_epochs:
            stopped_by = "completed"
        elif epochs and int(hist["epoch"].iloc[-1]) - int(hist["best_epoch"].iloc[-1]) >= trial_cfg.train.early_stop:
            stopped_by = "patience"  # the loop's own early stop (on train.metric)
        else:
            stopped_by = "scheduler"
        row.update({f"best_{metric}": best_value, "best_epoch": best_epoch, "epochs": epochs,
                    "status": "ERROR" if result.error is not None else "TERMINATED", "stopped_by": stopped_by,
                    "stopped_early": stopped_by in ("patience", "scheduler"), "trial_dir": str(result.path)})
        records.append(TrialRecord(row, hist))
    return records


def write_table(records: list[TrialRecord], exp_dir: Path) -> pd.DataFrame:
    table = pd.DataFrame([r.row for r in records])
    table.to_csv(exp_dir / RESULTS_CSV, index=False)
    table.to_parquet(exp_dir / RESULTS_PARQUET, index=False)
    return table


def _segment_frame(cfg: Config, panel: Any, weights: dict[str, torch.Tensor], segment: str) -> pd.DataFrame:
    model = build_model(cfg.model, window_len(cfg))
    model.load_state_dict(weights)
    device = torch.device("cuda" if cfg.resources.use_gpu and torch.cuda.is_available() else "cpu")
    inst, day = segment_samples(panel)[segment]
    score = predict(model, panel, inst, day, window_len(cfg), cfg.train.batch_size, device,
                    cfg.resources.panel_on_device)
    return prediction_frame(panel, inst, day, score)


def _add_test_scores(cfg: Config, grid: Any, data: Data, records: list[TrialRecord]) -> None:
    """Every trial's test IC with its best weights: whether the valid ranking carries over to unseen days."""
    base = base_dict(cfg)
    rows = {r.row["trial_id"]: r.row for r in records}
    for result in grid:
        row = rows[Path(result.path).name.removeprefix("trial_")]
        row["test_ic"] = row["test_rank_ic"] = math.nan
        try:
            weights = trial_best_weights(result.path, result.checkpoint)
        except FileNotFoundError:  # errored before its first epoch
            continue
        trial_cfg = trial_config(base, result.config)
        metrics = signal_metrics(_segment_frame(trial_cfg, data[data_key(trial_cfg)][0], weights, "test"))
        row["test_ic"], row["test_rank_ic"] = metrics["IC"], metrics["RankIC"]


def finish_experiment(cfg: Config, grid: Any, data: Data, exp_dir: str | Path, *, t0: float) -> dict[str, Any]:
    """Write the table, the best trial's config, weights and test predictions, the summary and the report."""
    from distgru.tuning.report import write_tune_report

    tc = tune_of(cfg)
    exp_dir = Path(exp_dir)
    records = trial_records(cfg, grid)
    _add_test_scores(cfg, grid, data, records)
    table = write_table(records, exp_dir)
    if not table[f"best_{tc.metric}"].notna().any():
        errors = [str(r.error).strip().splitlines()[-1] for r in grid if r.error is not None]
        raise RuntimeError(f"no trial reported a finite {tc.metric} (results.csv in {exp_dir}); "
                           + (f"{len(errors)} errored, e.g.: {errors[0]}" if errors else "every value is NaN"))
    best = grid.get_best_result(metric=tc.metric, mode=tc.resolved_mode, scope="all")
    best_id = Path(best.path).name.removeprefix("trial_")
    best_cfg = trial_config(base_dict(cfg), best.config)
    write_config(exp_dir / BEST_CONFIG, best_cfg)
    panel, state = data[data_key(best_cfg)]
    weights = trial_best_weights(best.path, best.checkpoint)
    row = next(r.row for r in records if r.row["trial_id"] == best_id)
    save_best(exp_dir, best_cfg, weights, state,
              {"step_len": window_len(best_cfg), "feature_names": list(panel.feature_names),
               "best_epoch": row["best_epoch"], "best_score": row[f"best_{tc.metric}"]})

    frames = {seg: _segment_frame(best_cfg, panel, weights, seg) for seg in ("valid", "test")}
    write_predictions(exp_dir / PREDICTIONS_FILE, frames["test"])
    summary = {
        "experiment_dir": str(exp_dir), "metric": tc.metric, "mode": tc.resolved_mode,
        "best_trial": best_id, "best_params": {k: _cell(v) for k, v in best.config.items()},
        f"best_{tc.metric}": row[f"best_{tc.metric}"], "best_epoch": row["best_epoch"],
        "valid": signal_metrics(frames["valid"]), "test": signal_metrics(frames["test"]),
        "median_trial_test_ic": float(table["test_ic"].median()),
        "trials": len(records), "errors": int((table["status"] == "ERROR").sum()),
        "stopped_by": {k: int(v) for k, v in table["stopped_by"].value_counts().items()},
        "wall_s": time.perf_counter() - t0,
    }
    (exp_dir / SUMMARY_FILE).write_text(json.dumps(_json_safe(summary), indent=2) + "\n")
    write_tune_report(exp_dir / REPORT_FILE, cfg, records, summary)
    return summary
