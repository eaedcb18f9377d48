"""Self-contained HTML reports (inline CSS, plots as base64 PNG ``<img>`` tags) and plain-text metric tables.

The generic pieces (``figure``, ``img_tag``, ``html_table``, ``Section``, ``render_page``, ``format_table``) are
shared by every report (evaluation here, Tune later); ``write_evaluation_report`` builds the evaluation page.
Figures are made with ``matplotlib.figure.Figure`` directly, not pyplot, so no global figure state or GUI backend
is involved and reports can be written from worker threads.
"""

from __future__ import annotations

import base64
import html
import io
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from matplotlib.colors import TwoSlopeNorm
from matplotlib.figure import Figure

from distgru.evaluation.backtest import excess_returns, portfolio_metrics
from distgru.metrics import daily_table, heatmap_frame, monthly_table

Rows = Sequence[Mapping[str, object]] | pd.DataFrame

CSS = """
body { font-family: -apple-system, "Segoe UI", Helvetica, Arial, sans-serif; margin: 24px auto; max-width: 1150px;
       color: #1d2733; background: #fff; }
h1 { font-size: 24px; margin-bottom: 2px; } h2 { font-size: 19px; border-bottom: 1px solid #d0d7de;
padding-bottom: 4px; margin-top: 32px; } .sub { color: #57606a; font-size: 13px; }
table { border-collapse: collapse; margin: 10px 0; font-size: 13px; }
th, td { border: 1px solid #d0d7de; padding: 4px 10px; text-align: right; }
th { background: #f3f5f7; } td:first-child, th:first-child { text-align: left; }
img { max-width: 100%; display: block; margin: 10px 0; } p.note { color: #57606a; font-size: 13px; }
details summary { cursor: pointer; color: #0969da; font-size: 13px; } pre { font-size: 12px; background: #f6f8fa;
padding: 8px; overflow-x: auto; }
"""


def figure(width: float = 10.0, height: float = 4.0, nrows: int = 1, **kwargs: Any) -> tuple[Figure, Any]:
    """A pyplot-free figure and its axes (an array when nrows > 1)."""
    fig = Figure(figsize=(width, height), layout="constrained")
    return fig, fig.subplots(nrows=nrows, **kwargs)


def img_tag(fig: Figure, alt: str = "", dpi: int = 100) -> str:
    """The figure as an ``<img>`` with an inline ``data:image/png;base64`` source."""
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=dpi)
    data = base64.b64encode(buf.getvalue()).decode("ascii")
    return f'<img alt="{html.escape(alt)}" src="data:image/png;base64,{data}">'


def _cell(value: object, floatfmt: str) -> str:
    if isinstance(value, float | np.floating):
        return "" if math.isnan(value) else format(float(value), floatfmt)
    if isinstance(value, pd.Timestamp | datetime):
        return value.strftime("%Y-%m-%d")
    return str(value)


def _records(rows: Rows) -> tuple[list[str], list[list[object]]]:
    if isinstance(rows, pd.DataFrame):
        frame = rows.reset_index() if rows.index.name or isinstance(rows.index, pd.MultiIndex) else rows
        return [str(c) for c in frame.columns], frame.to_numpy(dtype=object).tolist()
    columns: dict[str, None] = {}
    for row in rows:
        columns.update(dict.fromkeys(row))
    return list(columns), [[row.get(c, "") for c in columns] for row in rows]


def html_table(rows: Rows, floatfmt: str = ".4f") -> str:
    """An HTML table from a list of dicts (columns in first-seen order) or a DataFrame (named index kept)."""
    header, body = _records(rows)
    head = "".join(f"<th>{html.escape(h)}</th>" for h in header)
    lines = ["".join(f"<td>{html.escape(_cell(v, floatfmt))}</td>" for v in row) for row in body]
    return f"<table><tr>{head}</tr>" + "".join(f"<tr>{line}</tr>" for line in lines) + "</table>"


def format_table(rows: Rows, floatfmt: str = ".4f") -> str:
    """A plain-text table for terminals and logs: text left-aligned, numbers right-aligned."""
    header, body = _records(rows)
    cells = [[_cell(v, floatfmt) for v in row] for row in body]
    numeric = [all(isinstance(row[j], int | float | np.number) for row in body) for j in range(len(header))]
    widths = [max([len(h), *(len(r[j]) for r in cells)]) for j, h in enumerate(header)]

    def line(values: list[str]) -> str:
        return "  ".join(v.rjust(w) if num else v.ljust(w)
                         for v, w, num in zip(values, widths, numeric, strict=True)).rstrip()

    rule = "  ".join("-" * w for w in widths)
    return "\n".join([line(header), rule, *(line(r) for r in cells)])


@dataclass(frozen=True)
class Section:
    title: str
    """Heading (``<h2>``)."""
    body: str
    """Trusted HTML: tables, ``img_tag`` output, ``<p>`` notes."""


def render_page(title: str, sections: Sequence[Section], subtitle: str = "") -> str:
    """A complete HTML document with inline CSS; nothing is fetched when it is opened."""
    parts = [f"<h2>{html.escape(s.title)}</h2>\n{s.body}" for s in sections]
    sub = f'<div class="sub">{html.escape(subtitle)}</div>' if subtitle else ""
    return (f'<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8"><title>{html.escape(title)}</title>'
            f"<style>{CSS}</style></head><body>\n<h1>{html.escape(title)}</h1>{sub}\n"
            + "\n".join(parts) + "\n</body></html>\n")


def plot_cumulative_ic(daily: pd.DataFrame) -> Figure:
    """Cumulative sums of daily IC and Rank IC (undefined days add 0): the slope is the mean IC."""
    fig, ax = figure(10, 3.8)
    for column, color in (("IC", "#1f77b4"), ("RankIC", "#d62728")):
        ax.plot(daily.index, daily[column].fillna(0).cumsum(), label=f"cumulative {column}", color=color)
    ax.axhline(0, color="#888", lw=0.8)
    ax.set_ylabel("sum of daily values")
    ax.legend(loc="upper left")
    ax.grid(alpha=0.3)
    return fig


def plot_ic_heatmap(grid: pd.DataFrame, label: str = "mean daily IC") -> Figure:
    """Year × month heat map, centred on 0 (red negative, blue positive), each cell annotated."""
    fig, ax = figure(10, 0.5 * len(grid) + 1.6)
    values = grid.to_numpy(dtype=float)
    bound = float(np.nanmax(np.abs(values))) if np.isfinite(values).any() else 1.0
    bound = bound or 1.0
    image = ax.imshow(values, cmap="RdBu", aspect="auto", norm=TwoSlopeNorm(0.0, -bound, bound))
    ax.set_xticks(range(12), ["Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec"])
    ax.set_yticks(range(len(grid)), [str(y) for y in grid.index])
    for (r, c), v in np.ndenumerate(values):
        if np.isfinite(v):
            ax.text(c, r, f"{v:.3f}", ha="center", va="center", fontsize=8,
                    color="white" if abs(v) > 0.6 * bound else "black")
    fig.colorbar(image, ax=ax, label=label)
    return fig


def plot_excess_return(report: pd.DataFrame) -> Figure:
    """Top: cumulative (summed, as qlib's mode 'sum') strategy return net of cost, benchmark, and excess return
    with and without cost. Bottom: drawdown of the excess return with cost (cumsum − running max)."""
    excess = excess_returns(report)
    fig, (top, bottom) = figure(10, 6, nrows=2, sharex=True, gridspec_kw={"height_ratios": [2.2, 1]})
    top.plot(report.index, (report["return"] - report["cost"]).cumsum(), label="strategy (net of cost)",
             color="#1f77b4")
    top.plot(report.index, report["bench"].cumsum(), label="benchmark", color="#7f7f7f")
    top.plot(report.index, excess["excess_return_without_cost"].cumsum(), label="excess without cost",
             color="#2ca02c", ls="--")
    with_cost = excess["excess_return_with_cost"].cumsum()
    top.plot(report.index, with_cost, label="excess with cost", color="#d62728")
    top.axhline(0, color="#888", lw=0.8)
    top.set_ylabel("cumulative return")
    top.legend(loc="upper left")
    top.grid(alpha=0.3)
    drawdown = with_cost - with_cost.cummax()
    bottom.fill_between(report.index, drawdown, 0, color="#d62728", alpha=0.35)
    bottom.set_ylabel("drawdown")
    bottom.grid(alpha=0.3)
    return fig


def plot_turnover(report: pd.DataFrame, window: int = 20) -> Figure:
    """Daily turnover (traded value / previous account value, buys + sells) and its rolling mean."""
    fig, ax = figure(10, 3.2)
    ax.bar(report.index, report["turnover"], width=1.0, color="#9ecae1", label="daily")
    ax.plot(report.index, report["turnover"].rolling(window, min_periods=1).mean(), color="#08519c",
            label=f"{window}-day mean")
    ax.set_ylabel("turnover")
    ax.legend(loc="upper right")
    ax.grid(alpha=0.3)
    return fig


def _metric_rows(metrics: Mapping[str, object]) -> tuple[list[dict[str, object]], list[Section]]:
    """Flat numbers → one name/value table; nested mappings (``portfolio_metrics``) → one column each."""
    flat = [{"metric": k, "value": v} for k, v in metrics.items() if not isinstance(v, Mapping)]
    nested = {k: v for k, v in metrics.items() if isinstance(v, Mapping)}
    sections = [Section(f"Portfolio: {k}", html_table([{"metric": m, "value": x} for m, x in v.items()]))
                for k, v in nested.items()]
    return flat, sections


@dataclass(frozen=True)
class RunInfo:
    """What the page says about the run behind the predictions (everything optional: a bare predictions file has
    at most its bars)."""

    history: Sequence[Mapping[str, Any]] = ()
    """metrics.jsonl rows: epoch (from 1), train_loss, valid_score, best_epoch."""
    metric: str = "valid metric"
    """What valid_score is (train.metric)."""
    config_yaml: str = ""
    """The resolved config as saved with the run."""
    facts: Mapping[str, object] | None = None
    """Data span, universe size, market profile and annualisation days, shown first."""


def plot_learning_curves(history: Sequence[Mapping[str, Any]], metric: str = "valid metric") -> Figure:
    """Train loss and the early-stopping metric per epoch, the best epoch marked on both."""
    epochs = [int(r["epoch"]) for r in history]
    best = int(history[-1].get("best_epoch") or 0)
    fig, (left, right) = figure(10, 3.0, ncols=2)
    for ax, key, label, color in ((left, "train_loss", "train loss", "#1f77b4"),
                                  (right, "valid_score", f"valid {metric}", "#d62728")):
        values = [float("nan") if r.get(key) is None else float(r[key]) for r in history]
        ax.plot(epochs, values, marker="o", ms=3, color=color, label=label)
        if best:  # 0: no epoch improved, nothing to mark
            ax.axvline(best, color="#888", ls="--", lw=1, label=f"best epoch {best}")
            ax.plot([best], [values[epochs.index(best)]], marker="*", ms=12, color="#ff7f0e")
        ax.set_xlabel("epoch")
        ax.set_ylabel(label)
        ax.legend(loc="best")
        ax.grid(alpha=0.3)
    return fig


def _details(summary: str, body: str) -> str:
    """Collapsed by default: long tables must not push the plots down the page."""
    return f"<details><summary>{html.escape(summary)}</summary>{body}</details>"


def write_evaluation_report(pred: pd.DataFrame | pd.Series, backtest_report: pd.DataFrame | None,
                            metrics: Mapping[str, object], out_html: str | Path,
                            title: str = "distgru evaluation", run: RunInfo | None = None) -> Path:
    """Write the evaluation page: the run (facts, learning curves), then the key plots (cumulative IC / Rank IC,
    cumulative excess return with drawdown), the metric tables, turnover, the monthly IC heat map, and at the end
    the long tables collapsed (monthly IC, the resolved config).

    ``pred`` is what ``metrics.as_frame`` accepts; ``metrics`` is ``signal_metrics`` output, optionally merged
    with ``portfolio_metrics`` (nested dicts get their own tables; computed here when absent).
    """
    daily = daily_table(pred)
    monthly = monthly_table(daily)
    flat, portfolio_sections = _metric_rows(metrics)
    if backtest_report is not None and not portfolio_sections:
        portfolio_sections = _metric_rows(portfolio_metrics(backtest_report))[1]
    span = f"{daily.index.min():%Y-%m-%d} .. {daily.index.max():%Y-%m-%d}" if len(daily) else "no days"
    sections: list[Section] = []
    if run is not None and run.facts:
        sections.append(Section("Run", html_table([{"": k, "value": v} for k, v in run.facts.items()])))
    if run is not None and run.history:
        sections.append(Section("Learning curves", img_tag(plot_learning_curves(run.history, run.metric),
                                                           "learning curves")))
    sections.append(Section("Cumulative IC and Rank IC", img_tag(plot_cumulative_ic(daily), "cumulative IC")))
    if backtest_report is not None:
        sections.append(Section("Excess return and drawdown",
                                img_tag(plot_excess_return(backtest_report), "excess return")))
    sections.append(Section("Signal metrics", html_table(flat) + '<p class="note">IC/ICIR/RankIC/RankICIR as qlib '
                            "(daily, not annualised); long_short = mean daily top-decile minus bottom-decile label; "
                            "hit_rate = share of days with IC &gt; 0.</p>"))
    sections += portfolio_sections
    if backtest_report is not None:
        sections.append(Section("Turnover", img_tag(plot_turnover(backtest_report), "turnover")))
    sections.append(Section("Monthly IC", img_tag(plot_ic_heatmap(heatmap_frame(monthly)), "monthly IC heat map")
                            + _details(f"monthly IC table ({len(monthly)} rows)", html_table(monthly))))
    if run is not None and run.config_yaml:
        sections.append(Section("Config", _details("the resolved config of the run (config.yaml)",
                                                   f"<pre>{html.escape(run.config_yaml)}</pre>")))
    out = Path(out_html)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(render_page(title, sections, subtitle=f"test days {span}"), encoding="utf-8")
    return out
