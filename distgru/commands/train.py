"""Train a model with Ray Train (1..N DDP workers), then score the valid and test segments.

    distgru train                                          # the embedded synthetic market, qlib's GRU settings
    distgru train configs/gru_alpha158.yaml --set data.provider=~/.qlib/qlib_data/cn_data --num-workers 4 --gpu
    distgru train cfg.yaml --address ray://head:10001      # attach to a cluster (or export RAY_ADDRESS)
    ray job submit --working-dir . -- distgru train cfg.yaml --output /mnt/cluster_storage/runs

Without an address a local Ray starts (and stops at the end). The run directory
``<output_dir>/<name>-<timestamp>/`` gets config.yaml, metrics.jsonl, the Ray Train checkpoints, best/ (what
``distgru predict`` loads), predictions.parquet (test segment) and result.json; its path is printed first and last.
The test segment is then evaluated as ``distgru evaluate`` does (backtest, report.html, pred.pkl/label.pkl, and
result.json's ``evaluation`` block). ``--seeds 0,1,2`` / ``--repeat N`` train one run per seed as parallel Ray Tune
trials and print mean ± std of every metric (distgru/evaluation/multiseed.py).
"""

from __future__ import annotations

import argparse
import time
from datetime import datetime
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from distgru.commands.common import add_config_arguments, config_overrides
from distgru.config import Config, load_config
from distgru.evaluation.metrics import signal_metrics
from distgru.features.table import ProcessedPanel
from distgru.models import build_model
from distgru.training.loop import predict, window_len
from distgru.training.ray_train import (
    TrainOutcome,
    check_data,
    preflight,
    ray_session,
    run_training,
    segment_samples,
)
from distgru.training.rundir import (
    PREDICTIONS_FILE,
    RunResult,
    collect_provenance,
    create_run_dir,
    oracle_ic,
    prediction_frame,
    write_predictions,
    write_result,
)

TABLE_COLUMNS = ("IC", "ICIR", "RankIC", "RankICIR", "long_short", "hit_rate")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_config_arguments(parser, "YAML config (default: the synthetic market, qlib GRU settings)")
    parser.add_argument("--num-workers", type=int, help="DDP workers (resources.num_workers)")
    parser.add_argument("--gpu", action="store_true", help="one GPU per worker (resources.use_gpu)")
    seeds = parser.add_mutually_exclusive_group()
    seeds.add_argument("--seeds", metavar="LIST", help="train one run per seed (e.g. 0,1,2) as parallel Ray Tune "
                       "trials and report mean ± std of every test metric")
    seeds.add_argument("--repeat", type=int, metavar="N", help="as --seeds with train.seed .. train.seed+N-1")


def overrides(args: argparse.Namespace) -> list[str]:
    """``--set``, then the shortcut flags: later ones win (no CONFIG: the synthetic_default() preset)."""
    out = config_overrides(args)
    if args.num_workers is not None:
        out.append(f"resources.num_workers={args.num_workers}")
    if args.gpu:
        out.append("resources.use_gpu=true")
    return out


def run(args: argparse.Namespace) -> int:
    from distgru.processing.pipeline import prepare_panel

    t0, started = time.perf_counter(), datetime.now()
    cfg = load_config(args.config, overrides(args))
    if getattr(args, "seeds", None) is not None or getattr(args, "repeat", None) is not None:
        from distgru.evaluation.multiseed import parse_seeds, run_seeds

        seeds = parse_seeds(args.seeds, args.repeat, cfg.train.seed)
        return run_seeds(cfg, seeds, verbose=getattr(args, "verbose", False))
    panel, state = prepare_panel(cfg)
    check_data(cfg, panel)  # fail on the data before Ray starts
    with ray_session(cfg.resources, verbose=getattr(args, "verbose", False)):
        preflight(cfg, panel)  # and on resources before a run directory exists
        run_dir = create_run_dir(cfg, started)
        print(f"run directory: {run_dir}", flush=True)
        outcome = run_training(cfg, panel, state, run_dir)
    result = finish_run(cfg, panel, outcome, run_dir, started=started, t0=t0)
    print(metric_table(result))
    rc = _evaluate(cfg, run_dir)
    print(f"run directory: {run_dir}")
    return rc


def _evaluate(cfg: Config, run_dir: Path) -> int:
    """``distgru evaluate`` on the new run (test segment); a failure leaves the trained run intact."""
    from distgru.evaluation.evaluate import BACKTEST_KEYS, evaluate_run
    from distgru.evaluation.evaluate import metric_table as evaluation_table

    try:
        ev = evaluate_run(run_dir, cfg=cfg)
    except Exception as e:  # the run is trained and saved: say how to retry rather than lose it
        print(f"evaluation failed ({type(e).__name__}: {e}); retry with: distgru evaluate {run_dir}")
        return 1
    print(evaluation_table({"test": ev.metrics}, BACKTEST_KEYS)
          + f"\nbacktest {ev.window[0]} .. {ev.window[1]} (excess return with cost); report: {ev.files['report_html']}")
    return 0


def _synthetic_expected(cfg: Config, panel: ProcessedPanel) -> np.ndarray | None:
    """The synthetic market's planted expected label return on the panel's [N, D] grid (None for real data)."""
    if cfg.data.source != "synthetic":
        return None
    from distgru.data.load import load_bars

    bars = load_bars(cfg.data)  # regenerated: bit-identical for the config, and it takes well under a second
    expected = np.asarray(bars.extras["expected_label_return"], dtype=np.float64)
    rows = pd.Index(bars.instruments).get_indexer(list(panel.instruments))
    cols = bars.calendar.get_indexer(panel.calendar)
    return expected[np.ix_(rows, cols)]


def finish_run(cfg: Config, panel: ProcessedPanel, outcome: TrainOutcome, run_dir: str | Path, *,
               started: datetime, t0: float) -> RunResult:
    """Score valid and test with the best weights, write predictions.parquet and result.json."""
    samples = segment_samples(panel)
    device = torch.device("cuda" if cfg.resources.use_gpu and torch.cuda.is_available() else "cpu")
    if device.type == "cpu":
        # As many threads as a worker reserves: spare intra-op threads on busy cores spin, and scoring the
        # synthetic test segment took 36 s with 2 threads against 2 s with 1 on a loaded 2-core host.
        torch.set_num_threads(max(1, int(cfg.resources.cpus_per_worker)))
    model = build_model(cfg.model, window_len(cfg))
    model.load_state_dict(outcome.best_state)
    frames = {}
    for seg in ("valid", "test"):
        inst, day = samples[seg]
        score = predict(model, panel, inst, day, window_len(cfg), cfg.train.batch_size, device,
                    cfg.resources.panel_on_device)
        frames[seg] = prediction_frame(panel, inst, day, score)
    write_predictions(Path(run_dir) / PREDICTIONS_FILE, frames["test"])
    expected = _synthetic_expected(cfg, panel)
    result = RunResult(
        name=cfg.name, run_dir=str(run_dir), started=started.isoformat(timespec="seconds"),
        finished=datetime.now().isoformat(timespec="seconds"), best_epoch=outcome.best_epoch,
        epochs=outcome.epochs_run, stopped_early=outcome.stopped_early, early_stop_metric=cfg.train.metric,
        best_score=outcome.best_score, valid=signal_metrics(frames["valid"]), test=signal_metrics(frames["test"]),
        oracle_ic=None if expected is None else oracle_ic(expected, panel, *samples["test"]),
        samples=outcome.samples, train_samples_per_s=outcome.train_samples_per_s,
        train_wall_s=outcome.train_wall_s, wall_s=time.perf_counter() - t0, restarts=outcome.restarts,
        provenance=collect_provenance(cfg, panel, outcome.devices),
    )
    write_result(run_dir, result)
    return result


def metric_table(result: RunResult) -> str:
    """The signal metrics of valid and test as a fixed-width table, plus the run's headline numbers."""
    lines = [f"{'segment':<8}" + "".join(f"{c:>12}" for c in TABLE_COLUMNS)]
    for seg in ("valid", "test"):
        metrics = getattr(result, seg)
        lines.append(f"{seg:<8}" + "".join(f"{metrics.get(c, float('nan')):>12.4f}" for c in TABLE_COLUMNS))
    if result.oracle_ic is not None:
        lines.append(f"oracle IC on test (the planted signal, the ceiling): {result.oracle_ic:.4f}")
    how = "early stop" if result.stopped_early else "epoch limit"
    lines.append(f"best epoch {result.best_epoch + 1} of {result.epochs} ({how}; {result.early_stop_metric} "
                 f"{result.best_score:+.5f}); {result.train_samples_per_s:,.0f} train samples/s; "
                 f"fit {result.train_wall_s:.0f} s, total {result.wall_s:.0f} s"
                 + (f"; {result.restarts} worker restart(s)" if result.restarts else ""))
    return "\n".join(lines)
