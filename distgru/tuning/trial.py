"""The two trial shapes. Both run THE training loop and report every epoch, so schedulers can stop a trial early;
the loop's own patience (train.early_stop) still ends a trial.

- ``resources.num_workers == 1``: ``in_process_trial`` runs the loop inside the Tune trial process, attaching
  the loop's full state as a ``tune.Checkpoint`` each epoch. That is what PBT exploits and what a restored
  experiment resumes from (``tune.get_checkpoint()``).
- ``resources.num_workers > 1``: ``multi_worker_trial`` launches the same TorchTrainer ``distgru train`` uses
  (``run_training``), its Train run stored in ``<experiment dir>/trial_<id>/train`` (a deterministic name, so a
  retried or restored trial resumes the Train run), and forwards each epoch's rank-0 report to Tune.

Panels arrive as ``data_box = [{data_key: ObjectRef((panel, processor_state))}]``: prepared once in the driver,
one per distinct data config, and boxed because Tune resolves top-level ObjectRefs in trainable parameters.
"""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Any

import torch
from ray.tune.integration.ray_train import TuneReportCallback

from distgru.config import Config
from distgru.processing.panel import ProcessedPanel
from distgru.processing.processors import ProcessorState
from distgru.training import parallel as par
from distgru.training.loop import make_shard, train_loop
from distgru.training.state import STATE_FILE, EpochRow, TrainState
from distgru.tuning.space import data_key, trial_config

TRAIN_SUBDIR = "train"
"""A multi-worker trial's Ray Train run directory, inside the Tune trial directory."""


def trial_dirname(trial_id: str) -> str:
    """Short trial directories (Tune's default name repeats every parameter)."""
    return f"trial_{trial_id}"


def _data(cfg: Config, data_box: list[dict[str, Any]]) -> tuple[ProcessedPanel, ProcessorState]:
    import ray

    panel, state = ray.get(list(data_box[0][data_key(cfg)]))
    return panel, state


def in_process_trial(params: dict[str, Any], *, base: dict[str, Any], data_box: list[dict[str, Any]]) -> None:
    """A Tune function trainable: one training run in this process."""
    import ray
    from ray import tune

    cfg = trial_config(base, params)
    panel, _ = _data(cfg, data_box)
    # Ray sets OMP_NUM_THREADS from the reservation, but torch read it at import, before the actor knew.
    cpus = ray.get_runtime_context().get_assigned_resources().get("CPU", 1.0)
    torch.set_num_threads(max(1, int(cpus)))
    device = par.pick_device(bool(ray.get_gpu_ids()))

    resume = None
    checkpoint = tune.get_checkpoint()
    if checkpoint is not None:
        with checkpoint.as_directory() as d:
            resume = TrainState.load(d)
        # After a PBT exploit the config's lr is the explored one; the cloned optimizer state holds the donor's.
        for group in resume.optimizer["param_groups"]:
            group["lr"] = cfg.train.lr

    def report(row: EpochRow, state: TrainState | None) -> None:
        if state is None:  # an epoch between checkpoints (train.checkpoint_every)
            tune.report(row)
            return
        with tempfile.TemporaryDirectory(prefix="distgru-tune-") as tmp:
            state.save(tmp)
            tune.report(row, checkpoint=tune.Checkpoint.from_directory(tmp))

    train_loop(cfg, panel, make_shard(cfg, panel), report, resume=resume, device=device)


def multi_worker_trial(params: dict[str, Any], *, base: dict[str, Any], data_box: list[dict[str, Any]],
                       exp_dir: str) -> None:
    """A Tune function trainable that drives a Ray Train (DDP) run of ``resources.num_workers`` workers.

    The Train run lives in the trial's directory of the experiment (``exp_dir``, shared storage on a multi-node
    cluster), not in Tune's local trial directory: that one is a per-session staging copy."""
    from ray import tune

    from distgru.training.ray_train import run_training

    cfg = trial_config(base, params)
    panel_ref = data_box[0][data_key(cfg)][0]
    panel, _ = _data(cfg, data_box)
    run_dir = Path(exp_dir) / trial_dirname(tune.get_context().get_trial_id()) / TRAIN_SUBDIR
    run_dir.mkdir(parents=True, exist_ok=True)
    run_training(cfg, panel, run_dir, progress=False, callbacks=[TuneReportCallback()], panel_ref=panel_ref)


def trial_state(trial_dir: str | Path, tune_checkpoint: Any) -> TrainState:
    """The latest state of a finished, stopped or interrupted trial (its best weights and epoch are in it): the
    Tune checkpoint of an in-process trial, else the newest Ray Train checkpoint of the trial's Train run."""
    if tune_checkpoint is not None:
        with tune_checkpoint.as_directory() as d:
            return TrainState.load(d)
    states = sorted((Path(trial_dir) / TRAIN_SUBDIR).glob(f"checkpoint_*/{STATE_FILE}"))
    if not states:
        raise FileNotFoundError(f"no checkpoint in {trial_dir}: the trial never finished an epoch")
    return TrainState.load(states[-1].parent)
