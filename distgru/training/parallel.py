"""Everything distributed or device-specific: rank/world, DDP wrapping, collectives, AMP, determinism.

Framework-free: whoever launches the workers (Ray Train, torchrun, a test's spawn) initialises torch.distributed;
without a process group every helper degrades to the single-process case.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from typing import Literal

import torch
import torch.distributed as dist
from torch import nn
from torch.nn.parallel import DistributedDataParallel

Precision = Literal["fp32", "bf16", "fp16"]


def world_info() -> tuple[int, int]:
    """(rank, world size); (0, 1) without an initialised process group."""
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def pick_device(use_gpu: bool = True) -> torch.device:
    """THE device choice outside Ray Train (which hands its workers theirs): this process's CUDA device when
    GPUs are wanted and visible, else the CPU."""
    if use_gpu and torch.cuda.is_available():
        return torch.device("cuda", int(os.environ.get("LOCAL_RANK", torch.cuda.current_device())))
    return torch.device("cpu")


def wrap_model(model: nn.Module, device: torch.device) -> nn.Module:
    """``model`` on ``device``, in DDP when the world has several ranks (gloo on CPU, nccl with device ids)."""
    model = model.to(device)
    if world_info()[1] == 1:
        return model
    return DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda" else None)


def unwrap(model: nn.Module) -> nn.Module:
    return model.module if isinstance(model, DistributedDataParallel) else model


def all_reduce(t: torch.Tensor, op: str = "sum") -> torch.Tensor:
    if world_info()[1] > 1:
        dist.all_reduce(t, op=dist.ReduceOp.SUM if op == "sum" else dist.ReduceOp.MAX)
    return t


def broadcast(t: torch.Tensor) -> torch.Tensor:
    """Rank 0's value everywhere."""
    if world_info()[1] > 1:
        dist.broadcast(t, src=0)
    return t


def all_gather_rows(t: torch.Tensor) -> torch.Tensor:
    """Rows of ``t`` from every rank concatenated in rank order; ranks may hold different row counts."""
    world = world_info()[1]
    if world == 1:
        return t
    counts = [torch.zeros(1, dtype=torch.int64, device=t.device) for _ in range(world)]
    dist.all_gather(counts, torch.tensor([t.shape[0]], dtype=torch.int64, device=t.device))
    sizes = [int(c) for c in counts]
    # all_gather needs equal shapes: pad to the longest share, trim after.
    padded = t.new_zeros((max(sizes), *t.shape[1:]))
    padded[: t.shape[0]] = t
    parts = [torch.empty_like(padded) for _ in range(world)]
    dist.all_gather(parts, padded)
    return torch.cat([p[:n] for p, n in zip(parts, sizes, strict=True)])


class Amp:
    """Autocast and the fp16 grad scaler. fp16 gradients are unscaled before clipping so thresholds mean the same."""

    def __init__(self, precision: Precision, device: torch.device) -> None:
        if precision == "fp16" and device.type != "cuda":
            # CPU fp16 kernels are partial (oneDNN has no fp16 LSTM) and there is no speed to win.
            raise ValueError("train.precision 'fp16' needs a CUDA device; use 'bf16' on CPU")
        self.device_type = device.type
        self.dtype = {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}[precision]
        self.scaler = torch.amp.GradScaler(device.type, enabled=precision == "fp16")

    def autocast(self, cache: bool = True) -> contextlib.AbstractContextManager:
        """``cache``: reuse weight casts inside the region; off for a region a CUDA graph captures (a cached cast
        would point into memory the capture does not own)."""
        if self.dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(self.device_type, dtype=self.dtype, cache_enabled=cache)

    def backward(self, loss: torch.Tensor, optimizer: torch.optim.Optimizer) -> None:
        self.scaler.scale(loss).backward()
        self.scaler.unscale_(optimizer)  # no-op when disabled

    def step(self, optimizer: torch.optim.Optimizer) -> None:
        self.scaler.step(optimizer)  # skips the step on inf/NaN fp16 gradients
        self.scaler.update()


def fused_optimizer(setting: str, device: torch.device) -> bool:
    """Whether Adam takes its fused single-kernel step: on CUDA only (``auto``). The CPU keeps the for-each step,
    so CPU runs stay bit for bit what they were; ``on`` there is refused rather than silently changing numerics."""
    if setting == "on" and device.type != "cuda":
        raise ValueError(f"train.fused_optimizer 'on' needs a CUDA device (this worker has {device}); use 'auto'")
    return setting != "off" and device.type == "cuda"


@contextlib.contextmanager
def determinism(enabled: bool) -> Iterator[None]:
    """Deterministic kernels while the block runs (restored after: the setting is process-global)."""
    if not enabled:
        yield
        return
    previous = (torch.are_deterministic_algorithms_enabled(), torch.is_deterministic_algorithms_warn_only_enabled(),
                torch.backends.cudnn.deterministic, torch.backends.cudnn.benchmark)
    # cuBLAS reads this when its handle is created; setdefault respects a launcher's own choice.
    os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
    # warn_only: kernels without a deterministic variant (some cuDNN RNN backward paths) warn instead of failing.
    torch.use_deterministic_algorithms(True, warn_only=True)
    torch.backends.cudnn.deterministic, torch.backends.cudnn.benchmark = True, False
    try:
        yield
    finally:
        torch.use_deterministic_algorithms(previous[0], warn_only=previous[1])
        torch.backends.cudnn.deterministic, torch.backends.cudnn.benchmark = previous[2], previous[3]
