"""Arguments that ``distgru train`` and ``distgru tune`` share, and the config overrides they stand for."""

from __future__ import annotations

import argparse
from typing import Any


def add_config_arguments(parser: argparse.ArgumentParser, config_help: str) -> None:
    parser.add_argument("config", nargs="?", help=config_help)
    parser.add_argument("--set", action="extend", nargs="+", default=[], metavar="KEY=VALUE",
                        help="override config keys, e.g. --set train.lr=1e-3 dataset.step_len=5 (repeatable)")
    parser.add_argument("--output", metavar="DIR", help="parent of the run/experiment directory (output_dir)")
    parser.add_argument("--address", help="Ray cluster address (resources.address); default: RAY_ADDRESS, "
                        "else a local Ray")


def config_overrides(args: argparse.Namespace) -> list[str]:
    """``--set`` first, then the shortcut flags, so a flag wins over the same key in ``--set``."""
    out = list(args.set)
    if args.output:
        out.append(f"output_dir={args.output}")
    if args.address:
        out.append(f"resources.address={args.address}")
    return out


def add_source_arguments(parser: argparse.ArgumentParser, *, required: bool, what: str) -> None:
    """The bar source options every data-reading command shares (``data.load.source_config`` resolves them);
    ``what`` says what the source replaces when none is given."""
    source = parser.add_mutually_exclusive_group(required=required)
    source.add_argument("--provider", metavar="DIR", help=f"qlib provider directory for the bars{what}")
    source.add_argument("--data", metavar="FILE", help="long-format bars, .parquet or .csv (datetime, instrument, "
                        f"open, high, low, close, volume[, factor, vwap, change]){what}")
    source.add_argument("--synthetic", action="store_true", help="the embedded synthetic market")
    parser.add_argument("--benchmark", metavar="SYMBOL", help="benchmark index symbol: its rows are the index, not "
                        "a stock (default: a run's own; for a provider the market profile's; for a file none)")
    parser.add_argument("--benchmark-data", metavar="FILE", help="long-format file holding the benchmark's rows "
                        "(datetime, instrument, close) when the bars' source lacks them")


def source_from_args(args: argparse.Namespace, base: Any = None) -> Any:
    """``args``' bar source as a ``DataConfig`` over ``base`` (a run's), or ``base`` when none is given."""
    from distgru.data.load import source_config

    return source_config(provider=args.provider, data=args.data, synthetic=args.synthetic,
                         benchmark=args.benchmark, benchmark_data=args.benchmark_data, base=base)
