"""Evaluate test predictions: qlib's signal metrics, the TopK-Dropout backtest, report.html and qlib's pickles.

    distgru evaluate runs/<run>                                 # bars from the run's config.yaml
    distgru evaluate preds.parquet --provider ~/.qlib/qlib_data/cn_data --out eval/
    distgru evaluate preds.parquet --data us.parquet --benchmark EQW --profile us
    distgru evaluate preds.parquet --synthetic                  # bars: the default synthetic market
    distgru evaluate preds.parquet                              # no bars: signal metrics only

RUN_DIR_OR_PREDICTIONS is a run directory (config.yaml + predictions.parquet) or a Parquet file with columns
datetime, instrument, score, label (raw label). Prints the metric table (IC, ICIR, RankIC, RankICIR, long-short,
hit rate; the backtest's annualised excess return with cost, information ratio, max drawdown, turnover) and
writes report.html, backtest_report.parquet, pred.pkl and label.pkl (qlib's form) to --out (default: the run
directory, whose result.json gains an ``evaluation`` block; beside a bare file: evaluation.json).

The predictions are checked before anything is computed: a missing column, every score NaN or duplicate rows are
an error (exit 2); more than 5 % of the scores NaN, or days without any score, are a warning on stderr.
"""

from __future__ import annotations

import argparse

from distgru.commands.common import add_source_arguments
from distgru.config.market import PROFILES


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("path", metavar="RUN_DIR_OR_PREDICTIONS", help="run directory or predictions Parquet")
    add_source_arguments(parser, required=False, what=" (overrides a run directory's data config)")
    parser.add_argument("--profile", choices=sorted(PROFILES), help="market profile of the backtest (trading "
                        "days, price limit, lot, costs; default: a run's own market, else cn)")
    parser.add_argument("--out", metavar="DIR", help="where the files go (default: the run directory, or the "
                        "predictions file's directory)")


def run(args: argparse.Namespace) -> int:
    from distgru.evaluation.evaluate import evaluate_path, metric_table

    ev = evaluate_path(args.path, provider=args.provider, synthetic=args.synthetic, data=args.data,
                       benchmark=args.benchmark, benchmark_data=args.benchmark_data, profile=args.profile,
                       out_dir=args.out)
    print(metric_table({"test": ev.metrics}))
    if ev.window:
        print(f"backtest {ev.window[0]} .. {ev.window[1]}: TopK-Dropout, excess return with cost over the "
              f"benchmark, annualised over {ev.trading_days} trading days a year (market.trading_days)")
    print(f"report: {ev.files['report_html']}")
    return 0
