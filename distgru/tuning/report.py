"""The Tune HTML report: tune-specific plots and tables on the shared page helpers of distgru.evaluation.report."""

from __future__ import annotations

import html
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator

from distgru.config import Config
from distgru.evaluation.report import Section, figure, html_table, img_tag, render_page
from distgru.tuning.records import TrialRecord
from distgru.tuning.space import tune_of


def plot_learning_curves(records: list[TrialRecord], metric: str) -> Figure:
    """The tune metric (top) and the training loss (bottom) per epoch, one line per trial."""
    fig, (top, bottom) = figure(10, 7, nrows=2, sharex=True)
    for record in records:
        hist, label = record.history, str(record.row["trial_id"])
        if metric in hist:
            top.plot(hist["epoch"], hist[metric], marker="o", ms=3, label=label)
        if "train_loss" in hist:
            bottom.plot(hist["epoch"], hist["train_loss"], marker="o", ms=3, label=label)
    top.set_ylabel(f"{metric} (valid)")
    bottom.set_ylabel("train_loss")
    bottom.set_xlabel("epoch")
    bottom.xaxis.set_major_locator(MaxNLocator(integer=True))
    for ax in (top, bottom):
        ax.grid(alpha=0.3)
    if len(records) <= 20:
        top.legend(loc="best", fontsize=7, ncol=2, title="trial")
    return fig


def plot_params(table: pd.DataFrame, keys: list[str], metric: str, log_keys: set[str]) -> Figure | None:
    """Each trial's best metric against each numeric parameter: where the good region of the space lies."""
    numeric = [k for k in keys if k in table and pd.api.types.is_numeric_dtype(table[k])]
    if not numeric:
        return None
    fig, axes = figure(3.4 * len(numeric), 3.2, ncols=len(numeric), squeeze=False)
    for ax, key in zip(axes[0], numeric, strict=True):
        ax.scatter(table[key], table[f"best_{metric}"], c=np.where(table["stopped_by"] == "scheduler", "#d62728",
                                                                      "#1f77b4"), s=22)
        if key in log_keys:
            ax.set_xscale("log")
        ax.set_xlabel(key)
        ax.grid(alpha=0.3)
    axes[0][0].set_ylabel(f"best {metric}")
    return fig


def write_tune_report(out_html: str | Path, cfg: Config, records: list[TrialRecord], summary: dict[str, Any]) -> Path:
    tc = tune_of(cfg)
    metric = tc.metric
    table = pd.DataFrame([r.row for r in records])
    keys = [d.key for d in tc.dists]
    best = summary["best_trial"]
    test = summary["test"]
    headline = [{"item": "best trial", "value": best},
                *({"item": k, "value": v} for k, v in summary["best_params"].items()),
                {"item": f"best valid {metric}", "value": summary[f"best_{metric}"]},
                {"item": "best epoch", "value": summary["best_epoch"]},
                *([{"item": "test IC", "value": test.get("IC", float("nan"))},
                   {"item": "test RankIC", "value": test.get("RankIC", float("nan"))}] if test is not None else []),
                {"item": "trials (errors)", "value": f"{summary['trials']} ({summary['errors']})"}]
    note = ("Test metrics score the test segment with the best trial's best-epoch weights (predictions.parquet)"
            if test is not None else "The test segment was not scored (tune.score_test: false): the choice saw "
            "the validation segment only")
    sections = [
        Section("Best trial", html_table(headline)
                + f'<p class="note">{note}; its training config is best_config.yaml.</p>'),
        Section("Learning curves", img_tag(plot_learning_curves(records, metric), "learning curves")),
    ]
    params_fig = plot_params(table, keys, metric, {d.key for d in tc.dists if d.kind == "loguniform"})
    if params_fig is not None:
        sections.append(Section("Metric by parameter", img_tag(params_fig, "metric by parameter")
                                + '<p class="note">Red: stopped by the scheduler.</p>'))
    shown = table.drop(columns=["trial_dir"]).sort_values(f"best_{metric}", ascending=tc.resolved_mode == "min",
                                                          na_position="last")
    sections.append(Section("Trials", html_table(shown, floatfmt=".5g")
                            + f'<p class="note">Scheduler: {html.escape(tc.scheduler.kind)}; search: '
                            f"{html.escape(tc.search)}. TensorBoard: <code>tensorboard --logdir "
                            f"{html.escape(str(summary['experiment_dir']))}</code></p>"))
    out = Path(out_html)
    out.write_text(render_page(f"distgru tune: {cfg.name}", sections,
                               subtitle=f"{summary['trials']} trials, metric {metric} ({tc.resolved_mode})"),
                   encoding="utf-8")
    return out
