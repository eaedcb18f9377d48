"""The training step and the epoch of steps around it: eager, or the whole step captured as one CUDA graph.

    steps = (GraphedSteps if mode == "graph" else EagerSteps)(ddp, optimizer, amp, tc, source)
    sums = steps.epoch(EpochBatches.take(rows, label, weight, take))   # [loss, grad norm, clipped, measured]

A step cuts its windows (one gather, see windows.py), runs forward, the weighted loss, backward, clipping and the
optimizer, and adds its statistics to sums kept on the device, so no step waits for the host. ``eager`` launches
each kernel from Python; ``graph`` (``train.step``) replays one CUDA graph of the whole step, so a step costs one
launch whatever the model. Both run the same ``EagerSteps.step``, so they train the same model.
"""

from __future__ import annotations

import contextlib
import logging
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Literal

import torch
from torch import nn

from distgru.config.schema import TrainConfig
from distgru.training import parallel as par
from distgru.training.losses import batch_loss
from distgru.training.windows import WindowSource, cut

log = logging.getLogger(__name__)

StepMode = Literal["eager", "graph"]
GRAD_STATS_EVERY = 8
"""An eager step measures the gradient (its L2 norm, and whether clipping changed it) on every 8th step of an epoch
only: clipping by value needs no norm, and the two norms were a dozen launches per step for a statistic. The logged
``grad_norm`` and ``clip_frac`` are then means over the measured steps (0, 8, 16, ... of each epoch). Clipping by
norm computes the norm anyway and a graphed step pays no launches for it, so those measure every step."""
GRAPH_WARMUP = 3
"""Eager steps on a side stream before the capture (torch.cuda's whole-network recipe): cuDNN picks its plans, the
optimizer creates its state and the allocator grows before any memory becomes the graph's."""


def step_mode(setting: str, device: torch.device, world: int, precision: str, streamed: bool) -> StepMode:
    """``train.step`` resolved for this worker: ``graph`` needs a CUDA device, one worker, fp32 or bf16 and the
    panel resident on the device; ``auto`` picks it when all hold, else ``eager``; ``graph`` refuses otherwise.

    One worker only: DDP's all-reduce inside a graph needs NCCL's async error handling off before the process
    group starts and DDP built on a side stream (torch.cuda "Usage with DistributedDataParallel"), and Ray Train
    starts the group. fp16's grad scaler decides on the host whether to skip a step and rescale; a streamed batch
    arrives in fresh memory each step while a graph reads fixed addresses.
    """
    missing = [need for need, ok in (("a CUDA device", device.type == "cuda"), ("one worker", world == 1),
                                     ("train.precision fp32 or bf16", precision != "fp16"),
                                     ("the panel resident on the device (resources.panel_on_device)", not streamed))
               if not ok]
    if setting == "eager" or (setting == "auto" and missing):
        return "eager"
    if missing:
        raise ValueError(f"train.step 'graph' needs {', '.join(missing)} (this worker: {device}, {world} "
                         f"worker(s), {precision}{', streamed panel' if streamed else ''}); use 'auto' or 'eager'")
    return "graph"


@dataclass(frozen=True)
class EpochBatches:
    """One epoch's batches, step-major: step ``i`` trains on ``rows[i]``, ``label[i]``, ``weight[i]``."""

    rows: torch.Tensor
    """[steps, B, T] window rows of the flat panel, where the source cuts windows (its ``home``)."""
    label: torch.Tensor
    """[steps, B] on the device."""
    weight: torch.Tensor
    """[steps, B] on the device."""

    @classmethod
    def take(cls, rows: torch.Tensor, label: torch.Tensor, weight: torch.Tensor, take: torch.Tensor
             ) -> EpochBatches:
        """Per-sample ``rows`` [S, T], ``label`` [S], ``weight`` [S] arranged as ``take`` [steps, B] picks them."""
        return cls(rows[take.to(rows.device)], label[take.to(label.device)], weight[take.to(weight.device)])


class EagerSteps:
    """Steps launched from Python, on windows the source cuts (resident) or streams (prefetched)."""

    autocast_cache = True

    def __init__(self, model: nn.Module, optimizer: torch.optim.Optimizer, amp: par.Amp, tc: TrainConfig,
                 source: WindowSource) -> None:
        self.model, self.optimizer, self.amp, self.tc, self.source = model, optimizer, amp, tc, source
        self.params = [p for p in model.parameters() if p.requires_grad]
        self.sums = torch.zeros(4, device=source.device)
        self.warmup_s: float | None = None
        """Seconds of the first steps (the first eager step; graph: the warm-up steps and the capture)."""

    def epoch(self, batches: EpochBatches) -> torch.Tensor:
        """Train one pass; returns the sums of [loss, grad norm before clipping, clipped, measured] (see
        ``step``), on the device."""
        self.model.train()
        self.sums.zero_()
        t0 = time.perf_counter()
        with contextlib.closing(self.source.windows(batches.rows)) as windows:
            for i, x in enumerate(windows):
                self.step(x, batches.label[i], batches.weight[i], measure=i % GRAD_STATS_EVERY == 0)
                if self.warmup_s is None:
                    self.warmup_s = _elapsed(t0, self.source.device)
        return self.sums.clone()

    def step(self, x: torch.Tensor, label: torch.Tensor, weight: torch.Tensor, measure: bool) -> None:
        """One optimizer step on windows ``x``; adds its loss to ``sums[0]`` and, on a measured step, its norm, its
        clipping and 1 to ``sums[1:]``.

        Norm and clipping count applied steps only: the fp16 scaler skips a step whose gradients hold inf/NaN,
        and one such step would make the epoch's mean norm inf. A step counts as applied when its norm is finite,
        the scaler's own test (any inf/NaN gradient makes the L2 norm inf/NaN), read without a host sync.
        """
        with self.amp.autocast(self.autocast_cache):
            pred = self.model(x)
        # The loop checked once that every training label is finite, so the loss skips the NaN mask.
        loss = batch_loss(pred.float(), label, weight, self.tc.loss, finite=True)
        self.optimizer.zero_grad(set_to_none=True)
        self.amp.backward(loss, self.optimizer)  # DDP all-reduces here; fp16 grads come back unscaled
        measured = clip_gradients(self.params, self.tc.clip, self.tc.clip_value, measure)
        self.amp.step(self.optimizer)
        self.sums[0] += loss.detach()
        if measured is not None:
            norm, clipped = measured
            applied = torch.isfinite(norm)
            self.sums[1:] += torch.stack([torch.where(applied, norm.float(), 0.0), (clipped & applied).float(),
                                          applied.float()])


class GraphedSteps(EagerSteps):
    """The whole step as one CUDA graph (``train.step: graph``; see ``step_mode`` for when).

    The graph reads the epoch's batches from static buffers at a device-side cursor it advances itself, so an
    epoch is: copy the batches in, then replay once per step. The first epoch runs ``GRAPH_WARMUP`` eager steps
    of the same body on a side stream, then captures it; gradients are set to None just before, so backward
    allocates them in the graph's pool and every replay rewrites them in place (torch.cuda's whole-network
    recipe; no zero_grad launch per step). Every step measures its gradient (it costs no launches in a graph).
    Batches are full (the loop drops the last partial one). If the capture fails, a warning says so once and
    the run goes on with the same body launched eagerly.
    """

    autocast_cache = False  # autocast's weight-cast cache must not outlive a capture (torch.cuda.graphs docs)

    def __init__(self, model: nn.Module, optimizer: torch.optim.Optimizer, amp: par.Amp, tc: TrainConfig,
                 source: WindowSource) -> None:
        super().__init__(model, optimizer, amp, tc, source)
        self.static: EpochBatches | None = None
        """The buffers the graph reads (allocated by the first epoch: every epoch has the same shapes)."""
        self.cursor = torch.zeros(1, dtype=torch.int64, device=source.device)
        self.graph: torch.cuda.CUDAGraph | None = None
        self.eager = False
        """The capture failed: the body runs eagerly from then on."""

    def epoch(self, batches: EpochBatches) -> torch.Tensor:
        self.model.train()
        if self.static is None:
            self.static = EpochBatches(*(torch.empty_like(t) for t in (batches.rows, batches.label, batches.weight)))
        for static, given in zip((self.static.rows, self.static.label, self.static.weight),
                                 (batches.rows, batches.label, batches.weight), strict=True):
            static.copy_(given)
        self.cursor.zero_()
        self.sums.zero_()
        done = 0
        if self.graph is None and not self.eager:
            t0 = time.perf_counter()
            done = self._warm_up_and_capture()
            if self.warmup_s is None:
                self.warmup_s = _elapsed(t0, self.source.device)
        for _ in range(len(batches.rows) - done):
            if self.graph is not None:
                self.graph.replay()
            else:
                self.body()
        return self.sums.clone()

    def body(self) -> None:
        """The step on the batch at ``cursor``, then the cursor advanced: what the graph holds."""
        at, static = self.cursor, self.static
        x = cut(self.source.features, static.rows.index_select(0, at)[0])
        self.step(x, static.label.index_select(0, at)[0], static.weight.index_select(0, at)[0], measure=True)
        self.cursor += 1

    def _warm_up_and_capture(self) -> int:
        """Runs the warm-up steps (they train, as any step) and captures the body; returns the steps run."""
        n_steps = len(self.static.rows)
        n = min(GRAPH_WARMUP, n_steps)
        with _side_stream(self.source.device):
            for _ in range(n):
                self.body()
        if n == n_steps:
            return n  # an epoch of warm-up only: capture at the next one
        try:
            self.graph = _capture(self.body, self.source.device)
        except Exception as e:  # any capture error: the eager body trains the same model
            log.warning("train.step: capturing the training step as a CUDA graph failed (%s: %s); training on "
                        "with eager steps", type(e).__name__, e)
            self.eager = True
        return n


def clip_gradients(params: list[nn.Parameter], kind: str, threshold: float,
                   measure: bool = True) -> tuple[torch.Tensor, torch.Tensor] | None:
    """Clip in place by value (qlib: each element to ±threshold), by global L2 norm, or not at all.

    Returns the L2 norm before clipping and whether clipping changed anything; None when not ``measure``d, which
    then launches no norm at all (clipping by norm always measures: it needs the norm).
    """
    grads = [p.grad for p in params if p.grad is not None]
    if kind == "norm":
        norm = torch.nn.utils.get_total_norm(grads)
        torch.nn.utils.clip_grads_with_norm_(params, threshold, norm)
        return norm, norm > threshold
    measured = None
    if measure:
        norm = torch.nn.utils.get_total_norm(grads)
        clipped = (torch.nn.utils.get_total_norm(grads, norm_type=float("inf")) > threshold if kind == "value"
                   else torch.zeros((), dtype=torch.bool, device=norm.device))
        measured = norm, clipped
    if kind == "value":
        torch.nn.utils.clip_grad_value_(params, threshold)
    return measured


def _elapsed(t0: float, device: torch.device) -> float:
    if device.type == "cuda":
        torch.cuda.synchronize(device)  # once per run: the queued kernels are the time being measured
    return time.perf_counter() - t0


@contextlib.contextmanager
def _side_stream(device: torch.device) -> Iterator[None]:
    """Work on a fresh CUDA stream that waits for, and is then waited for by, the current one (no-op on CPU)."""
    if device.type != "cuda":
        yield
        return
    main, side = torch.cuda.current_stream(device), torch.cuda.Stream(device)
    side.wait_stream(main)
    with torch.cuda.stream(side):
        yield
    main.wait_stream(side)


def _capture(body: Callable[[], None], device: torch.device) -> torch.cuda.CUDAGraph:
    if device.type != "cuda":
        raise RuntimeError(f"CUDA graphs need a CUDA device, not {device}")
    graph = torch.cuda.CUDAGraph()
    # thread_local: only this thread must avoid capture-unsafe CUDA calls; a runtime's helper threads (Ray's) may
    # touch CUDA meanwhile without invalidating the capture.
    with torch.cuda.graph(graph, capture_error_mode="thread_local"):
        body()
    return graph
