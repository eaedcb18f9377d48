"""THE training loop: one function for Ray Train workers, torchrun, a plain process and the tests.

    result = train_loop(cfg, panel, make_shard(cfg, panel), report=lambda metrics, state: print(metrics))

Per epoch every rank runs the same number of steps over its shuffled share of the training samples, then scores
its share of the validation samples; the predictions are gathered so every rank computes the single-process
metric and takes the same early-stopping decision (``EarlyStopping``). Rank 0 hands the full ``TrainState`` to
``report`` every ``train.checkpoint_every`` epochs, after a new best epoch and after the last one (None otherwise:
no checkpoint); ``train_loop(..., resume=state)`` continues it exactly (bit for bit with ``train.deterministic``),
replaying any epochs after that checkpoint. Epochs are counted from 1 (see distgru/training/state.py). The steps
themselves, eager or one CUDA graph (``train.step``), are in steps.py.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import nn

from distgru.config.schema import Config, TrainConfig
from distgru.models import build_model
from distgru.processing.panel import ProcessedPanel
from distgru.training import parallel as par
from distgru.training.losses import valid_metrics
from distgru.training.reweight import sample_weights
from distgru.training.scoring import score_chunk, score_rows
from distgru.training.state import EarlyStopping, EpochRow, TrainState, capture_rng, restore_rng
from distgru.training.steps import EagerSteps, EpochBatches, GraphedSteps, step_mode
from distgru.training.windows import WindowSource, available, sample_index

log = logging.getLogger(__name__)


@dataclass
class SampleShard:
    """This rank's samples as (instrument index, day index) int arrays."""

    train_inst: np.ndarray
    train_day: np.ndarray
    train_weight: np.ndarray
    """This rank's share of the training samples and their loss weights."""
    valid_inst: np.ndarray
    valid_day: np.ndarray
    """This rank's share of ALL validation samples (disjoint across ranks, their union is every sample)."""


Reporter = Callable[[EpochRow, TrainState | None], None]
"""Called on every rank after every epoch: (the epoch's metrics row, the full state on rank 0 at a checkpoint
epoch / None elsewhere)."""


def make_shard(cfg: Config, panel: ProcessedPanel, rank: int = 0, world: int = 1) -> SampleShard:
    """A strided share of the learn samples of train and valid, with reweighter weights."""
    t_inst, t_day = sample_index(panel, "train", "learn")
    weight = sample_weights(cfg.train.reweighter, panel, t_inst, t_day)
    v_inst, v_day = sample_index(panel, "valid", "learn")
    part = slice(rank, None, world)
    return SampleShard(t_inst[part], t_day[part], weight[part], v_inst[part], v_day[part])


def train_loop(cfg: Config, panel: ProcessedPanel, shard: SampleShard, report: Reporter, *,
               resume: TrainState | None = None, device: torch.device | None = None,
               started: float | None = None) -> TrainState:
    """Train to the early stop or ``train.n_epochs``; returns the last state (``finished``; best weights in it).

    ``started``: ``time.perf_counter()`` when the worker started (default: now), the origin of ``startup_s``."""
    started = time.perf_counter() if started is None else started
    tc = cfg.train
    rank, world = par.world_info()
    is_main = rank == 0
    device = device or par.pick_device(cfg.resources.use_gpu)
    local_bs = tc.batch_size // world  # batch_size is global
    if local_bs < 1:
        raise ValueError(f"train.batch_size {tc.batch_size} < {world} workers")
    with par.determinism(tc.deterministic):
        # Same seed on every rank: identical initial weights (DDP would broadcast rank 0's anyway).
        torch.manual_seed(tc.seed)
        model = build_model(cfg.model, cfg.window_len)
        if resume is not None:
            model.load_state_dict(resume.model)
        ddp = par.wrap_model(model, device)
        # The panel goes to the device once and batches are gathered there, unless it does not fit (then
        # windows are cut in host memory and streamed).
        source = WindowSource.place(panel.features, available(panel, "learn"), cfg.window_len, device,
                                    cfg.resources.panel_on_device)
        mode = step_mode(tc.step, device, world, tc.precision, source.streamed)
        optimizer = _make_optimizer(model, tc, device, capturable=mode == "graph")
        amp = par.Amp(tc.precision, device)
        if resume is not None:
            load_optimizer(optimizer, resume.optimizer)
            amp.scaler.load_state_dict(resume.scaler)
            restore_rng(resume.rng)
        if is_main:
            log.info("feature panel %s: %.0f MiB %s; %s steps", "x".join(map(str, panel.features.shape)),
                     panel.features.nbytes / 2**20, "streamed from host memory" if source.streamed
                     else f"resident on {device}", mode)

        # Each sample's window rows, label and weight are looked up once here: a step then cuts its windows with
        # one gather and takes its labels and weights from the epoch's arrangement of them (steps.EpochBatches).
        t_rows = source.rows(*(torch.as_tensor(a, dtype=torch.int64) for a in (shard.train_inst, shard.train_day)))
        t_label = torch.from_numpy(panel.label_learn[shard.train_inst, shard.train_day]).to(device)
        t_weight = torch.as_tensor(shard.train_weight, dtype=torch.float32, device=device)
        v_inst, v_day = (torch.as_tensor(a, dtype=torch.int64, device=device)
                         for a in (shard.valid_inst, shard.valid_day))
        v_rows = source.rows(v_inst, v_day)

        # DDP needs the same step count on every rank: derive it from the global sample count. The checks are
        # reduced too, so a bad shard stops every rank instead of leaving the others waiting in a collective.
        n_local = len(t_label)
        bad_labels = not bool(torch.isfinite(t_label).all())
        n_global, n_empty, n_bad = (int(v) for v in par.all_reduce(
            torch.tensor([n_local, n_local == 0, bad_labels], dtype=torch.int64, device=device)).tolist())
        if n_bad:
            raise ValueError("training samples must have a finite learn label (take them from sample_index 'learn')")
        steps = n_global // (local_bs * world)
        if steps == 0 or n_empty:
            raise ValueError(f"{n_global} training samples ({n_empty} ranks without any) make no full batch of "
                             f"{local_bs * world}")
        trainer = (GraphedSteps if mode == "graph" else EagerSteps)(ddp, optimizer, amp, tc, source)

        if resume is None:
            epoch, history = 0, []
            stop = EarlyStopping(tc.early_stop, tc.n_epochs)
        else:
            epoch, history = resume.epoch, list(resume.history)
            stop = resume.stopping(tc.early_stop, tc.n_epochs)
        # The best weights stay on the device; they reach the host only in a checkpoint and in the result.
        best_model = _copy(model.state_dict() if resume is None else resume.best_model, device)

        final = resume if is_main else None
        startup_s: float | None = None
        while not stop.done(epoch):
            epoch += 1
            t0 = time.perf_counter()
            first = startup_s is None
            if first:
                startup_s = t0 - started
            # Shuffle and dropout streams derive from (seed, epoch, rank) alone, so a resumed epoch replays exactly
            # (seeded with the 0-based epoch index, as before epochs were numbered from 1: the same streams).
            torch.manual_seed(int(np.random.SeedSequence([tc.seed, epoch - 1, rank]).generate_state(1)[0]))
            order = np.random.default_rng([tc.seed, epoch - 1, rank]).permutation(n_local)
            # A rank with fewer samples wraps around its permutation; one with more leaves the tail (drop_last).
            take = torch.from_numpy(order[np.arange(steps * local_bs) % n_local].reshape(steps, local_bs))
            sums = trainer.epoch(EpochBatches.take(t_rows, t_label, t_weight, take))
            train_s = time.perf_counter() - t0

            pred = score_rows(model, source, v_rows, score_chunk(device, tc.batch_size))
            rows = par.all_gather_rows(torch.stack([v_inst.double(), v_day.double(), pred.double()], dim=1)).cpu()
            metrics = _valid_metrics(rows.numpy(), panel)
            # Every rank computed the metric from the same gathered predictions; rank 0's value is authoritative.
            score = float(par.broadcast(torch.tensor([metrics[tc.metric]], dtype=torch.float64, device=device)).item())
            improved = stop.update(epoch, score)
            if improved:
                best_model = _copy(model.state_dict(), device)

            sums = par.all_reduce(sums.double()).cpu()
            # Loss over every step; norm and clip share over the measured applied steps (steps.GRAD_STATS_EVERY;
            # none gives NaN, which the run directory writes as null).
            totals = torch.cat([sums[:1] / (world * steps), sums[1:3] / sums[3]])
            seconds = par.all_reduce(torch.tensor([train_s, time.perf_counter() - t0, startup_s,
                                                   trainer.warmup_s or 0.0], dtype=torch.float64, device=device),
                                     op="max").cpu().tolist()
            row: EpochRow = {
                "epoch": epoch, "train_loss": float(totals[0]), "grad_norm": float(totals[1]),
                "clip_frac": float(totals[2]), "valid_score": score, "valid_mse": -metrics["loss"],
                "valid_ic": metrics["ic"], "valid_rank_ic": metrics["rank_ic"], "best_score": stop.best_score,
                "best_epoch": stop.best_epoch, "patience": stop.patience, "stopped_early": stop.stopped_early(epoch),
                "samples_per_s": steps * local_bs * world / seconds[0], "epoch_s": seconds[1]}
            if first:  # this worker's start-up apart from training: see EpochRow
                row |= {"startup_s": seconds[2], "warmup_s": seconds[3]}
            history.append(row)
            state = None
            if is_main and (epoch % tc.checkpoint_every == 0 or improved or stop.done(epoch)):
                state = TrainState(epoch=epoch, model=_copy(model.state_dict()),
                                   optimizer=_copy(optimizer.state_dict()), scaler=amp.scaler.state_dict(),
                                   best_score=stop.best_score, best_epoch=stop.best_epoch, patience=stop.patience,
                                   best_model=_copy(best_model), history=list(history), rng=capture_rng(),
                                   finished=stop.done(epoch))
                final = state
            report(dict(row), state)

    if final is None:  # other ranks return the same summary without the (rank 0) optimizer state
        final = TrainState(epoch=epoch, model={}, optimizer={}, scaler={}, best_score=stop.best_score,
                           best_epoch=stop.best_epoch, patience=stop.patience, best_model=_copy(best_model),
                           history=history)
    final.finished = True
    return final


KERNEL_FLAGS = ("fused", "capturable", "foreach")
"""Optimizer settings that choose kernels for this worker's device and step mode, not part of the training state."""


def load_optimizer(optimizer: torch.optim.Optimizer, saved: dict[str, Any]) -> None:
    """``optimizer.load_state_dict(saved)`` keeping this optimizer's kernel flags: a state saved by a graphed CUDA
    run (fused, capturable) resumes on a CPU worker, an eager one in a graphed run. torch places the loaded step
    counts by the flags in the state dict (on the device for fused/capturable), so the flags are set there first."""
    groups = [{**group, **{k: own[k] for k in KERNEL_FLAGS if k in own}}
              for group, own in zip(saved["param_groups"], optimizer.param_groups, strict=True)]
    optimizer.load_state_dict({**saved, "param_groups": groups})


def _make_optimizer(model: nn.Module, tc: TrainConfig, device: torch.device,
                    capturable: bool = False) -> torch.optim.Optimizer:
    """``capturable``: Adam keeps its step count on the device, so a CUDA graph can hold its step."""
    if tc.optimizer == "sgd":
        return torch.optim.SGD(model.parameters(), lr=tc.lr)
    # Fused Adam: one kernel per step instead of a for-each chain; with the fp16 scaler it also skips an inf/NaN
    # step on the device (GradScaler hands it found_inf) instead of syncing with the host.
    if par.fused_optimizer(tc.fused_optimizer, device):
        return torch.optim.Adam(model.parameters(), lr=tc.lr, fused=True, capturable=capturable)
    return torch.optim.Adam(model.parameters(), lr=tc.lr, capturable=capturable)


def _valid_metrics(rows: np.ndarray, panel: ProcessedPanel) -> dict[str, float]:
    # Canonical sample order, so the float reductions do not depend on how samples were split across ranks.
    rows = rows[np.lexsort((rows[:, 1], rows[:, 0]))]
    inst, day = rows[:, 0].astype(np.int64), rows[:, 1].astype(np.int64)
    return valid_metrics(rows[:, 2], panel.label_learn[inst, day], panel.label_raw[inst, day], day)


def _copy(obj: Any, device: torch.device | str = "cpu") -> Any:
    """Deep copy with tensors on ``device`` (checkpoint states and best weights must not alias live, mutating
    tensors)."""
    if isinstance(obj, torch.Tensor):
        return obj.detach().to(device, copy=True)
    if isinstance(obj, dict):
        return type(obj)((k, _copy(v, device)) for k, v in obj.items())
    if isinstance(obj, list | tuple):
        return type(obj)(_copy(v, device) for v in obj)
    return obj
