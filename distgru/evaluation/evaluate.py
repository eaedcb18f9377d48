"""Evaluate test-segment predictions: signal metrics, the TopK-Dropout backtest, report.html, qlib's pickles.

    result = evaluate_predictions(pred, panel, cfg.backtest, out_dir)       # the building block
    result = evaluate_run(run_dir)                                          # a run directory, in place
    result = evaluate_path("preds.parquet", provider="~/.qlib/...")         # a bare predictions file

What a run directory (or ``--out``) gets::

    report.html              metric tables + 4 embedded PNGs: cumulative IC, monthly IC heat map,
                             cumulative excess return vs benchmark with drawdown, turnover
    backtest_report.parquet  the daily backtest report (``backtest.REPORT_COLUMNS`` + the two excess returns)
    pred.pkl, label.pkl      qlib's form: DataFrames on a (datetime, instrument) MultiIndex, columns ``score``
                             and ``LABEL0`` (what qlib's SignalRecord writes and SigAnaRecord/PortAnaRecord read)
    result.json              gains an ``evaluation`` block (``EVALUATION_KEYS``); a bare predictions file gets
                             evaluation.json instead

Metric names (the flat ``metrics`` dict, also the columns of the multi-seed table): the signal metrics
(IC, ICIR, RankIC, RankICIR, long_short, hit_rate, n_days, n_pairs) and, with bars, the backtest's
``excess_return_with_cost`` risk analysis as ``annualized_return``, ``information_ratio``, ``max_drawdown``,
the same without cost as ``*_without_cost``, and ``turnover`` (mean daily traded value / previous account).
"""

from __future__ import annotations

import dataclasses
import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd

from distgru.config.schema import BacktestConfig, Config, DataConfig
from distgru.data.panel import BarPanel, DataError
from distgru.evaluation.backtest import excess_returns, portfolio_metrics, run_backtest
from distgru.evaluation.metrics import as_frame, signal_metrics

PRED_PKL = "pred.pkl"
LABEL_PKL = "label.pkl"
REPORT_HTML = "report.html"
BACKTEST_PARQUET = "backtest_report.parquet"
EVALUATION_JSON = "evaluation.json"
SIGNAL_KEYS = ("IC", "ICIR", "RankIC", "RankICIR", "long_short", "hit_rate")
BACKTEST_KEYS = ("annualized_return", "information_ratio", "max_drawdown", "turnover")
TABLE_KEYS = (*SIGNAL_KEYS, *BACKTEST_KEYS)
"""The terminal table's metrics, in order (qlib's benchmark columns, then distgru's extras)."""


@dataclass
class Evaluation:
    metrics: dict[str, float]
    """Flat metric name → value (module docstring)."""
    report: pd.DataFrame | None
    """The daily backtest report (None without bars)."""
    files: dict[str, str]
    """What was written: report_html, backtest_report, pred_pkl, label_pkl."""
    window: tuple[str, str] | None = None
    """First and last backtest day."""

    def block(self) -> dict[str, Any]:
        """The ``evaluation`` block of result.json."""
        return {"metrics": self.metrics, "window": list(self.window) if self.window else None,
                "files": self.files}


def write_qlib_pickles(pred: pd.DataFrame, out_dir: str | Path) -> tuple[Path, Path]:
    """``pred.pkl`` (column ``score``) and ``label.pkl`` (column ``LABEL0``, the raw label) as qlib's
    SignalRecord leaves them: DataFrames on a sorted (datetime, instrument) MultiIndex."""
    frame = as_frame(pred)
    index = pd.MultiIndex.from_arrays([pd.DatetimeIndex(frame["datetime"]),
                                       frame["instrument"].astype(object).to_numpy()],
                                      names=["datetime", "instrument"])
    both = pd.DataFrame({"score": frame["score"].to_numpy("float64"),
                         "LABEL0": frame["label"].to_numpy("float64")}, index=index).sort_index()
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    both[["score"]].to_pickle(out / PRED_PKL)
    both[["LABEL0"]].to_pickle(out / LABEL_PKL)
    return out / PRED_PKL, out / LABEL_PKL


def flat_metrics(signal: dict[str, float], report: pd.DataFrame | None) -> dict[str, float]:
    """Signal metrics plus the backtest's headline numbers under the names of the module docstring."""
    metrics = dict(signal)
    if report is not None:
        pm = portfolio_metrics(report)
        with_cost, without = pm["excess_return_with_cost"], pm["excess_return_without_cost"]
        for key in ("annualized_return", "information_ratio", "max_drawdown"):
            metrics[key] = with_cost[key]
            metrics[f"{key}_without_cost"] = without[key]
        metrics["turnover"] = float(report["turnover"].mean())
    return metrics


def evaluate_predictions(pred: pd.DataFrame, panel: BarPanel | None, backtest: BacktestConfig | None,
                         out_dir: str | Path, *, title: str = "distgru evaluation") -> Evaluation:
    """Signal metrics, (with a panel) the backtest over the predictions' days, and every file of the module
    docstring except result.json, written into ``out_dir``."""
    from distgru.evaluation.report import write_evaluation_report

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    frame = as_frame(pred)
    if frame.empty:
        raise DataError("no predictions to evaluate")
    pred_pkl, label_pkl = write_qlib_pickles(frame, out)
    files = {"pred_pkl": str(pred_pkl), "label_pkl": str(label_pkl)}
    report, window = None, None
    if panel is not None:
        start, end = frame["datetime"].min(), frame["datetime"].max()
        result = run_backtest(frame[["datetime", "instrument", "score"]], panel, backtest or BacktestConfig(),
                              start, end)
        report = result.report
        window = (f"{report.index[0]:%Y-%m-%d}", f"{report.index[-1]:%Y-%m-%d}")
        report.join(excess_returns(report)).to_parquet(out / BACKTEST_PARQUET)
        files["backtest_report"] = str(out / BACKTEST_PARQUET)
    metrics = flat_metrics(signal_metrics(frame), report)
    shown = {k: v for k, v in metrics.items() if k not in BACKTEST_KEYS and not k.endswith("_without_cost")}
    nested = portfolio_metrics(report) if report is not None else {}
    write_evaluation_report(frame, report, {**shown, "turnover (mean daily)": metrics.get("turnover", math.nan),
                                            **nested} if report is not None else shown,
                            out / REPORT_HTML, title=title)
    files["report_html"] = str(out / REPORT_HTML)
    return Evaluation(metrics=metrics, report=report, files=files, window=window)


def metric_table(rows: dict[str, dict[str, float]], keys: tuple[str, ...] = TABLE_KEYS) -> str:
    """Fixed-width table: one row per name (a segment, a seed, ``mean``...), one column per metric."""
    present = [k for k in keys if any(k in r for r in rows.values())]
    width = max([8, *(len(n) for n in rows)])
    lines = [f"{'':<{width}}" + "".join(f"{k:>19}" for k in present)]
    for name, row in rows.items():
        cells = []
        for k in present:
            v = row.get(k, math.nan)
            cells.append(f"{v:>19}" if isinstance(v, str) else f"{float(v):>19.4f}")
        lines.append(f"{name:<{width}}" + "".join(cells))
    return "\n".join(lines)


def load_panel(data: DataConfig) -> BarPanel:
    """The bars a run was trained on (``load_bars``), for the backtest."""
    from distgru.data.load import load_bars

    return load_bars(data)


def _update_result(run_dir: Path, block: dict[str, Any]) -> Path:
    """Add (or replace) the ``evaluation`` block of result.json, keeping every other key as written."""
    from distgru.training.rundir import RESULT_FILE, _clean

    path = run_dir / RESULT_FILE
    data = json.loads(path.read_text()) if path.is_file() else {}
    data["evaluation"] = _clean(block)
    path.write_text(json.dumps(data, indent=2) + "\n")
    return path


def evaluate_run(run_dir: str | Path, *, out_dir: str | Path | None = None, cfg: Config | None = None,
                 panel: BarPanel | None = None) -> Evaluation:
    """Evaluate a run directory's predictions.parquet with the bars its config.yaml describes (or ``cfg``'s, or
    ``panel``) and its ``backtest`` settings.

    Files go to ``out_dir`` (default: the run directory). Written into the run directory, the metrics become
    the ``evaluation`` block of its result.json; elsewhere (or without a result.json) they go to
    evaluation.json."""
    from distgru.training.rundir import CONFIG_FILE, PREDICTIONS_FILE, RESULT_FILE, read_config

    run = Path(run_dir)
    cfg = cfg or read_config(run / CONFIG_FILE)
    pred = pd.read_parquet(run / PREDICTIONS_FILE)
    if panel is None:
        panel = load_panel(cfg.data)
    out = Path(out_dir) if out_dir is not None else run
    ev = evaluate_predictions(pred, panel, cfg.backtest, out, title=f"distgru evaluation: {run.name}")
    if out.resolve() == run.resolve() and (run / RESULT_FILE).is_file():
        ev.files["result_json"] = str(run / RESULT_FILE)
        _update_result(run, ev.block())
    else:
        ev.files["evaluation_json"] = str(out / EVALUATION_JSON)
        (out / EVALUATION_JSON).write_text(json.dumps(_jsonable(ev.block()), indent=2) + "\n")
    return ev


def _jsonable(block: dict[str, Any]) -> dict[str, Any]:
    from distgru.training.rundir import _clean

    return _clean(block)


def evaluate_path(path: str | Path, *, provider: str | None = None, synthetic: bool = False,
                  out_dir: str | Path | None = None, backtest: BacktestConfig | None = None) -> Evaluation:
    """``distgru evaluate``: a run directory (config.yaml + predictions.parquet), or a bare predictions Parquet
    with bars from a qlib ``provider`` directory or the default ``synthetic`` market (neither: signal metrics
    only). A run directory's own config wins unless ``provider``/``synthetic`` is given."""
    from distgru.training.rundir import CONFIG_FILE, read_config

    p = Path(path).expanduser()
    provider = str(Path(provider).expanduser()) if provider else None
    if p.is_dir():
        if not (p / CONFIG_FILE).is_file():
            raise DataError(f"{p}: no {CONFIG_FILE}; is it a distgru run directory?")
        cfg = read_config(p / CONFIG_FILE)
        if provider:  # same universe and benchmark, bars from elsewhere
            cfg = dataclasses.replace(cfg, data=dataclasses.replace(cfg.data, source="qlib", provider=provider))
        elif synthetic:
            cfg = dataclasses.replace(cfg, data=dataclasses.replace(cfg.data, source="synthetic"))
        if backtest is not None:
            cfg = dataclasses.replace(cfg, backtest=backtest)
        return evaluate_run(p, out_dir=out_dir, cfg=cfg)
    if not p.is_file():
        raise DataError(f"{p}: neither a run directory nor a predictions file")
    pred = pd.read_parquet(p)
    data = DataConfig(source="qlib", provider=provider) if provider else (
        DataConfig(source="synthetic") if synthetic else None)
    panel = load_panel(data) if data is not None else None
    out = Path(out_dir) if out_dir is not None else p.parent
    ev = evaluate_predictions(pred, panel, backtest, out, title=f"distgru evaluation: {p.name}")
    (out / EVALUATION_JSON).write_text(json.dumps(_jsonable(ev.block()), indent=2) + "\n")
    ev.files["evaluation_json"] = str(out / EVALUATION_JSON)
    return ev
