"""Evaluate test-segment predictions: signal metrics, the TopK-Dropout backtest, report.html, qlib's pickles.

    result = evaluate_predictions(pred, panel, cfg.backtest, out_dir)       # the building block
    result = evaluate_run(run_dir)                                          # a run directory, in place
    result = evaluate_path("preds.parquet", provider="~/.qlib/...")         # a bare predictions file
    result = evaluate_path("preds.parquet", data="us.parquet", benchmark="EQW", profile="us")

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
import logging
import math
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd
import yaml

from distgru.config.loader import to_dict
from distgru.config.market import MarketConfig
from distgru.config.schema import BacktestConfig, Config, DataConfig
from distgru.data.panel import BarPanel, DataError
from distgru.data.validate import listing
from distgru.evaluation.backtest import TRADING_DAYS, excess_returns, portfolio_metrics, run_backtest
from distgru.metrics import as_frame, signal_metrics
from distgru.training.rundir import CONFIG_FILE, PREDICTIONS_FILE, RESULT_FILE, RunDir, read_config, write_json

if TYPE_CHECKING:  # imported on use below: matplotlib is only needed when a page is written
    from distgru.evaluation.report import RunInfo

PRED_PKL = "pred.pkl"
LABEL_PKL = "label.pkl"
REPORT_HTML = "report.html"
BACKTEST_PARQUET = "backtest_report.parquet"
EVALUATION_JSON = "evaluation.json"
SIGNAL_KEYS = ("IC", "ICIR", "RankIC", "RankICIR", "long_short", "hit_rate")
BACKTEST_KEYS = ("annualized_return", "information_ratio", "max_drawdown", "turnover")
TABLE_KEYS = (*SIGNAL_KEYS, *BACKTEST_KEYS)
"""The terminal table's metrics, in order (qlib's benchmark columns, then distgru's extras)."""
PRED_COLUMNS = ("datetime", "instrument", "score", "label")
NAN_SCORE_WARN = 0.05
"""Share of NaN scores above which evaluation warns: a few NaNs are stocks a model could not score, more mean a
broken run whose metrics describe a subset."""
_WHAT_PREDICTIONS_HOLD = ("one row per (datetime, instrument) with columns datetime, instrument, score (the model's "
                          "prediction) and label (the raw label, e.g. Ref($close, -2) / Ref($close, -1) - 1), as a "
                          "run's predictions.parquet does")

log = logging.getLogger(__name__)


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
    trading_days: int | None = None
    """Days a year the annualised metrics use (the market's); None without a backtest."""

    def block(self) -> dict[str, Any]:
        """The ``evaluation`` block of result.json."""
        return {"metrics": self.metrics, "window": list(self.window) if self.window else None,
                "trading_days": self.trading_days, "files": self.files}


def read_predictions(path: Path) -> pd.DataFrame:
    """A predictions Parquet file; a missing or unreadable one is a DataError naming it."""
    if not path.is_file():
        raise DataError(f"{path}: predictions file missing; it must hold {_WHAT_PREDICTIONS_HOLD}")
    try:
        return pd.read_parquet(path)
    except Exception as e:  # pyarrow raises several unrelated types for a file that is not Parquet
        raise DataError(f"{path}: not a readable Parquet file ({type(e).__name__}: {e}); it must hold "
                        f"{_WHAT_PREDICTIONS_HOLD}") from None


def prediction_frame(pred: pd.DataFrame | pd.Series, source: str = "predictions") -> pd.DataFrame:
    """``pred`` as ``as_frame`` returns it, or a one-line DataError: a required column missing, no rows, an
    unparsable datetime, non-numeric scores or labels, every score or every label NaN, a (datetime, instrument)
    pair twice."""
    if isinstance(pred, pd.DataFrame):
        have = [c for c in (*pred.index.names, *pred.columns) if c is not None]
        missing = [c for c in PRED_COLUMNS if c not in have]
        if missing:
            raise DataError(f"{source}: no column(s) {', '.join(missing)} (has {listing([str(c) for c in have])}); "
                            f"predictions must hold {_WHAT_PREDICTIONS_HOLD}")
    frame = as_frame(pred)
    if frame.empty:
        raise DataError(f"{source}: no predictions to evaluate (0 rows)")
    try:
        dates = pd.DatetimeIndex(pd.to_datetime(frame["datetime"]))
    except (ValueError, TypeError) as e:
        raise DataError(f"{source}: column datetime does not parse as dates ({e}); write dates such as "
                        "2020-01-31") from None
    frame = frame.assign(datetime=dates)
    for column in ("score", "label"):
        if not pd.api.types.is_numeric_dtype(frame[column]) or pd.api.types.is_bool_dtype(frame[column]):
            raise DataError(f"{source}: column {column} is {frame[column].dtype}, not numbers; it must hold "
                            f"{_WHAT_PREDICTIONS_HOLD}")
    nan = ~np.isfinite(frame["score"].to_numpy("float64"))
    n = len(frame)
    if nan.all():
        raise DataError(f"{source}: all {n} scores are NaN or infinite; nothing to evaluate. Check the run that "
                        "wrote them (a diverged training scores NaN) and predict again")
    if frame["label"].isna().all():
        raise DataError(f"{source}: all {n} labels are NaN; label must be the raw label of each row (the return "
                        "it predicts), known for all but the last days of the data")
    twice = frame.duplicated(["datetime", "instrument"])
    if twice.any():
        first = frame[twice].iloc[0]
        raise DataError(f"{source}: {int(twice.sum())} duplicate (datetime, instrument) row(s), first "
                        f"{first['datetime']:%Y-%m-%d} {first['instrument']}; keep one score per stock and day")
    return frame


def check_predictions(pred: pd.DataFrame | pd.Series, source: str = "predictions",
                      calendar: pd.DatetimeIndex | None = None) -> tuple[pd.DataFrame, list[str]]:
    """``prediction_frame(pred)`` and the warnings about it (also logged): more than ``NAN_SCORE_WARN`` of the
    scores NaN; days without any score (days in the file whose scores are all NaN and, with a ``calendar``,
    trading days between the first and last predicted day that the file lacks)."""
    frame = prediction_frame(pred, source)
    nan = ~np.isfinite(frame["score"].to_numpy("float64"))
    n = len(frame)
    warnings: list[str] = []
    if nan.mean() > NAN_SCORE_WARN:
        warnings.append(f"{source}: {nan.mean():.1%} of the scores ({int(nan.sum())} of {n}) are NaN or infinite "
                        f"(more than {NAN_SCORE_WARN:.0%}); the metrics cover only the rest. Check the run that "
                        "wrote them")
    scored = pd.DatetimeIndex(frame.loc[~nan, "datetime"].unique())
    days = pd.DatetimeIndex(frame["datetime"].unique())
    if calendar is not None:
        days = days.union(calendar[(calendar >= days.min()) & (calendar <= days.max())])
    unscored = days.difference(scored)
    if len(unscored):
        warnings.append(f"{source}: {len(unscored)} of {len(days)} days between {days.min():%Y-%m-%d} and "
                        f"{days.max():%Y-%m-%d} have no score ({listing([f'{d:%Y-%m-%d}' for d in unscored])}); "
                        "IC skips them and the backtest makes no trades on them")
    for message in warnings:
        log.warning("%s", message)
    return frame, warnings


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


def flat_metrics(signal: dict[str, float], report: pd.DataFrame | None,
                 trading_days: int = TRADING_DAYS) -> dict[str, float]:
    """Signal metrics plus the backtest's headline numbers under the names of the module docstring, annualised
    over ``trading_days`` a year (the evaluation block records it beside them)."""
    metrics = dict(signal)
    if report is not None:
        pm = portfolio_metrics(report, trading_days)
        with_cost, without = pm["excess_return_with_cost"], pm["excess_return_without_cost"]
        for key in ("annualized_return", "information_ratio", "max_drawdown"):
            metrics[key] = with_cost[key]
            metrics[f"{key}_without_cost"] = without[key]
        metrics["turnover"] = float(report["turnover"].mean())
    return metrics


def data_facts(panel: BarPanel | None, backtest: BacktestConfig) -> dict[str, object]:
    """What the report states about the bars and the trading rules, so a number is never read with the wrong
    market (annualisation days, limit, lot, costs)."""
    if panel is None:
        return {}
    members = panel.membership.sum(axis=0)
    limit = backtest.limit_threshold
    return {
        "bars": f"{panel.calendar[0]:%Y-%m-%d} .. {panel.calendar[-1]:%Y-%m-%d} ({len(panel.calendar)} days)",
        "universe": f"{len(panel.instruments)} instruments, {members.mean():.0f} members a day on average",
        "benchmark": panel.benchmark_name or "none (bench = 0)",
        "annualisation": f"{backtest.trading_days} trading days a year",
        "price limit": "none" if limit is None or math.isinf(limit) else f"|change| >= {limit:g}",
        "trade unit": f"{backtest.trade_unit} shares",
        "costs": f"open {backtest.open_cost:g}, close {backtest.close_cost:g}, min {backtest.min_cost:g}",
    }


def evaluate_predictions(pred: pd.DataFrame, panel: BarPanel | None, backtest: BacktestConfig | None,
                         out_dir: str | Path, *, title: str = "distgru evaluation",
                         source: str = "predictions", run: RunInfo | None = None) -> Evaluation:
    """Signal metrics, (with a panel) the backtest over the predictions' days, and every file of the module
    docstring except result.json, written into ``out_dir``. ``pred`` is checked first (``check_predictions``;
    ``source`` names it in messages)."""
    from distgru.evaluation.report import RunInfo, write_evaluation_report

    frame, _ = check_predictions(pred, source, None if panel is None else panel.calendar)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    pred_pkl, label_pkl = write_qlib_pickles(frame, out)
    files = {"pred_pkl": str(pred_pkl), "label_pkl": str(label_pkl)}
    report, window = None, None
    backtest = backtest or BacktestConfig()
    days = int(backtest.trading_days or TRADING_DAYS)
    if panel is not None:
        start, end = frame["datetime"].min(), frame["datetime"].max()
        result = run_backtest(frame[["datetime", "instrument", "score"]], panel, backtest, start, end)
        report = result.report
        window = (f"{report.index[0]:%Y-%m-%d}", f"{report.index[-1]:%Y-%m-%d}")
        report.join(excess_returns(report)).to_parquet(out / BACKTEST_PARQUET)
        files["backtest_report"] = str(out / BACKTEST_PARQUET)
    metrics = flat_metrics(signal_metrics(frame), report, days)
    shown = {k: v for k, v in metrics.items()
             if k not in BACKTEST_KEYS and not k.endswith("_without_cost")}
    nested = {f"{k} (annualised over {days} days)": v
              for k, v in portfolio_metrics(report, days).items()} if report is not None else {}
    write_evaluation_report(frame, report, {**shown, "turnover (mean daily)": metrics.get("turnover", math.nan),
                                            **nested} if report is not None else shown,
                            out / REPORT_HTML, title=title,
                            run=dataclasses.replace(run or RunInfo(),
                                                    facts={**((run and run.facts) or {}),
                                                           **data_facts(panel, backtest)}))
    files["report_html"] = str(out / REPORT_HTML)
    return Evaluation(metrics=metrics, report=report, files=files, window=window,
                      trading_days=days if report is not None else None)


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
    path = run_dir / RESULT_FILE
    data = json.loads(path.read_text()) if path.is_file() else {}
    data["evaluation"] = block
    return write_json(path, data)


def evaluate_run(run_dir: str | Path, *, out_dir: str | Path | None = None, cfg: Config | None = None,
                 panel: BarPanel | None = None) -> Evaluation:
    """Evaluate a run directory's predictions.parquet with the bars its config.yaml describes (or ``cfg``'s, or
    ``panel``) and its ``backtest`` settings.

    Files go to ``out_dir`` (default: the run directory). Written into the run directory, the metrics become
    the ``evaluation`` block of its result.json; elsewhere (or without a result.json) they go to
    evaluation.json."""
    run = Path(run_dir)
    cfg = cfg or read_config(run / CONFIG_FILE)
    pred = read_predictions(run / PREDICTIONS_FILE)
    prediction_frame(pred, str(run / PREDICTIONS_FILE))  # before the bars load, as in evaluate_path
    if panel is None:
        panel = load_panel(cfg.data)
    out = Path(out_dir) if out_dir is not None else run
    from distgru.evaluation.report import RunInfo

    info = RunInfo(history=RunDir(run).read_metrics(), metric=cfg.train.metric,
                   config_yaml=yaml.safe_dump(to_dict(cfg), sort_keys=False),
                   facts={"run": run.name, "market profile": cfg.market.profile})
    ev = evaluate_predictions(pred, panel, cfg.backtest, out, title=f"distgru evaluation: {run.name}",
                              source=str(run / PREDICTIONS_FILE), run=info)
    if out.resolve() == run.resolve() and (run / RESULT_FILE).is_file():
        ev.files["result_json"] = str(run / RESULT_FILE)
        _update_result(run, ev.block())
    else:
        ev.files["evaluation_json"] = str(out / EVALUATION_JSON)
        write_json(out / EVALUATION_JSON, ev.block())
    return ev


def evaluate_path(path: str | Path, *, provider: str | None = None, synthetic: bool = False,
                  data: str | None = None, benchmark: str | None = None, benchmark_data: str | None = None,
                  profile: str | None = None, out_dir: str | Path | None = None,
                  backtest: BacktestConfig | None = None) -> Evaluation:
    """``distgru evaluate``: a run directory (config.yaml + predictions.parquet), or a bare predictions Parquet
    with bars from a qlib ``provider`` directory, a long-format ``data`` file or the default ``synthetic`` market
    (none: signal metrics only); ``benchmark``/``benchmark_data`` as ``data.load.source_config``. A run
    directory's own config wins unless a source is given. ``profile`` (a market profile name) sets the backtest's
    trading rules: default a run's own market, else cn."""
    from distgru.data.load import source_config

    p = Path(path).expanduser()
    where = {"provider": provider, "data": data, "synthetic": synthetic, "benchmark": benchmark,
             "benchmark_data": benchmark_data}
    market = None if profile is None else MarketConfig(profile=profile)  # type: ignore[arg-type]
    if p.is_dir():
        if not (p / CONFIG_FILE).is_file():
            raise DataError(f"{p}: no {CONFIG_FILE}; is it a distgru run directory?")
        cfg = read_config(p / CONFIG_FILE)
        cfg = dataclasses.replace(cfg, data=source_config(**where, base=cfg.data))  # same universe, other bars
        if market is not None:  # the profile's rules, over the run's resolved ones
            cfg = dataclasses.replace(cfg, market=market, backtest=_with_market(cfg.backtest, market))
        if backtest is not None:
            cfg = dataclasses.replace(cfg, backtest=backtest)
        return evaluate_run(p, out_dir=out_dir, cfg=cfg)
    if not p.is_file():
        raise DataError(f"{p}: neither a run directory nor a predictions file")
    pred = read_predictions(p)
    prediction_frame(pred, str(p))  # before the bars load: a wrong file should not wait for the data
    bars = source_config(**where)
    panel = load_panel(bars) if bars is not None else None
    out = Path(out_dir) if out_dir is not None else p.parent
    if backtest is None and market is not None:
        backtest = _with_market(BacktestConfig(), market)
    ev = evaluate_predictions(pred, panel, backtest, out, title=f"distgru evaluation: {p.name}", source=str(p))
    write_json(out / EVALUATION_JSON, ev.block())
    ev.files["evaluation_json"] = str(out / EVALUATION_JSON)
    return ev


def _with_market(backtest: BacktestConfig, market: MarketConfig) -> BacktestConfig:
    """``backtest`` with ``market``'s trading rules (its strategy settings kept)."""
    return dataclasses.replace(backtest, **market.backtest_defaults())
