"""The measured half of benchmarks/scaling_model.py: what this machine's CPU says about distgru's training step,
with the full-market set the model sizes (issue 12). Each figure is a median over repetitions on 1 torch thread;
scaling_model.py's docstring says how the model uses them."""

from __future__ import annotations

import platform
import socket
import statistics
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))  # run from anywhere without an installed distgru

STEP_LEN, D_FEAT_QLIB = 20, 20  # configs/gru_alpha158.yaml: Alpha158 filtered to 20 columns, 20-day windows
QLIB_BATCH = 800


@dataclass(frozen=True)
class Market:
    """The full-market set of issue 12."""

    stocks: int = 5_000
    years: int = 15
    days_per_year: int = 244
    features: int = 158
    """Alpha158, all columns in the panel (the GRU itself reads qlib's 20)."""
    valid_years: int = 2
    """ASSUMED validation segment, as csi300-2010's two years."""

    @property
    def days(self) -> int:
        return self.years * self.days_per_year

    @property
    def train(self) -> int:
        return self.stocks * self.days

    @property
    def valid(self) -> int:
        return self.stocks * self.valid_years * self.days_per_year


@dataclass
class Measured:
    grad_bytes: int
    grad_bytes_158: int
    allreduce_us: dict[int, float]
    """message bytes → median gloo all-reduce µs between 2 local processes."""
    cpu_step_ms: dict[int, tuple[float, float]]
    """batch → (median wall ms, median process-CPU ms) of distgru's eager step on 1 thread."""
    gather_ms: dict[int, tuple[float, float]]
    """features → (median wall ms, median CPU ms) to cut a batch of 800 windows on the host into a fresh buffer (the
    streamed path's windows.cut)."""
    valid_metric: tuple[float, float]
    """(median wall s, median CPU s) of the per-epoch validation metric on the full-market valid set (every rank
    computes it)."""

    # The model takes host-side costs as CPU time: on this shared, oversubscribed box wall time is 2-6× CPU time
    # and says more about the neighbours than about a dedicated core of a GPU node.
    def gather_s(self, features: int) -> float:
        return self.gather_ms[features][1] / 1e3

    @property
    def valid_metric_s(self) -> float:
        return self.valid_metric[1]


def n_params(d_feat: int) -> int:
    from distgru.config.schema import ModelConfig
    from distgru.models import build_model, count_parameters

    return count_parameters(build_model(ModelConfig(d_feat=d_feat), STEP_LEN))


def _allreduce_worker(rank: int, port: int, sizes: list[int], reps: int, out: Any) -> None:
    import torch.distributed as dist

    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=2)
    result = {}
    for nbytes in sizes:
        t = torch.ones(nbytes // 4)
        times = []
        for i in range(reps + 5):  # 5 warm-up rounds: connection set-up, allocator
            dist.barrier()  # both ranks enter together, so a rep times the collective, not the other's lag
            t0 = time.perf_counter()
            dist.all_reduce(t)
            if i >= 5:
                times.append(time.perf_counter() - t0)
        result[nbytes] = statistics.median(times) * 1e6
    if rank == 0:
        out.put(result)
    dist.barrier()
    dist.destroy_process_group()


def gloo_allreduce_us(sizes: list[int], reps: int) -> dict[int, float]:
    import torch.multiprocessing as mp

    with socket.socket() as s:  # a free port for the rendezvous
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    ctx = mp.get_context("spawn")
    queue = ctx.SimpleQueue()
    mp.spawn(_allreduce_worker, args=(port, sizes, reps, queue), nprocs=2, join=True)
    return queue.get()


def cpu_step_ms(batches: list[int], reps: int) -> dict[int, tuple[float, float]]:
    """distgru's eager training step on random windows, as steps.EagerSteps.step runs it on 7 steps of 8 (no
    gradient norm): forward, qlib's weighted MSE (losses.batch_loss), backward, clip by value 3.0, Adam."""
    from distgru.config.schema import ModelConfig
    from distgru.models import build_model
    from distgru.training.losses import batch_loss

    torch.set_num_threads(1)  # the setting BENCHMARKS.md §4 compares with qlib at
    torch.manual_seed(0)
    model = build_model(ModelConfig(d_feat=D_FEAT_QLIB), STEP_LEN)
    opt = torch.optim.Adam(model.parameters(), lr=2e-4)
    params = list(model.parameters())
    out = {}
    for batch in batches:
        x, y, w = torch.randn(batch, STEP_LEN, D_FEAT_QLIB), torch.randn(batch), torch.ones(batch)
        walls, cpus = [], []
        for i in range(reps + 1):  # one warm-up step per shape
            t0, c0 = time.perf_counter(), time.process_time()
            loss = batch_loss(model(x), y, w)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_value_(params, 3.0)
            opt.step()
            if i:
                walls.append(time.perf_counter() - t0)
                cpus.append(time.process_time() - c0)
        out[batch] = (statistics.median(walls) * 1e3, statistics.median(cpus) * 1e3)
    return out


def host_cut_ms(features: int, reps: int, batch: int = QLIB_BATCH) -> tuple[float, float]:
    """The streamed path's host work per batch, as windows.cut does it: one index_select of the batch's [B, T]
    window rows from the flat [N*D, F] host panel into a fresh buffer (pinned on a GPU machine). The panel
    (300 instruments × 1000 days) is far larger than the caches, as a real one is; rows are random."""
    torch.set_num_threads(1)
    n_inst, n_days = 300, 1000
    rng = np.random.default_rng(0)
    panel = torch.from_numpy(rng.standard_normal((n_inst * n_days, features), dtype=np.float32))
    walls, cpus = [], []
    for i in range(reps + 2):  # two warm-up cuts
        inst = rng.integers(0, n_inst, batch)[:, None]
        day = rng.integers(STEP_LEN, n_days, batch)[:, None] - np.arange(STEP_LEN)[::-1]
        rows = torch.from_numpy((inst * n_days + day).astype(np.int32))
        t0, c0 = time.perf_counter(), time.process_time()
        out = torch.empty((rows.numel(), features))
        torch.index_select(panel, 0, rows.reshape(-1), out=out)
        if i >= 2:
            walls.append(time.perf_counter() - t0)
            cpus.append(time.process_time() - c0)
    return statistics.median(walls) * 1e3, statistics.median(cpus) * 1e3


def valid_metric_s(market: Market, reps: int) -> tuple[float, float]:
    """loop._valid_metrics on the full-market valid set: the canonical sort, the MSE and both daily ICs. Every rank
    computes it from the gathered predictions, so it does not shrink with more GPUs."""
    from distgru.training.losses import valid_metrics

    rng = np.random.default_rng(0)
    days = market.valid_years * market.days_per_year
    inst = np.repeat(np.arange(market.stocks), days).astype(np.float64)
    day = np.tile(np.arange(days), market.stocks).astype(np.float64)
    pred = rng.standard_normal(len(inst))
    label = (0.1 * pred + rng.standard_normal(len(inst))).astype(np.float32)
    rows = np.stack([inst, day, pred], axis=1)[rng.permutation(len(inst))]  # ranks' shares arrive interleaved
    order_label = {}
    walls, cpus = [], []
    for _ in range(reps):
        t0, c0 = time.perf_counter(), time.process_time()
        r = rows[np.lexsort((rows[:, 1], rows[:, 0]))]
        i, d = r[:, 0].astype(np.int64), r[:, 1].astype(np.int64)
        lab = label[i * days + d]  # stands in for panel.label_learn[inst, day] / label_raw[inst, day]
        order_label = valid_metrics(r[:, 2], lab, lab, d)
        walls.append(time.perf_counter() - t0)
        cpus.append(time.process_time() - c0)
    assert np.isfinite(order_label["ic"])
    return statistics.median(walls), statistics.median(cpus)


def measure(market: Market, allreduce_reps: int, step_reps: int) -> Measured:
    grad = n_params(D_FEAT_QLIB) * 4  # fp32 gradients: DDP reduces them in fp32 under bf16 autocast too
    log(f"gradient: {grad:,} bytes; gloo all-reduce, 2 processes, {allreduce_reps} reps …")
    allreduce = gloo_allreduce_us([grad, 4 * 2**20], allreduce_reps)
    log("CPU step times (1 thread) …")
    steps = cpu_step_ms([100, 400, 800, 6400], step_reps)
    log("host window cut (streamed path) …")
    gather = {f: host_cut_ms(f, 15) for f in (D_FEAT_QLIB, market.features)}
    log("validation metric on the full-market valid set …")
    vm = valid_metric_s(market, 3)
    return Measured(grad, n_params(market.features) * 4, allreduce, steps, gather, vm)


def cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            return next(line.split(":", 1)[1].strip() for line in f if line.startswith("model name"))
    except (OSError, StopIteration):
        return platform.processor() or platform.machine()


def log(msg: str) -> None:
    print(f"[scaling_model] {msg}", file=sys.stderr, flush=True)
