"""Train a model with Ray Train (1..N DDP workers), then score the valid and test segments.

    distgru train                                          # the embedded synthetic market, qlib's GRU settings
    distgru train configs/gru_alpha158.yaml --set data.provider=~/.qlib/qlib_data/cn_data --num-workers 4 --gpu
    distgru train cfg.yaml --address ray://head:10001      # attach to a cluster (or export RAY_ADDRESS)
    ray job submit --working-dir . -- distgru train cfg.yaml --output /mnt/cluster_storage/runs

    distgru train --resume runs/<run>                    # continue an interrupted or failed run

Ctrl-C stops a run (a second one exits at once): status.json says ``interrupted`` and the terminal names the
resume command; nothing is scored or evaluated for a run that did not finish.

Without an address a local Ray starts (and stops at the end). The run directory
``<output_dir>/<name>-<timestamp>/`` gets config.yaml, metrics.jsonl, the Ray Train checkpoints, best/ (what
``distgru predict`` loads), predictions.parquet (test segment) and result.json; its path is printed first and last.
The test segment is then evaluated as ``distgru evaluate`` does (backtest, report.html, pred.pkl/label.pkl, and
result.json's ``evaluation`` block). ``--seeds 0,1,2`` / ``--repeat N`` train one run per seed as parallel Ray Tune
trials and print mean ± std of every metric (distgru/tuning/seeds.py).
"""

from __future__ import annotations

import argparse
from pathlib import Path

from distgru.commands.common import add_config_arguments, config_overrides
from distgru.config import Config, ConfigError, load_config
from distgru.training.result import RunResult
from distgru.training.rundir import RunDir

TABLE_COLUMNS = ("IC", "ICIR", "RankIC", "RankICIR", "long_short", "hit_rate")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_config_arguments(parser, "YAML config (default: the synthetic market, qlib GRU settings)")
    parser.add_argument("--num-workers", type=int, help="DDP workers (resources.num_workers)")
    parser.add_argument("--gpu", action="store_true", help="one GPU per worker (resources.use_gpu)")
    seeds = parser.add_mutually_exclusive_group()
    seeds.add_argument("--seeds", metavar="LIST", help="train one run per seed (e.g. 0,1,2) as parallel Ray Tune "
                       "trials and report mean ± std of every test metric")
    seeds.add_argument("--repeat", type=int, metavar="N", help="as --seeds with train.seed .. train.seed+N-1")
    parser.add_argument("--resume", metavar="DIR", help="continue an interrupted or failed run (or --seeds) "
                        "directory from its last checkpoint, with its own config")


def overrides(args: argparse.Namespace) -> list[str]:
    """``--set``, then the shortcut flags: later ones win (no CONFIG: the synthetic_default() preset)."""
    out = config_overrides(args)
    if args.num_workers is not None:
        out.append(f"resources.num_workers={args.num_workers}")
    if args.gpu:
        out.append("resources.use_gpu=true")
    return out


def run(args: argparse.Namespace) -> int:
    from distgru.training.run import train

    verbose = getattr(args, "verbose", False)
    if args.resume:
        return _resume(args, verbose)
    cfg = load_config(args.config, overrides(args))
    if args.seeds is not None or args.repeat is not None:
        from distgru.tuning.seeds import parse_seeds, run_seeds

        return run_seeds(cfg, parse_seeds(args.seeds, args.repeat, cfg.train.seed), verbose=verbose)
    run, result = train(cfg, verbose=verbose)
    print(metric_table(result))
    rc = _evaluate(cfg, run)
    print(f"run directory: {run}")
    return rc


def _resume(args: argparse.Namespace, verbose: bool) -> int:
    """``--resume DIR``: a run or multi-seed directory continues with its own config from its last checkpoint."""
    from distgru.training.run import train

    if args.config or args.set or args.seeds or args.repeat or args.output or args.num_workers or args.gpu:
        raise ConfigError("--resume: continues the run as configured (its config.yaml); give no CONFIG, --set, "
                          "--seeds, --repeat, --output, --num-workers or --gpu with it")
    run = RunDir(Path(args.resume).expanduser().resolve())
    status = run.read_status()
    if status is None or not run.config.is_file():
        raise ConfigError(f"--resume: {run} has no status.json/config.yaml; is it a distgru run directory?")
    if status["state"] == "finished":
        raise ConfigError(f"--resume: {run} finished already ({status['updated']}); its results are in it")
    cfg = run.read_config()
    if status["kind"] == "seeds":
        from distgru.tuning.seeds import run_seeds, seeds_of

        return run_seeds(cfg, seeds_of(cfg), verbose=verbose, resume=run)
    run, result = train(cfg, run=run, verbose=verbose)
    print(metric_table(result))
    rc = _evaluate(cfg, run)
    print(f"run directory: {run}")
    return rc


def _evaluate(cfg: Config, run: RunDir) -> int:
    """``distgru evaluate`` on the new run (test segment); a failure leaves the trained run intact."""
    from distgru.evaluation.evaluate import BACKTEST_KEYS, evaluate_run
    from distgru.evaluation.evaluate import metric_table as evaluation_table

    try:
        ev = evaluate_run(run.path, cfg=cfg)
    except Exception as e:  # the run is trained and saved: say how to retry rather than lose it
        print(f"evaluation failed ({type(e).__name__}: {e}); retry with: distgru evaluate {run}")
        return 1
    print(evaluation_table({"test": ev.metrics}, BACKTEST_KEYS)
          + f"\nbacktest {ev.window[0]} .. {ev.window[1]} (excess return with cost, annualised over "
            f"{ev.trading_days} trading days a year); report: {ev.files['report_html']}")
    return 0


def metric_table(result: RunResult) -> str:
    """The signal metrics of valid and test as a fixed-width table, plus the run's headline numbers."""
    lines = [f"{'segment':<8}" + "".join(f"{c:>12}" for c in TABLE_COLUMNS)]
    for seg in ("valid", "test"):
        metrics = getattr(result, seg)
        lines.append(f"{seg:<8}" + "".join(f"{metrics.get(c, float('nan')):>12.4f}" for c in TABLE_COLUMNS))
    if result.oracle_ic is not None:
        lines.append(f"oracle IC on test (the planted signal, the ceiling): {result.oracle_ic:.4f}")
    how = "early stop" if result.stopped_early else "epoch limit"
    lines.append(f"best epoch {result.best_epoch} of {result.epochs} ({how}; {result.early_stop_metric} "
                 f"{result.best_score:+.5f}); {result.train_samples_per_s:,.0f} train samples/s; "
                 f"fit {result.train_wall_s:.0f} s, total {result.wall_s:.0f} s"
                 + (f"; {result.restarts} worker restart(s)" if result.restarts else ""))
    return "\n".join(lines)
