"""Score new dates with a trained run: its saved processor state and best weights, no refit.

    distgru predict --run runs/<run> --start 2026-05-01 --end 2026-05-08
    distgru predict --run runs/<run> --start 2026-05-01 --end 2026-05-08 --provider ~/.qlib/qlib_data/cn_data \\
        --out scores.parquet
    distgru predict --run runs/<run> --start 2026-05-01 --end 2026-05-08 --data us_bars.parquet --benchmark EQW

Features are computed from the run's data source (or ``--provider``/``--data``) exactly as in training, including the
``step_len`` days before ``--start`` that the first windows need. The Parquet file has one row per universe member
and day: datetime, instrument, score, label (the raw label, NaN where the future is not known yet), sorted by
(datetime, instrument). Default output: ``<run>/predictions_<start>_<end>.parquet``.
"""

from __future__ import annotations

import argparse
import dataclasses
import time
from pathlib import Path

from distgru.commands.common import add_source_arguments, source_from_args
from distgru.config import ConfigError
from distgru.training import parallel as par
from distgru.training.checkpoint import load_best
from distgru.training.rundir import write_predictions
from distgru.training.scoring import score_segment


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--run", required=True, type=Path, metavar="DIR", help="a run directory of distgru train")
    parser.add_argument("--start", required=True, help="first day to score (YYYY-MM-DD)")
    parser.add_argument("--end", required=True, help="last day to score")
    add_source_arguments(parser, required=False, what=" with the new bars (default: the run's data source)")
    parser.add_argument("--out", type=Path, metavar="FILE", help="output Parquet file")
    parser.add_argument("--batch-size", type=int, default=4096, help="samples per forward pass")


def run(args: argparse.Namespace) -> int:
    from distgru.processing.pipeline import prepare_inference

    t0 = time.perf_counter()
    try:
        best = load_best(args.run)
    except FileNotFoundError as e:
        raise ConfigError(f"--run: {e}") from None
    cfg = best.cfg
    cfg = dataclasses.replace(cfg, data=source_from_args(args, cfg.data))
    panel = prepare_inference(best.processor_state, cfg, args.start, args.end)
    frame = score_segment(cfg, panel, best.model, "test", device=par.pick_device(), batch_size=args.batch_size)
    if frame.empty:
        raise ConfigError(f"--start/--end: no universe member has a bar in {args.start} .. {args.end}")
    out = args.out or args.run / f"predictions_{args.start}_{args.end}.parquet"
    write_predictions(out, frame)
    print(f"wrote {len(frame)} scores ({frame['datetime'].nunique()} days, {frame['instrument'].nunique()} "
          f"instruments) to {out} in {time.perf_counter() - t0:.1f} s")
    return 0
