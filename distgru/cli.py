"""``distgru`` command line: one sub-command per module in distgru/commands/.

    distgru features --provider ~/.qlib/qlib_data/cn_data --start 2014-06-01 --end 2016-12-31 --out f.parquet
    distgru train                                   # the embedded synthetic market, qlib's GRU settings
    distgru train configs/gru_alpha158.yaml --set data.provider=~/.qlib/qlib_data/cn_data --num-workers 2
    distgru predict --run runs/<run> --start 2026-05-01 --end 2026-05-08
    distgru evaluate runs/<run>
    distgru tune configs/tune_smoke.yaml
"""

from __future__ import annotations

import argparse
import importlib
import logging
import sys

from distgru.version import describe

COMMANDS = {
    "features": "write raw Alpha158/Alpha360 features + label to Parquet",
    "train": "train a model (Ray Train, 1..N workers) and evaluate it on the test segment",
    "predict": "score new dates with a trained run",
    "evaluate": "IC metrics, backtest and an HTML report for a run or a predictions file",
    "tune": "Ray Tune search over training configs",
}


class _Version(argparse.Action):
    """``--version``, worked out only when asked (it hashes the source and asks git)."""

    def __init__(self, option_strings: list[str], dest: str, help: str | None = None) -> None:
        super().__init__(option_strings, dest, nargs=0, default=argparse.SUPPRESS, help=help)

    def __call__(self, parser: argparse.ArgumentParser, *args: object) -> None:
        print(describe())
        parser.exit()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="distgru", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    parser.add_argument("--version", action=_Version,
                        help="the version and source digest (result.json's provenance.source_sha256)")
    sub = parser.add_subparsers(dest="command", required=True)
    argv = sys.argv[1:] if argv is None else argv
    # Only the chosen command's module is imported: train/tune pull in torch and Ray, which take seconds.
    chosen = next((a for a in argv if a in COMMANDS), None)
    module = None
    for name, help_text in COMMANDS.items():
        sub_parser = sub.add_parser(name, help=help_text, formatter_class=argparse.RawDescriptionHelpFormatter)
        if name == chosen:
            module = importlib.import_module(f"distgru.commands.{name}")
            sub_parser.description = module.__doc__
            module.add_arguments(sub_parser)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s", datefmt="%H:%M:%S")
    from distgru.config import ConfigError
    from distgru.data.panel import DataError

    try:
        return int(module.run(args) or 0)  # type: ignore[union-attr]
    except (ConfigError, DataError) as e:
        print(f"distgru {args.command}: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:  # outside a run's lifecycle (before it, or a second Ctrl-C racing the first)
        print(f"distgru {args.command}: interrupted; a run directory printed above keeps its checkpoints and its "
              "status.json names the command that resumes it", file=sys.stderr)
        return 130
    except Exception as e:
        from distgru.training.lifecycle import RunStopped

        if not isinstance(e, RunStopped):
            raise
        return e.exit_code  # its message is on stderr already


if __name__ == "__main__":
    sys.exit(main())
