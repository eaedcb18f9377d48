"""THE training loop: one function for Ray Train workers, torchrun, a plain process and the tests.

    result = train_loop(cfg, panel, make_shard(cfg, panel), report=lambda metrics, state: print(metrics))

Per epoch every rank runs the same number of steps over its shuffled share of the training samples, then scores
its share of the validation samples; the predictions are gathered so every rank computes the single-process
metric and takes the same early-stopping decision (``EarlyStopping``). Rank 0 hands the full ``TrainState`` to
``report``; ``train_loop(..., resume=state)`` continues it exactly (bit for bit with ``train.deterministic``).
Epochs are counted from 1 (see distgru/training/state.py).
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
from distgru.training.losses import batch_loss, valid_metrics
from distgru.training.reweight import sample_weights
from distgru.training.scoring import score_windows
from distgru.training.state import EarlyStopping, EpochRow, TrainState, capture_rng, restore_rng
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
"""Called on every rank after every epoch: (the epoch's metrics row, the full state on rank 0 / None elsewhere)."""


def make_shard(cfg: Config, panel: ProcessedPanel, rank: int = 0, world: int = 1) -> SampleShard:
    """A strided share of the learn samples of train and valid, with reweighter weights."""
    t_inst, t_day = sample_index(panel, "train", "learn")
    weight = sample_weights(cfg.train.reweighter, panel, t_inst, t_day)
    v_inst, v_day = sample_index(panel, "valid", "learn")
    part = slice(rank, None, world)
    return SampleShard(t_inst[part], t_day[part], weight[part], v_inst[part], v_day[part])


def train_loop(cfg: Config, panel: ProcessedPanel, shard: SampleShard, report: Reporter, *,
               resume: TrainState | None = None, device: torch.device | None = None) -> TrainState:
    """Train to the early stop or ``train.n_epochs``; returns the last state (``finished``; best weights in it)."""
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
        optimizer = _make_optimizer(model, tc, device)
        amp = par.Amp(tc.precision, device)
        if resume is not None:
            optimizer.load_state_dict(resume.optimizer)
            amp.scaler.load_state_dict(resume.scaler)
            restore_rng(resume.rng)

        # The panel goes to the device once and batches are gathered there, unless it does not fit (then
        # windows are cut in host memory and streamed); labels, weights and indices are small and stay on device.
        source = WindowSource.place(panel.features, available(panel, "learn"), cfg.window_len, device,
                                    cfg.resources.panel_on_device)
        if is_main:
            log.info("feature panel %s: %.0f MiB %s", "x".join(map(str, panel.features.shape)),
                     panel.features.nbytes / 2**20, "streamed from host memory" if source.streamed
                     else f"resident on {device}")
        label = torch.from_numpy(panel.label_learn).to(device)
        t_inst, t_day = (torch.as_tensor(a, dtype=torch.int64, device=device)
                         for a in (shard.train_inst, shard.train_day))
        t_weight = torch.as_tensor(shard.train_weight, dtype=torch.float32, device=device)
        v_inst, v_day = (torch.as_tensor(a, dtype=torch.int64, device=device)
                         for a in (shard.valid_inst, shard.valid_day))

        # DDP needs the same step count on every rank: derive it from the global sample count. The checks are
        # reduced too, so a bad shard stops every rank instead of leaving the others waiting in a collective.
        n_local = len(t_inst)
        bad_labels = not bool(torch.isfinite(label[t_inst, t_day]).all())
        n_global, n_empty, n_bad = (int(v) for v in par.all_reduce(
            torch.tensor([n_local, n_local == 0, bad_labels], dtype=torch.int64, device=device)).tolist())
        if n_bad:
            raise ValueError("training samples must have a finite learn label (take them from sample_index 'learn')")
        steps = n_global // (local_bs * world)
        if steps == 0 or n_empty:
            raise ValueError(f"{n_global} training samples ({n_empty} ranks without any) make no full batch of "
                             f"{local_bs * world}")

        if resume is None:
            epoch, best_model, history = 0, _cpu_copy(model.state_dict()), []
            stop = EarlyStopping(tc.early_stop, tc.n_epochs)
        else:
            epoch, best_model, history = resume.epoch, resume.best_model, list(resume.history)
            stop = resume.stopping(tc.early_stop, tc.n_epochs)

        state = resume if is_main else None
        while not stop.done(epoch):
            epoch += 1
            t0 = time.perf_counter()
            # Shuffle and dropout streams derive from (seed, epoch, rank) alone, so a resumed epoch replays exactly
            # (seeded with the 0-based epoch index, as before epochs were numbered from 1: the same streams).
            torch.manual_seed(int(np.random.SeedSequence([tc.seed, epoch - 1, rank]).generate_state(1)[0]))
            order = np.random.default_rng([tc.seed, epoch - 1, rank]).permutation(n_local)
            # A rank with fewer samples wraps around its permutation; one with more leaves the tail (drop_last).
            take = torch.from_numpy(order[np.arange(steps * local_bs) % n_local].reshape(steps, local_bs))
            stats = _train_epoch(ddp, optimizer, amp, tc, source, label, t_inst, t_day, t_weight, take.to(device))
            train_s = time.perf_counter() - t0

            pred = score_windows(model, source, v_inst, v_day, tc.batch_size)
            rows = par.all_gather_rows(torch.stack([v_inst.double(), v_day.double(), pred.double()], dim=1)).cpu()
            metrics = _valid_metrics(rows.numpy(), panel)
            # Every rank computed the metric from the same gathered predictions; rank 0's value is authoritative.
            score = float(par.broadcast(torch.tensor([metrics[tc.metric]], dtype=torch.float64, device=device)).item())
            if stop.update(epoch, score):
                best_model = _cpu_copy(model.state_dict())

            sums = par.all_reduce(stats.double()).cpu()
            # Loss over every step; norm and clip share over applied steps (all of them unless fp16 skipped some;
            # none applied gives NaN, which the run directory writes as null).
            totals = torch.cat([sums[:1] / (world * steps), sums[1:3] / sums[3]])
            seconds = par.all_reduce(torch.tensor([train_s, time.perf_counter() - t0],
                                              dtype=torch.float64, device=device), op="max").cpu()
            row: EpochRow = {
                "epoch": epoch, "train_loss": float(totals[0]), "grad_norm": float(totals[1]),
                "clip_frac": float(totals[2]), "valid_score": score, "valid_mse": -metrics["loss"],
                "valid_ic": metrics["ic"], "valid_rank_ic": metrics["rank_ic"], "best_score": stop.best_score,
                "best_epoch": stop.best_epoch, "patience": stop.patience, "stopped_early": stop.stopped_early(epoch),
                "samples_per_s": steps * local_bs * world / float(seconds[0]), "epoch_s": float(seconds[1])}
            history.append(row)
            if is_main:
                state = TrainState(epoch=epoch, model=_cpu_copy(model.state_dict()),
                                   optimizer=_cpu_copy(optimizer.state_dict()), scaler=amp.scaler.state_dict(),
                                   best_score=stop.best_score, best_epoch=stop.best_epoch, patience=stop.patience,
                                   best_model=best_model, history=list(history), rng=capture_rng(),
                                   finished=stop.done(epoch))
            report(dict(row), state)

    if state is None:  # other ranks return the same summary without the (rank 0) optimizer state
        state = TrainState(epoch=epoch, model={}, optimizer={}, scaler={}, best_score=stop.best_score,
                           best_epoch=stop.best_epoch, patience=stop.patience, best_model=best_model,
                           history=history)
    state.finished = True
    return state


def _make_optimizer(model: nn.Module, tc: TrainConfig, device: torch.device) -> torch.optim.Optimizer:
    if tc.optimizer == "sgd":
        return torch.optim.SGD(model.parameters(), lr=tc.lr)
    # Fused Adam: one kernel per step instead of a for-each chain; with the fp16 scaler it also skips an inf/NaN
    # step on the device (GradScaler hands it found_inf) instead of syncing with the host.
    if par.fused_optimizer(tc.fused_optimizer, device):
        return torch.optim.Adam(model.parameters(), lr=tc.lr, fused=True)
    return torch.optim.Adam(model.parameters(), lr=tc.lr)


def _train_epoch(ddp: nn.Module, optimizer: torch.optim.Optimizer, amp: par.Amp, tc: TrainConfig,
                 source: WindowSource, label: torch.Tensor, t_inst: torch.Tensor, t_day: torch.Tensor,
                 t_weight: torch.Tensor, take: torch.Tensor) -> torch.Tensor:
    """One pass; returns per-rank sums of [loss, grad norm before clipping, clipped steps, applied steps] (kept on
    the device so no step waits for a host sync).

    The norm and the clipped count cover applied steps only: the fp16 scaler skips a step whose gradients hold
    inf/NaN, and one such step would turn the epoch's mean norm into inf. A step counts as applied when its
    norm is finite, which is the scaler's own test (any inf/NaN gradient makes the L2 norm inf/NaN) and needs
    no host sync; in fp32/bf16 every step is applied, so the sums are the same numbers as before.
    """
    ddp.train()
    params = [p for p in ddp.parameters() if p.requires_grad]
    stats = torch.zeros(4, device=label.device)
    for idx in take:
        inst, day = t_inst[idx], t_day[idx]
        with amp.autocast():
            pred = ddp(source.gather(inst, day))
        loss = batch_loss(pred.float(), label[inst, day], t_weight[idx], tc.loss)
        optimizer.zero_grad(set_to_none=True)
        amp.backward(loss, optimizer)  # DDP all-reduces here; fp16 grads come back unscaled
        norm, clipped = clip_gradients(params, tc.clip, tc.clip_value)
        amp.step(optimizer)
        applied = torch.isfinite(norm)
        stats += torch.stack([loss.detach(), torch.where(applied, norm.float(), 0.0), (clipped & applied).float(),
                              applied.float()])
    return stats


def clip_gradients(params: list[nn.Parameter], kind: str, threshold: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Clip in place by value (qlib: each element to ±threshold), by global L2 norm, or not at all.

    Returns the L2 norm before clipping and whether clipping changed anything.
    """
    grads = [p.grad for p in params if p.grad is not None]
    norm = torch.nn.utils.get_total_norm(grads)
    if kind == "norm":
        torch.nn.utils.clip_grads_with_norm_(params, threshold, norm)
        return norm, norm > threshold
    if kind == "value":
        clipped = torch.nn.utils.get_total_norm(grads, norm_type=float("inf")) > threshold
        torch.nn.utils.clip_grad_value_(params, threshold)
        return norm, clipped
    return norm, torch.zeros((), dtype=torch.bool, device=norm.device)


def _valid_metrics(rows: np.ndarray, panel: ProcessedPanel) -> dict[str, float]:
    # Canonical sample order, so the float reductions do not depend on how samples were split across ranks.
    rows = rows[np.lexsort((rows[:, 1], rows[:, 0]))]
    inst, day = rows[:, 0].astype(np.int64), rows[:, 1].astype(np.int64)
    return valid_metrics(rows[:, 2], panel.label_learn[inst, day], panel.label_raw[inst, day], day)


def _cpu_copy(obj: Any) -> Any:
    """Deep copy with tensors on the CPU (checkpoint states must not alias live, mutating tensors)."""
    if isinstance(obj, torch.Tensor):
        return obj.detach().to("cpu", copy=True)
    if isinstance(obj, dict):
        return type(obj)((k, _cpu_copy(v)) for k, v in obj.items())
    if isinstance(obj, list | tuple):
        return type(obj)(_cpu_copy(v) for v in obj)
    return obj
