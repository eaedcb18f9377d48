"""``distgru train``'s work: data, checks, Ray Train into a run directory (new or resumed), best weights scored."""

from __future__ import annotations

import time
from datetime import datetime

from distgru.config import Config
from distgru.processing.checks import log_warnings
from distgru.training.finish import finish_run
from distgru.training.lifecycle import RunInterrupted, lifecycle
from distgru.training.preflight import check_data, preflight
from distgru.training.ray_train import ray_session, run_training, shared_panel
from distgru.training.result import RunResult
from distgru.training.rundir import RunDir


def train(cfg: Config, *, run: RunDir | None = None, verbose: bool = False) -> tuple[RunDir, RunResult]:
    """Train ``cfg`` into a new run directory, or continue ``run`` from its last checkpoint (same config), then
    score valid and test with the best weights. Stopping or failing ends with ``RunStopped`` (lifecycle.py)."""
    from distgru.processing.pipeline import prepare_panel

    t0, started = time.perf_counter(), datetime.now()
    panel, processor_state = prepare_panel(cfg)
    log_warnings(check_data(cfg, panel))  # fail on the data before Ray starts
    with ray_session(cfg.resources, verbose=verbose):
        panel, panel_ref = shared_panel(panel)
        # and on resources and storage before a run directory exists
        preflight(cfg, panel, storage=cfg.output_dir if run is None else run.path.parent)
        if run is None:
            run = RunDir.create(cfg, started)
            print(f"run directory: {run}", flush=True)
        else:
            print(f"resuming {run} from its last checkpoint", flush=True)
        with lifecycle(run, "train"):
            t_fit = time.perf_counter()
            final = run_training(cfg, panel, run.path, panel_ref=panel_ref)
            if not final.finished:
                raise RunInterrupted(f"training stopped after epoch {final.epoch}")
            result = finish_run(cfg, panel, processor_state, final, run, started=started, t0=t0,
                                train_wall_s=time.perf_counter() - t_fit)
    return run, result
