"""The end of a training run: best weights saved, valid and test scored with them, result.json written."""

from __future__ import annotations

import time
from datetime import datetime

import numpy as np
import pandas as pd
import torch

from distgru.config import Config
from distgru.metrics import signal_metrics
from distgru.processing.panel import ProcessedPanel
from distgru.processing.processors import ProcessorState
from distgru.training import parallel as par
from distgru.training.checkpoint import save_best
from distgru.training.result import RunResult, collect_provenance
from distgru.training.rundir import RunDir
from distgru.training.scoring import prediction_frame, score_segment, segment_samples
from distgru.training.state import EpochRow, TrainState


def throughput(history: list[EpochRow]) -> float:
    """Samples/s over all epochs (harmonic mean: total samples over total train time)."""
    rates = [h["samples_per_s"] for h in history if (h.get("samples_per_s") or 0) > 0]
    return len(rates) / sum(1.0 / r for r in rates) if rates else float("nan")


def synthetic_expected(cfg: Config, panel: ProcessedPanel) -> np.ndarray | None:
    """The synthetic market's planted expected label return on the panel's [N, D] grid (None for real data)."""
    if cfg.data.source != "synthetic":
        return None
    from distgru.data.load import load_bars

    bars = load_bars(cfg.data)  # regenerated: bit-identical for the config, and it takes well under a second
    expected = np.asarray(bars.extras["expected_label_return"], dtype=np.float64)
    rows = pd.Index(bars.instruments).get_indexer(list(panel.instruments))
    cols = bars.calendar.get_indexer(panel.calendar)
    return expected[np.ix_(rows, cols)]


def oracle_ic(expected: np.ndarray, panel: ProcessedPanel, inst: np.ndarray, day: np.ndarray) -> float:
    """Mean daily Pearson IC of a planted expected label return [N, D] against the raw label on these samples."""
    return signal_metrics(prediction_frame(panel, inst, day, expected[inst, day]))["IC"]


def finish_run(cfg: Config, panel: ProcessedPanel, processor_state: ProcessorState, final: TrainState, run: RunDir,
               *, started: datetime, t0: float, train_wall_s: float) -> RunResult:
    """Write best/, score valid and test with the best weights, write predictions.parquet and result.json."""
    save_best(run.path, cfg, final, processor_state)
    device = par.pick_device(cfg.resources.use_gpu)
    if device.type == "cpu":
        # As many threads as a worker reserves: spare intra-op threads on busy cores spin, and scoring the
        # synthetic test segment took 36 s with 2 threads against 2 s with 1 on a loaded 2-core host.
        torch.set_num_threads(max(1, int(cfg.resources.cpus_per_worker)))
    frames = {seg: score_segment(cfg, panel, final.best_model, seg, device=device) for seg in ("valid", "test")}
    run.write_predictions(frames["test"])
    samples = segment_samples(panel)
    world = cfg.resources.num_workers
    expected = synthetic_expected(cfg, panel)
    result = RunResult(
        name=cfg.name, run_dir=str(run), started=started.isoformat(timespec="seconds"),
        finished=datetime.now().isoformat(timespec="seconds"), best_epoch=final.best_epoch,
        epochs=final.epoch, stopped_early=final.stopped_early, early_stop_metric=cfg.train.metric,
        best_score=final.best_score, valid=signal_metrics(frames["valid"]), test=signal_metrics(frames["test"]),
        oracle_ic=None if expected is None else oracle_ic(expected, panel, *samples["test"]),
        samples={k: len(v[0]) for k, v in samples.items()} | {"train_used": len(samples["train"][0]) // world * world},
        train_samples_per_s=throughput(final.history), train_wall_s=train_wall_s,
        wall_s=time.perf_counter() - t0, restarts=final.attempt,
        provenance=collect_provenance(cfg, panel, final.devices),
    )
    run.write_result(result)
    return result
