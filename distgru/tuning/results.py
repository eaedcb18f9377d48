"""What a finished search leaves in the experiment directory, beside Tune's own trial directories::

    results.csv, results.parquet   one row per trial: id, parameters, best metric, epochs, status, who stopped it,
                                   and the test IC / Rank IC of its best weights (to see if valid ranking holds;
                                   absent with tune.score_test false, as predictions.parquet and summary's test);
                                   a stopped search writes it too, with the trials so far (``unfinished_table``)
    best_config.yaml               the best trial's resolved training config (``distgru train best_config.yaml``)
    best/                          its best-epoch weights, processor state and config (``distgru predict`` layout)
    predictions.parquet            its TEST segment scores (rundir's predictions schema)
    tune_result.json               best trial, its parameters, valid metric, test signal metrics, trial counts
    report.html                    learning curves of all trials and the parameter/metric table
"""

from __future__ import annotations

import math
import time
from pathlib import Path
from typing import Any

import pandas as pd

from distgru.config import Config
from distgru.metrics import signal_metrics
from distgru.training.checkpoint import save_best
from distgru.training.rundir import PREDICTIONS_FILE, write_config, write_json, write_predictions
from distgru.training.scoring import score_segment
from distgru.tuning.records import TrialRecord, cell, trial_id, trial_params, trial_records
from distgru.tuning.report import write_tune_report
from distgru.tuning.runner import Data
from distgru.tuning.space import base_dict, data_key, trial_config, tune_of
from distgru.tuning.trial import trial_state

RESULTS_CSV = "results.csv"
RESULTS_PARQUET = "results.parquet"
BEST_CONFIG = "best_config.yaml"
SUMMARY_FILE = "tune_result.json"
REPORT_FILE = "report.html"


def trial_configs(cfg: Config, params: dict[str, dict[str, Any]]) -> dict[str, Config]:
    """Each trial's training config, validated once, by trial id (``params``: its sampled parameters)."""
    base = base_dict(cfg)
    return {tid: trial_config(base, p) for tid, p in params.items()}


def write_table(records: list[TrialRecord], exp_dir: Path) -> pd.DataFrame:
    table = pd.DataFrame([r.row for r in records])
    table.to_csv(exp_dir / RESULTS_CSV, index=False)
    table.to_parquet(exp_dir / RESULTS_PARQUET, index=False)
    return table


def _add_test_scores(grid: Any, data: Data, records: list[TrialRecord], cfgs: dict[str, Config]) -> None:
    """Every trial's test IC with its best weights: whether the valid ranking carries over to unseen days."""
    rows = {r.row["trial_id"]: r.row for r in records}
    for result in grid:
        tid = trial_id(result)
        row = rows[tid]
        row["test_ic"] = row["test_rank_ic"] = math.nan
        try:
            state = trial_state(result.path, result.checkpoint)
        except FileNotFoundError:  # errored before its first epoch
            continue
        trial_cfg = cfgs[tid]
        metrics = signal_metrics(score_segment(trial_cfg, data[data_key(trial_cfg)][0], state.best_model, "test"))
        row["test_ic"], row["test_rank_ic"] = metrics["IC"], metrics["RankIC"]


def unfinished_table(cfg: Config, exp_dir: Path) -> pd.DataFrame:
    """The trial table of a search that has not finished (stopped, or still running elsewhere), read from the
    experiment state Tune saved: each trial's best value so far, trials it had not ended marked UNFINISHED. It is
    written as results.csv/.parquet; the best config, weights and report wait for the search to finish."""
    from ray.tune import ExperimentAnalysis, ResultGrid

    analysis = ExperimentAnalysis(str(exp_dir))
    # A trial that has not reported yet has no config in its Result: take them from the experiment state.
    params = {t.trial_id: t.config for t in analysis.trials}
    # A restored experiment reads trials that were running as PENDING: only these two states are final.
    unfinished = frozenset(t.trial_id for t in analysis.trials if t.status not in ("TERMINATED", "ERROR"))
    records = trial_records(cfg, ResultGrid(analysis), params, trial_configs(cfg, params), unfinished)
    return write_table(records, exp_dir)


def finish_experiment(cfg: Config, grid: Any, data: Data, exp_dir: str | Path, *, t0: float) -> dict[str, Any]:
    """Write the table, the best trial's config, weights and test predictions, the summary and the report."""
    tc = tune_of(cfg)
    exp_dir = Path(exp_dir)
    params = trial_params(grid)
    cfgs = trial_configs(cfg, params)
    records = trial_records(cfg, grid, params, cfgs)
    if tc.score_test:
        _add_test_scores(grid, data, records, cfgs)
    table = write_table(records, exp_dir)
    if not table[f"best_{tc.metric}"].notna().any():
        errors = [str(r.error).strip().splitlines()[-1] for r in grid if r.error is not None]
        raise RuntimeError(f"no trial reported a finite {tc.metric} (results.csv in {exp_dir}); "
                           + (f"{len(errors)} errored, e.g.: {errors[0]}" if errors else "every value is NaN"))
    best = grid.get_best_result(metric=tc.metric, mode=tc.resolved_mode, scope="all")
    best_id = trial_id(best)
    best_cfg = cfgs[best_id]
    write_config(exp_dir / BEST_CONFIG, best_cfg)
    panel, processor_state = data[data_key(best_cfg)]
    state = trial_state(best.path, best.checkpoint)
    row = next(r.row for r in records if r.row["trial_id"] == best_id)
    save_best(exp_dir, best_cfg, state, processor_state)

    segments = ("valid", "test") if tc.score_test else ("valid",)
    frames = {seg: score_segment(best_cfg, panel, state.best_model, seg) for seg in segments}
    if tc.score_test:
        write_predictions(exp_dir / PREDICTIONS_FILE, frames["test"])
    summary = {
        "experiment_dir": str(exp_dir), "metric": tc.metric, "mode": tc.resolved_mode,
        "best_trial": best_id, "best_params": {k: cell(v) for k, v in best.config.items()},
        f"best_{tc.metric}": row[f"best_{tc.metric}"], "best_epoch": row["best_epoch"],
        "valid": signal_metrics(frames["valid"]), "score_test": tc.score_test,
        "test": signal_metrics(frames["test"]) if tc.score_test else None,
        "median_trial_test_ic": float(table["test_ic"].median()) if tc.score_test else None,
        "trials": len(records), "errors": int((table["status"] == "ERROR").sum()),
        "stopped_by": {k: int(v) for k, v in table["stopped_by"].value_counts().items()},
        "wall_s": time.perf_counter() - t0,
    }
    write_json(exp_dir / SUMMARY_FILE, summary)
    write_tune_report(exp_dir / REPORT_FILE, cfg, records, summary)
    return summary
