"""Ray Tune search over training configs: each trial is a ``distgru train`` run, reported every epoch.

    distgru tune configs/tune_smoke.yaml                         # minutes, on the synthetic market
    distgru tune configs/tune_gru_alpha158.yaml --set data.provider=~/.qlib/qlib_data/cn_data --address auto
    distgru tune --resume runs/tune_smoke-20261127-101500         # continue an interrupted search
    distgru tune --table runs/tune_smoke-20261127-101500          # its trials so far; runs nothing

Ctrl-C pauses the trials and saves the experiment (a second Ctrl-C exits at once); status.json says
``interrupted`` and the terminal names the resume command. A stopped search writes results.csv/.parquet with its
trials so far (those it had not ended read UNFINISHED, their best value not final) and prints them; the best
config, weights and report wait for the search to finish. ``--table`` prints any experiment's trial table —
finished, stopped, killed or still running in another terminal — from what Tune saved.

CONFIG is a training config with a ``tune:`` section (space, metric, scheduler, search, resources; see
configs/tune_smoke.yaml). The space is checked against the config before anything runs; the processed panel is
prepared once per distinct data config and shared through the object store. The experiment directory
``<output_dir>/<name>-<timestamp>/`` holds one Tune trial directory per trial (TensorBoard events included:
``tensorboard --logdir DIR``), results.csv/.parquet, best_config.yaml, best/, predictions.parquet (the best
trial's test segment), tune_result.json and report.html.
"""

from __future__ import annotations

import argparse
import time
from datetime import datetime
from pathlib import Path

import pandas as pd

from distgru.commands.common import add_config_arguments, config_overrides
from distgru.config import Config, ConfigError, config_from_dict
from distgru.config.loader import read_yaml
from distgru.evaluation.report import format_table
from distgru.training.rundir import CONFIG_FILE, RunDir


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_config_arguments(parser, "training config with a tune: section (not with --resume)")
    parser.add_argument("--num-samples", type=int, help="trials to sample (tune.num_samples)")
    parser.add_argument("--no-test", action="store_true", help="never score the test segment (tune.score_test: "
                        "false): a search whose choice must not see it")
    parser.add_argument("--resume", metavar="DIR", help="continue the experiment in DIR: finished trials are "
                        "kept, unfinished ones resume from their last checkpoint, errored ones restart")
    parser.add_argument("--table", metavar="DIR", help="print the trial table of the experiment in DIR (an "
                        "unfinished one's results.csv is rewritten with its trials so far); runs nothing")


def _overrides(args: argparse.Namespace) -> list[str]:
    out = config_overrides(args)
    if args.num_samples is not None:
        out.append(f"tune.num_samples={args.num_samples}")
    if args.no_test:
        out.append("tune.score_test=false")
    return out


def _experiment(option: str, path: str, args: argparse.Namespace) -> tuple[Path, Config]:
    if args.config or args.set or args.num_samples is not None or args.output:
        raise ConfigError(f"{option}: takes the experiment as configured (its config.yaml); give no CONFIG, "
                          "--set, --num-samples or --output with it")
    exp_dir = Path(path).expanduser().resolve()
    if not (exp_dir / CONFIG_FILE).is_file():
        raise ConfigError(f"{option}: {exp_dir / CONFIG_FILE} not found; is {exp_dir} a distgru tune "
                          "experiment directory?")
    return exp_dir, config_from_dict(read_yaml(exp_dir / CONFIG_FILE), _overrides(args), need_tune=True)


def _print_trials(table: pd.DataFrame) -> None:
    print(format_table(table.drop(columns=["trial_dir"]), floatfmt=".4g"))


def _table(args: argparse.Namespace) -> int:
    from distgru.tuning.results import RESULTS_PARQUET, unfinished_table

    exp_dir, cfg = _experiment("--table", args.table, args)
    state = (RunDir(exp_dir).read_status() or {}).get("state", "unknown")
    finished = state == "finished" and (exp_dir / RESULTS_PARQUET).is_file()
    _print_trials(pd.read_parquet(exp_dir / RESULTS_PARQUET) if finished else unfinished_table(cfg, exp_dir))
    print(f"experiment {exp_dir}: {state}")
    return 0


def run(args: argparse.Namespace) -> int:
    from distgru.training.lifecycle import RunInterrupted, lifecycle
    from distgru.training.ray_train import ray_session
    from distgru.tuning.results import RESULTS_PARQUET, finish_experiment, unfinished_table
    from distgru.tuning.runner import check_search_package, prepare_data, run_experiment
    from distgru.tuning.space import check_space

    if args.table:
        if args.resume:
            raise ConfigError("--table: runs nothing; give it without --resume")
        return _table(args)
    t0 = time.perf_counter()
    if args.resume:
        exp_dir, cfg = _experiment("--resume", args.resume, args)
    else:
        if not args.config:
            raise ConfigError("CONFIG: give a training config with a tune: section (or --resume DIR)")
        cfg = config_from_dict(read_yaml(args.config), _overrides(args), need_tune=True)
    # Every check that needs no Ray runs before data is prepared or Ray starts.
    probes = check_space(cfg)
    check_search_package(cfg)
    data = prepare_data(cfg, probes)
    if not args.resume:
        exp_dir = RunDir.create(cfg, datetime.now()).path  # config.yaml: the full tune config, for --resume
    print(f"experiment directory: {exp_dir}", flush=True)
    with ray_session(cfg.resources, verbose=getattr(args, "verbose", False)), lifecycle(RunDir(exp_dir), "tune"):
        try:
            grid = run_experiment(cfg, data, exp_dir, restore=bool(args.resume))
        except RunInterrupted:
            _print_trials(unfinished_table(cfg, exp_dir))  # what the search has so far, above the resume command
            raise
        summary = finish_experiment(cfg, grid, data, exp_dir, t0=t0)
    _print_trials(pd.read_parquet(exp_dir / RESULTS_PARQUET))
    metric = summary["metric"]
    test = summary["test"]
    scored = (f"test IC {test.get('IC', float('nan')):+.4f}, RankIC {test.get('RankIC', float('nan')):+.4f}"
              if test is not None else "test segment not scored")
    print(f"best trial {summary['best_trial']}: valid {metric} {summary[f'best_{metric}']:+.4f} at epoch "
          f"{summary['best_epoch']}; {scored}; {time.perf_counter() - t0:.0f} s")
    print(f"experiment directory: {exp_dir}  (report.html; tensorboard --logdir {exp_dir})")
    return 0
