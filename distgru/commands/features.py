"""Write raw (unprocessed) Alpha158/Alpha360 features plus LABEL0 to a Parquet file, as qlib's D.features gives them.

    distgru features --provider ~/.qlib/qlib_data/cn_data --market csi300 --start 2014-06-01 --end 2016-12-31 \\
        --out f.parquet
    distgru features --provider DIR --instruments SH600000,SZ000001 --columns KLEN,ROC60 --out two.parquet
    distgru features --data bars.parquet --benchmark EQW --out f.parquet   # long-format Parquet/CSV bars
    distgru features --synthetic --out synthetic.parquet

Rows are indexed (datetime, instrument) and sorted; one float32 column per feature, named as qlib names it.
History before --start feeds the look-back windows and days after --end the label. A market keeps only its
members' rows (point-in-time spans); named instruments are not masked.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

from distgru.commands.common import add_source_arguments, source_from_args
from distgru.config import DataConfig, FeatureConfig
from distgru.data.load import load_bars
from distgru.data.panel import REQUIRED_FIELDS
from distgru.features import FEATURE_SETS, check_features, feature_frame, label_expression
from distgru.features.compute import referenced_fields
from distgru.processing.pipeline import features_for


def _csv(text: str) -> list[str]:
    return [part.strip() for part in text.split(",") if part.strip()]


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_source_arguments(parser, required=True, what="")
    parser.add_argument("--market", default="csi300", help="universe file instruments/<market>.txt, or 'all' "
                        "(default csi300)")
    parser.add_argument("--instruments", type=_csv, metavar="A,B", help="named symbols instead of the market "
                        "(not masked to membership)")
    parser.add_argument("--start", help="first day written (YYYY-MM-DD); earlier history still feeds look-backs")
    parser.add_argument("--end", help="last day written")
    parser.add_argument("--out", required=True, type=Path, help="output Parquet file")
    parser.add_argument("--features", default="alpha158", choices=sorted(FEATURE_SETS), help="feature set")
    parser.add_argument("--columns", type=_csv, metavar="A,B", help="keep only these features (native order)")
    parser.add_argument("--label", help="label expression (qlib syntax; default: the feature set's label)")
    parser.add_argument("--cache-dir", metavar="DIR", help="reuse/store computed features here (default: none)")


def run(args: argparse.Namespace) -> int:
    t0 = time.perf_counter()
    features = FeatureConfig(set=args.features, columns=args.columns, label=args.label)
    check_features(features)
    label = label_expression(features)
    # The benchmark index is no feature input: without --benchmark it is left out, so a provider without one works;
    # with it, a file's index rows are kept apart instead of becoming a stock.
    base = DataConfig(market=args.market, instruments=args.instruments, start=args.start, end=args.end,
                      benchmark=None)
    data = source_from_args(args, base)
    extra = tuple(sorted(referenced_fields(args.features, args.columns, label) - set(REQUIRED_FIELDS)))
    bars = load_bars(data, fields=extra)  # the whole history: look-back before --start, label days after --end
    # --start is qlib's query start: each expression's series begins at --start minus its look-back, as in
    # D.features, so values match qlib's to the bit (and the cache key includes it).
    if args.cache_dir:
        table = features_for(bars, args.features, args.columns, label, args.cache_dir, progress=True,
                             start=data.start, end=data.end)
        frame = table.to_frame(masked=True)
    else:  # nothing to store: each instrument is evaluated only up to its last wanted row
        frame = feature_frame(bars, args.features, args.columns, label, start=data.start, end=data.end,
                              progress=True)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    frame.to_parquet(args.out)
    print(f"wrote {len(frame):,} rows × {frame.shape[1]} columns ({frame.shape[1] - 1} features + "
          f"{frame.columns[-1]}) to {args.out} in {time.perf_counter() - t0:.1f} s")
    return 0
