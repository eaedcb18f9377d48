"""Arguments that ``distgru train`` and ``distgru tune`` share, and the config overrides they stand for."""

from __future__ import annotations

import argparse


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
