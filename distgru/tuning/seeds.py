"""``distgru train --seeds 0,1,2`` / ``--repeat N``: one training run per seed as parallel Ray Tune trials, each
evaluated on the test segment (signal metrics + backtest), summarised as mean ± std as qlib's benchmark table.

The seeds run through THE Tune machinery of ``distgru tune``: the config gets a ``tune``
section whose space is ``train.seed: {grid: seeds}`` (search grid, one sample, FIFO scheduler: every trial runs
to its own early stop, none is terminated by the scheduler), so trial shapes (in-process or multi-worker),
resources, concurrency and retries are those of ``distgru tune``. The experiment directory::

    config.yaml                the experiment config (with its generated tune section)
    trial_<id>/                Tune's trial directories
    seed_<s>/                  config.yaml, predictions.parquet, pred.pkl, label.pkl, report.html,
                               backtest_report.parquet, evaluation.json of that seed's best weights
    seeds.csv, seeds.json      one row per seed, then ``mean`` and ``std`` rows; json also has the seeds

Aggregation (``aggregate``) is qlib's examples/run_all_model.py ``cal_mean_std``: the mean over seeds and the
sample standard deviation (``statistics.stdev``, ddof 1), std 0 for a single seed. NaN values (a metric a seed
could not compute) are skipped.
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from datetime import datetime
from pathlib import Path
from typing import Any

import pandas as pd

from distgru.config import Config, ConfigError, config_from_dict, to_dict
from distgru.evaluation.evaluate import TABLE_KEYS, evaluate_predictions, metric_table
from distgru.training.lifecycle import lifecycle
from distgru.training.rundir import CONFIG_FILE, RunDir, write_config, write_json
from distgru.training.scoring import score_segment
from distgru.tuning.records import trial_id, trial_params
from distgru.tuning.results import trial_configs
from distgru.tuning.runner import Data, prepare_data, run_experiment
from distgru.tuning.space import check_space, data_key
from distgru.tuning.trial import trial_state

SEEDS_CSV = "seeds.csv"
SEEDS_JSON = "seeds.json"
SEED_KEY = "train.seed"


def parse_seeds(seeds: str | None, repeat: int | None, base_seed: int) -> list[int]:
    """``"0,1,2"`` → [0, 1, 2]; ``repeat=N`` → base_seed .. base_seed + N − 1. Exactly one of the two."""
    if (seeds is None) == (repeat is None):
        raise ConfigError("give either --seeds LIST or --repeat N")
    if repeat is not None:
        if repeat < 1:
            raise ConfigError(f"--repeat: {repeat} must be >= 1")
        return list(range(base_seed, base_seed + repeat))
    try:
        out = [int(s) for s in str(seeds).split(",") if s.strip()]
    except ValueError:
        raise ConfigError(f"--seeds: {seeds!r} is not a comma-separated list of integers") from None
    if not out or len(set(out)) != len(out):
        raise ConfigError(f"--seeds: {seeds!r} must name at least one seed, each once")
    return out


def seed_config(cfg: Config, seeds: list[int]) -> Config:
    """``cfg`` with the tune section that runs one trial per seed (grid over train.seed, FIFO, no early
    termination by the scheduler)."""
    data = to_dict(cfg)
    data["tune"] = {"space": {SEED_KEY: {"grid": list(seeds)}}, "search": "grid", "num_samples": 1,
                    "metric": "valid_score", "scheduler": {"kind": "fifo"}}
    return config_from_dict(data)


def aggregate(per_seed: Mapping[Any, Mapping[str, float]]) -> pd.DataFrame:
    """Rows = seeds, then ``mean`` and ``std`` (sample std, 0 for one seed; NaN skipped); columns = metrics."""
    table = pd.DataFrame.from_dict({str(k): dict(v) for k, v in per_seed.items()}, orient="index")
    table = table.apply(pd.to_numeric, errors="coerce")
    mean = table.mean(skipna=True)
    std = table.std(ddof=1, skipna=True).where(table.count() > 1, 0.0)
    return pd.concat([table, mean.to_frame("mean").T, std.to_frame("std").T])


def mean_std_table(table: pd.DataFrame, keys: tuple[str, ...] = TABLE_KEYS) -> str:
    """``aggregate`` output as the terminal table: each seed, then ``mean ± std`` per metric."""
    seeds = [i for i in table.index if i not in ("mean", "std")]
    rows: dict[str, dict[str, Any]] = {f"seed {s}": table.loc[s].to_dict() for s in seeds}
    rows["mean ± std"] = {k: f"{table.loc['mean', k]:.4f}±{table.loc['std', k]:.4f}"
                          for k in keys if k in table.columns}
    return metric_table(rows, keys)


def write_seeds(exp_dir: str | Path, table: pd.DataFrame, seeds: list[int],
                errors: Mapping[int, str] | None = None) -> tuple[Path, Path]:
    exp = Path(exp_dir)
    table.rename_axis("seed").to_csv(exp / SEEDS_CSV)
    per_seed = {i: table.loc[i].to_dict() for i in table.index if i not in ("mean", "std")}
    payload = {"seeds": seeds, "per_seed": per_seed, "mean": table.loc["mean"].to_dict(),
               "std": table.loc["std"].to_dict(), "errors": {str(k): v for k, v in (errors or {}).items()}}
    write_json(exp / SEEDS_JSON, payload)
    return exp / SEEDS_CSV, exp / SEEDS_JSON


def seeds_of(cfg: Config) -> list[int]:
    """The seeds of a multi-seed experiment's config (its generated tune section)."""
    if cfg.tune is None or SEED_KEY not in cfg.tune.space:
        raise ConfigError(f"tune.space: no {SEED_KEY} grid; is this a multi-seed directory?")
    return [int(s) for s in cfg.tune.space[SEED_KEY]["grid"]]


def _evaluate_seeds(cfg: Config, tcfg: Config, grid: Any, data: Data, exp_dir: Path
                    ) -> tuple[dict[int, dict[str, float]], dict[int, str]]:
    """Each finished seed's test predictions and evaluation in ``exp_dir/seed_N``; its metrics, and the failed
    seeds' errors."""
    from distgru.data.load import load_bars

    bars = load_bars(cfg.data)
    per_seed: dict[int, dict[str, float]] = {}
    errors: dict[int, str] = {}
    cfgs = trial_configs(tcfg, trial_params(grid))
    for result in grid:
        seed = int(result.config[SEED_KEY])
        if result.error is not None:
            errors[seed] = str(result.error).strip().splitlines()[-1]
            continue
        scfg = cfgs[trial_id(result)]
        panel, _ = data[data_key(scfg)]
        pred = score_segment(scfg, panel, trial_state(result.path, result.checkpoint).best_model, "test")
        seed_dir = RunDir(exp_dir / f"seed_{seed}")
        seed_dir.path.mkdir(exist_ok=True)
        write_config(seed_dir / CONFIG_FILE, scfg)
        seed_dir.write_predictions(pred)
        ev = evaluate_predictions(pred, bars, scfg.backtest, seed_dir.path, title=f"distgru evaluation: seed {seed}")
        write_json(seed_dir / "evaluation.json", ev.block())
        per_seed[seed] = ev.metrics
    return per_seed, errors


def run_seeds(cfg: Config, seeds: list[int], *, verbose: bool = False, resume: RunDir | None = None) -> int:
    """Train every seed as a Tune trial (or continue the experiment ``resume``), evaluate each on the test
    segment, print and write the table. An interrupted experiment ends with ``RunStopped``, before any scoring."""
    from distgru.training.ray_train import ray_session

    t0 = time.perf_counter()
    tcfg = seed_config(cfg, seeds)
    probes = check_space(tcfg)
    data = prepare_data(tcfg, probes)
    exp = resume or RunDir.create(tcfg, datetime.now())
    exp_dir = exp.path
    print(f"multi-seed directory: {exp_dir} (seeds {', '.join(map(str, seeds))})", flush=True)
    with ray_session(cfg.resources, verbose=verbose):
        with lifecycle(exp, "seeds"):
            grid = run_experiment(tcfg, data, exp_dir, restore=resume is not None, verbose=1 if verbose else 0,
                                  epoch_lines=True)
        # Scored inside the session: the panels in ``data`` are now the object store's views.
        per_seed, errors = _evaluate_seeds(cfg, tcfg, grid, data, exp_dir)
    if not per_seed:
        raise RuntimeError(f"every seed failed ({exp_dir}): " + "; ".join(f"{k}: {v}" for k, v in errors.items()))
    table = aggregate(dict(sorted(per_seed.items())))
    write_seeds(exp_dir, table, seeds, errors)
    print(mean_std_table(table))
    for seed, err in errors.items():
        print(f"seed {seed} failed: {err}")
    print(f"{len(per_seed)} of {len(seeds)} seeds finished (the table counts only those) in "
          f"{time.perf_counter() - t0:.0f} s; multi-seed directory: "
          f"{exp_dir} ({SEEDS_CSV}, {SEEDS_JSON}, seed_*/report.html)")
    return 0 if not errors else 1
