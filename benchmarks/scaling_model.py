"""Issue 12's scaling note: what 1, 8, 64 and 512 GPUs give on a full-market set, from measured step times.

    python benchmarks/scaling_model.py                    # measure here (~1-3 min on 2 busy cores), model, print
    python benchmarks/scaling_model.py --out scaling.md   # also write the markdown to a file

Two kinds of number, kept apart in the output:

MEASURED here, on this machine's CPU (1 torch thread, medians): the GRU's gradient size at qlib's config
(distgru's own model), a gloo all-reduce of that gradient between 2 local processes, distgru's eager training step
(forward, qlib's loss, backward, clip by value, Adam) at batch 800 and larger, the host-side window cut a streamed
panel pays per batch, and the per-epoch validation metric every rank computes.

MODELLED for GPUs, from the H200 figures measured by issue 12's filer (torch 2.11, qlib's batch 800, panel
resident: eager step 2.28 ms; whole step in one CUDA graph with fused capturable Adam 0.98 ms; bf16 at batch 16384
1.34M samples/s) and from public interconnect specs (HGX H200: NVLink 4 through NVSwitch, 900 GB/s per GPU both
directions together; across nodes one 400 Gb/s InfiniBand NDR port per GPU; PCIe Gen5 x16 host link). Latencies
per collective hop, DDP's host overhead and a node's core count are assumptions, options below, and say so.

The step model (why max, not a sum): an eager step is launched by the host and run by the GPU asynchronously, and
distgru's loop never syncs inside an epoch, so a step takes the longer of the host's launch time and the GPU's
time. At batch 800 the eager step (2.28 ms) is more than twice the GPU's own time (≤ 0.98 ms: the whole step as one
CUDA graph, with no launches), so the step is host-bound: a smaller per-rank batch leaves it unchanged, and DDP at
a fixed global batch of 800 cannot shorten an epoch. GPU time grows with the batch at the bf16 rate: an affine line
through 0.98 ms at 800 with slope 1/1.34M s per sample (per-GPU batches past the host/GPU crossover therefore
assume ``train.precision: bf16``; fp32 there was not measured). A whole-step CUDA graph needs a single worker
(steps.step_mode), so DDP rows are eager and single-worker rows come both ways. A streamed panel's windows are cut
on the host by a prefetch thread and uploaded on a side stream (windows.WindowSource.windows), so the cut and the
copy overlap the step rather than add to it. If the 2.28 ms figure included the two gradient norms on every step
(benchmarks/gpu_check.py's bare step takes them), today's eager step, which takes them on every 8th step only
(steps.GRAD_STATS_EVERY), is somewhat faster and the eager rows are pessimistic.
"""

from __future__ import annotations

import argparse
import math
import os
import platform
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from scaling_measure import (  # this script's folder
    D_FEAT_QLIB,
    QLIB_BATCH,
    STEP_LEN,
    Market,
    Measured,
    cpu_model,
    log,
    measure,
)

# ---------------------------------------------------------------------------------------------------------------
# Inputs of the model that are not measured here: each one says where it comes from.


@dataclass(frozen=True)
class GpuFigures:
    """Issue 12's H200 measurements (torch 2.11, qlib's config, panel resident on the card)."""

    eager_step_ms: float = 2.28
    """distgru-style eager step at batch 800 (≈ 350k samples/s): the host's launch time bounds it."""
    graph_step_ms: float = 0.98
    """The same step captured as one CUDA graph with fused capturable Adam (≈ 818k samples/s): no launches, so
    this is the GPU's own time for a batch of 800 (an upper bound: it includes the kernels' gaps)."""
    bf16_rate: float = 1.34e6
    """bf16 samples/s at batch 16384: the GPU's compute rate once the batch is large."""
    qlib_epoch_s: float = 17.7
    """qlib's own pytorch_gru_ts on the same card, csi300-2010 (355 s fit), for reference."""
    csi300_train: int = 447_230
    """csi300-2010's train samples (559 steps of 800)."""


@dataclass(frozen=True)
class Cluster:
    """An HGX H200 cluster: specs where a spec exists, assumptions (named) where none does."""

    gpus_per_node: int = 8
    """HGX H200: 8 GPUs on one NVSwitch fabric."""
    gpu_memory: float = 141e9
    """H200: 141 GB HBM3e (spec)."""
    nvlink_bps: float = 450e9
    """Spec: NVLink 4, 900 GB/s per GPU counting both directions, so 450 GB/s each way."""
    ib_bps: float = 50e9
    """Spec: one 400 Gb/s InfiniBand NDR port per GPU = 50 GB/s each way."""
    pcie_bps: float = 64e9
    """Spec: PCIe Gen5 x16, 64 GB/s each way (host → GPU for streamed windows)."""
    nvlink_hop_s: float = 1e-6
    """ASSUMED latency of one ring step inside a node (a small all-reduce over 8 GPUs then takes ≈ 14 µs)."""
    ib_hop_s: float = 5e-6
    """ASSUMED latency of one step across nodes (NIC + switch + NCCL's proxy)."""
    ddp_host_ms: float = 0.1
    """ASSUMED host time DDP adds per step (gradient hooks, bucket copy, the NCCL launch)."""
    cores_per_node: int = 112
    """ASSUMED host cores of an HGX H200 node (2 × 56-core CPUs; vendors ship several)."""
    forward_fraction: float = 1 / 3
    """ASSUMED cost of a forward pass relative to a training step (backward ≈ 2 × forward; Adam is small)."""


# ---------------------------------------------------------------------------------------------------------------
# The model.


SCORE_CHUNK = 16384
"""scoring.SCORE_CHUNK: samples per validation forward pass (the global batch when that is larger)."""


class StepModel:
    def __init__(self, gpu: GpuFigures, cl: Cluster) -> None:
        self.gpu, self.cl = gpu, cl
        self.host_s = gpu.eager_step_ms / 1e3
        """An eager step's host launch time, whatever the batch."""
        # GPU time affine in the batch: through the graph step at 800, slope = the bf16 compute rate.
        self.gpu0_s = gpu.graph_step_ms / 1e3 - QLIB_BATCH / gpu.bf16_rate

    def gpu_s(self, batch: int) -> float:
        return self.gpu0_s + batch / self.gpu.bf16_rate

    def crossover_batch(self) -> float:
        """Per-GPU batch above which the eager step is GPU-bound rather than host-bound."""
        return (self.host_s - self.gpu0_s) * self.gpu.bf16_rate

    def allreduce_s(self, n: int, nbytes: int) -> float:
        """NCCL-style all-reduce of ``nbytes``: a ring inside one node (2(n−1) latency steps, 2(n−1)/n of the bytes
        over NVLink); across nodes hierarchical: reduce-scatter and all-gather inside each node, and between the
        nodes each GPU all-reduces its 1/8 shard over its own NIC, as a ring or a tree (log-depth latency),
        whichever is faster (NCCL's tuner picks likewise)."""
        if n == 1:
            return 0.0
        cl, g = self.cl, min(n, self.cl.gpus_per_node)
        intra = 2 * (g - 1) * cl.nvlink_hop_s + 2 * (g - 1) / g * nbytes / cl.nvlink_bps
        if n <= g:
            return intra
        m, shard = n // g, nbytes / g
        ring = 2 * (m - 1) * cl.ib_hop_s + 2 * (m - 1) / m * shard / cl.ib_bps
        tree = 2 * math.ceil(math.log2(m)) * cl.ib_hop_s + 2 * shard / cl.ib_bps
        return intra + min(ring, tree)

    def step_s(self, n: int, batch: int, nbytes: int, *, graph: bool = False, cut_s: float = 0.0,
               h2d_s: float = 0.0) -> float:
        """One step of per-rank ``batch`` on ``n`` GPUs. Graph (one worker only, steps.step_mode): the GPU's time.
        Eager: the longest of the host's launches (+ DDP's hooks), a streamed batch's host cut (a prefetch thread
        on its own core) and its upload (a side stream), and the GPU's time + the all-reduce (one 166 KB bucket,
        ready only when backward ends, so it cannot overlap it)."""
        if graph:
            return self.gpu_s(batch)
        host = self.host_s + (self.cl.ddp_host_ms / 1e3 if n > 1 else 0.0)
        return max(host, cut_s, h2d_s, self.gpu_s(batch) + self.allreduce_s(n, nbytes))

    def valid_s(self, share: int, chunk: int, sharing: int = 1) -> float:
        """A rank's validation forward over ``share`` samples in chunks (``sharing`` processes on one card)."""
        fwd = self.cl.forward_fraction * max(self.host_s, sharing * self.gpu_s(min(chunk, share)))
        return math.ceil(share / chunk) * fwd


@dataclass
class Row:
    mode: str
    gpus: int
    batch: str
    steps: int
    step_ms: float
    allreduce_us: float
    train_s: float
    epoch_s: float
    samples_s: float
    speedup: tuple[float, float]
    """(train pass, epoch) speed-up over the mode's reference 1-GPU row; trials: aggregate throughput (both)."""
    bottleneck: str


def ddp_rows(mode: str, sm: StepModel, mk: Market, ms: Measured, gpus: list[int], *, base: Row | None = None,
             global_batch: int | None = None, per_gpu: int | None = None, streamed: bool = False,
             graph: bool = False) -> list[Row]:
    """distgru's DDP rules (loop.py): rank batch = global // world, steps = samples // (rank batch × world); each
    epoch adds a sharded validation forward pass and the replicated validation metric. ``base``: the 1-GPU row
    the speed-ups refer to (default: this mode's first row)."""
    rows: list[Row] = []
    for n in gpus:
        local = global_batch // n if global_batch else per_gpu
        assert local, "loop.py rejects a global batch below the worker count"
        steps = mk.train // (local * n)
        cut = h2d = 0.0
        if streamed:  # the host cuts each rank's windows (measured here, scaled by the batch) and uploads them
            cut = ms.gather_s(mk.features) * local / QLIB_BATCH
            h2d = local * STEP_LEN * mk.features * 4 / sm.cl.pcie_bps
        step = sm.step_s(n, local, ms.grad_bytes, graph=graph, cut_s=cut, h2d_s=h2d)
        ar = sm.allreduce_s(n, ms.grad_bytes)
        share = math.ceil(mk.valid / n)
        valid = sm.valid_s(share, max(local * n, SCORE_CHUNK)) + ms.valid_metric_s
        train = steps * step
        epoch = train + valid
        ref = base or (rows[0] if rows else None)
        rows.append(Row(mode, n, f"{local:,} / {local * n:,}", steps, step * 1e3, ar * 1e6, train, epoch,
                        steps * local * n / train, (ref.train_s / train, ref.epoch_s / epoch) if ref else (1, 1),
                        ddp_bottleneck(sm, local, steps, step, ar, cut, train, valid, ms, graph)))
    return rows


def ddp_bottleneck(sm: StepModel, local: int, steps: int, step: float, ar: float, cut: float, train: float,
                   valid: float, ms: Measured, graph: bool) -> str:
    """The step's limiter, then what limits the epoch when it is not the train pass."""
    gpu = sm.gpu_s(local) + ar
    if graph:
        what = "step: GPU (one launch a step)"
    elif cut > 0 and cut >= step - 1e-12:
        what = f"step: host window cut ({cut * 1e3:.1f} ms, a core per rank)"
    elif step > gpu + 1e-12:
        what = f"step: host launch floor (GPU {gpu / step:.0%} busy)"
    else:
        what = f"step: GPU compute (all-reduce {ar / step:.1%})"
    if valid > train:
        what += f"; epoch: validation, its {ms.valid_metric_s:.1f} s metric on every rank"
    if steps < 100:
        what += f"; only {steps} steps an epoch"
    return what


def trial_rows(sm: StepModel, mk: Market, ms: Measured, gpus: list[int], per_gpu: int, graph: bool) -> list[Row]:
    """N·k independent single-GPU trials at qlib's batch 800, k per card as fractions (tune.resources.gpu: 1/k).
    Without MPS the card time-slices the trials' kernels, so k trials share one GPU's time: a trial's step is the
    longer of its own host floor (eager) and k GPU steps."""
    rows: list[Row] = []
    gpu = per_gpu * sm.gpu_s(QLIB_BATCH)
    step = gpu if graph else max(sm.host_s, gpu)
    steps = mk.train // QLIB_BATCH
    valid = sm.valid_s(mk.valid, SCORE_CHUNK, per_gpu) + ms.valid_metric_s
    ckpt_mb = 4 * ms.grad_bytes / 1e6  # a TrainState: weights, Adam's two moments, the best weights
    for n in gpus:
        trials = n * per_gpu
        train = steps * step
        epoch = train + valid
        rate = trials * steps * QLIB_BATCH / train
        base = rows[0].samples_s if rows else rate
        busy = gpu / step
        if busy < 0.95:
            what = f"each trial's host launch floor (GPU {busy:.0%} busy: pack trials)"
        else:
            what = "the GPU" + (", time-sliced between the trials" if per_gpu > 1 else "")
        if n > 1:
            what += (f"; {trials / epoch:.1f} trial-epochs/s reach Tune's driver, "
                     f"checkpoints ≤ {trials / epoch * ckpt_mb:.1f} MB/s to shared storage")
        kind = "graph" if graph else "eager"
        rows.append(Row(f"parallel trials ({kind}), {per_gpu} per GPU", n, f"{QLIB_BATCH} × {per_gpu} trials",
                        steps, step * 1e3, 0.0, train, epoch, rate, (rate / base, rate / base), what))
    return rows


def table(rows: list[Row]) -> str:
    head = ("| mode | GPUs (nodes) | batch per GPU / global | steps an epoch | step ms | all-reduce µs | train pass s"
            " | epoch s (+ valid) | train samples/s, all GPUs | × 1 GPU: train / epoch | first bottleneck |")
    lines = [head, "|" + "---|" * 11]
    for r in rows:
        nodes = math.ceil(r.gpus / Cluster().gpus_per_node)
        lines.append(f"| {r.mode} | {r.gpus} ({nodes}) | {r.batch} | {r.steps:,} | {r.step_ms:.2f} "
                     f"| {r.allreduce_us:.0f} | {r.train_s:,.1f} | {r.epoch_s:,.1f} | {r.samples_s / 1e6:,.2f}M "
                     f"| {r.speedup[0]:.2f} / {r.speedup[1]:.2f} | {r.bottleneck} |")
    return "\n".join(lines)


def memory_lines(mk: Market, cl: Cluster) -> list[str]:
    n, d = mk.stocks, mk.days
    panel = n * d * mk.features * 4
    # On the device besides the panel: the look-up tables last_le/first_ge (int64 [N, D]); each train sample's
    # window rows (int32 [S, T]) and the epoch's arrangement of them, its label and weight; the valid samples' rows.
    extra = 2 * n * d * 8 + 2 * mk.train * STEP_LEN * 4 + mk.train * 8 + mk.valid * STEP_LEN * 4
    total = panel + extra
    windows = mk.train * STEP_LEN * mk.features * 4
    half = cl.gpu_memory / 2
    rows_at_half = half / (mk.features * 4)
    k_max = 1 + int((cl.gpu_memory - 2 * panel) // total)  # resources.panel_on_device auto: panel ≤ ½ free memory
    return [
        f"- Panel (modelled arithmetic): [{n:,} stocks, {d:,} days, {mk.features} features] float32 = "
        f"{panel / 1e9:.1f} GB; with the window look-up tables, the samples' window rows, labels and weights "
        f"{total / 1e9:.1f} GB = {total / cl.gpu_memory:.0%} of an H200's 141 GB: resident "
        f"(`resources.panel_on_device: auto` keeps a panel up to half the free memory, ≈ {half / 1e9:.0f} GB). "
        f"qlib-style materialised windows (step_len {STEP_LEN}) would be {windows / 1e9:.0f} GB; distgru cuts "
        "windows from the panel per batch and never builds them.",
        f"- A {mk.features}-feature panel is streamed from pinned host memory instead above ≈ "
        f"{rows_at_half / 1e6:.0f}M stock-days (≈ {rows_at_half / d:,.0f} stocks × {mk.years} years).",
        f"- DDP does not shard the panel: every rank holds all of it (on its card, or pinned in host memory when "
        f"streamed: {cl.gpus_per_node} copies a node, {cl.gpus_per_node * half / 1e9:.0f} GB for a panel just too "
        "big for a card). In distgru DDP is no memory remedy; for a panel too big for a card it spreads the "
        "host-side window cut over the ranks' cores (the 'streamed' rows).",
        f"- Packed trials each hold their own copy on the card: the auto rule keeps at most {k_max} full-market "
        "panels resident on one H200.",
    ]


def report(ms: Measured, gpu: GpuFigures, cl: Cluster, mk: Market, gpus: list[int]) -> str:
    sm = StepModel(gpu, cl)
    many = [n for n in gpus if n > 1]
    eager1 = ddp_rows("1 GPU, eager steps", sm, mk, ms, [1], global_batch=QLIB_BATCH)
    graph1 = ddp_rows("1 GPU, whole step as one CUDA graph", sm, mk, ms, [1], base=eager1[0],
                      global_batch=QLIB_BATCH, graph=True)
    rows = eager1 + graph1
    rows += ddp_rows("DDP, global batch 800", sm, mk, ms, many, base=eager1[0], global_batch=QLIB_BATCH)
    rows += ddp_rows("DDP, 800 per GPU", sm, mk, ms, many, base=eager1[0], per_gpu=QLIB_BATCH)
    rows += ddp_rows("DDP, 4,096 per GPU (bf16)", sm, mk, ms, gpus, per_gpu=4096)
    rows += ddp_rows("DDP, 800 per GPU, panel streamed", sm, mk, ms, gpus, per_gpu=QLIB_BATCH, streamed=True)
    k = math.ceil(sm.host_s / sm.gpu_s(QLIB_BATCH))  # eager trials per card that fill its idle time
    rows += trial_rows(sm, mk, ms, gpus, 1, graph=False)
    rows += trial_rows(sm, mk, ms, gpus, k, graph=False)
    rows += trial_rows(sm, mk, ms, gpus, 1, graph=True)

    ar_small, ar_big = ms.allreduce_us[ms.grad_bytes], ms.allreduce_us[4 * 2**20]
    cpu_bw = 2 * 0.5 * (4 * 2**20 - ms.grad_bytes) / ((ar_big - ar_small) / 1e6)  # ring: 2(n−1)/n of the bytes
    s800, s400 = ms.cpu_step_ms[QLIB_BATCH][1], ms.cpu_step_ms[400][1]
    csi_steps = gpu.csi300_train // QLIB_BATCH
    csi8 = csi_steps * sm.step_s(8, QLIB_BATCH // 8, ms.grad_bytes)
    ddp8 = next(r for r in rows if r.mode == "DDP, global batch 800" and r.gpus == 8)
    steps_txt = ", ".join(f"{b:,}: {w:.0f} / {c:.0f} ms ({b / c * 1e3:,.0f} samples per CPU-s)"
                          for b, (w, c) in ms.cpu_step_ms.items())
    per_sample = {b: b / c * 1e3 for b, (_, c) in ms.cpu_step_ms.items()}
    big = [v for b, v in per_sample.items() if b >= 400]
    out = [
        f"Machine: {cpu_model()}, {os.cpu_count()} logical CPUs, no GPU; "
        f"Python {platform.python_version()}, torch {torch.__version__}, numpy {np.__version__}.",
        "",
        "**Measured here (CPU, medians):**",
        "",
        f"- Gradient of qlib's GRU (d_feat {D_FEAT_QLIB}, hidden 64, 2 layers): {ms.grad_bytes // 4:,} parameters "
        f"= **{ms.grad_bytes:,} bytes** fp32 (with all {mk.features} features as input: {ms.grad_bytes_158:,}).",
        f"- gloo all-reduce, 2 local processes: {ms.grad_bytes:,} B **{ar_small:,.0f} µs**; 4 MiB "
        f"{ar_big:,.0f} µs (≈ {cpu_bw / 1e9:.2f} GB/s ring bus bandwidth on loopback).",
        f"- distgru's eager step on 1 thread (batch: wall / CPU): {steps_txt}. From batch 400 up, samples per "
        f"CPU-second stay within {max(big) / min(big):.2f}× of each other: the CPU step is compute-bound, not "
        f"launch-bound; at batch 100 a fixed per-step cost shows ({per_sample[100]:,.0f} samples per CPU-s).",
        f"- Hence on CPUs (modelled from these numbers) DDP at batch 800 does shorten an epoch: 2 ranks of 400 + "
        f"the all-reduce ≈ {s400 + ar_small / 1e3:.0f} ms CPU vs {s800:.0f} ms for one rank of 800 "
        f"(×{s800 / (s400 + ar_small / 1e3):.2f}), if each rank has a core of its own.",
        "- Host window cut of a batch of 800 (one index_select of its rows into a fresh buffer, as the streamed "
        "path does), wall / CPU: "
        + ", ".join(f"{w:.1f} / {c:.1f} ms at {f} features" for f, (w, c) in ms.gather_ms.items()) + ".",
        f"- Validation metric (canonical sort, MSE, daily IC and Rank IC, as `loop._valid_metrics`) on "
        f"{mk.valid:,} valid samples, wall / CPU: {ms.valid_metric[0]:.1f} / **{ms.valid_metric[1]:.1f} s**; "
        "every rank computes it, every epoch.",
        "- Host-side costs enter the model as CPU time (one dedicated core); wall time here is inflated by the "
        f"machine's other jobs (load average {os.getloadavg()[0]:.1f} on {os.cpu_count()} CPUs at the end).",
        "",
        f"**Modelled ({mk.stocks:,} stocks × {mk.years} years × {mk.days_per_year} days = {mk.train / 1e6:.1f}M "
        f"train samples, {mk.valid / 1e6:.2f}M valid, step_len {STEP_LEN}):** H200 step times from issue 12 (eager "
        f"{gpu.eager_step_ms} ms, CUDA graph {gpu.graph_step_ms} ms at 800, bf16 {gpu.bf16_rate / 1e6:.2f}M "
        f"samples/s at 16,384); the all-reduce of the measured gradient over NVLink {cl.nvlink_bps / 1e9:.0f} GB/s "
        f"a direction inside a node and {cl.ib_bps * 8 / 1e9:.0f} Gb/s InfiniBand per GPU across nodes (specs); "
        f"assumed: {cl.nvlink_hop_s * 1e6:g} µs / {cl.ib_hop_s * 1e6:g} µs per hop, {cl.ddp_host_ms} ms of DDP host "
        f"time a step, a forward pass = {cl.forward_fraction:.2f} of a step. Epoch = train pass + validation "
        "forward (chunks of max(global batch, 16,384)) + the measured metric. DDP runs eager steps (a CUDA graph "
        "needs one worker); × 1 GPU is against the eager 1-GPU row of the same per-GPU batch.",
        "",
        table(rows),
        "",
        f"- Host/GPU crossover: an eager step is host-bound below ≈ {sm.crossover_batch():,.0f} samples per GPU; "
        "only above it does a GPU's batch (and so DDP's global batch) buy throughput.",
        f"- DDP at qlib's batch: 8 GPUs take {ddp8.train_s:.1f} s a train pass against one GPU's "
        f"{eager1[0].train_s:.1f} s eager or {graph1[0].train_s:.1f} s with the whole step as one CUDA graph, "
        f"which only a single worker can use: {ddp8.train_s / graph1[0].train_s:.1f}× slower than one GPU.",
        f"- csi300-2010 ({gpu.csi300_train:,} samples, {csi_steps} steps): one GPU "
        f"{csi_steps * gpu.eager_step_ms / 1e3:.2f} s a train pass eager, {csi_steps * gpu.graph_step_ms / 1e3:.2f} s "
        f"graphed; DDP on 8 GPUs at global 800 {csi8:.2f} s (the same {csi_steps} host-bound steps). qlib's own "
        f"GRU there: {gpu.qlib_epoch_s} s an epoch.",
        f"- Packing: {k} eager trials per card fill the GPU time one eager trial leaves idle ({gpu.graph_step_ms} ms "
        f"of GPU in a {gpu.eager_step_ms} ms step); they need {k * cl.gpus_per_node} of a node's ≈ "
        f"{cl.cores_per_node} cores (an eager trial's loop keeps one busy). A graphed trial fills its card alone. "
        "With MPS, trials' small kernels could also run side by side (not modelled, not measured).",
        *memory_lines(mk, cl),
    ]
    return "\n".join(out)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", type=Path, help="also write the markdown here (default: print only)")
    ap.add_argument("--gpus", type=int, nargs="+", default=[1, 8, 64, 512], help="GPU counts to model")
    ap.add_argument("--allreduce-reps", type=int, default=50, help="gloo all-reduce repetitions (median)")
    ap.add_argument("--step-reps", type=int, default=3, help="CPU step repetitions per batch (median)")
    defaults = Cluster()
    for name in ("nvlink_hop_s", "ib_hop_s", "ddp_host_ms", "cores_per_node"):
        ap.add_argument("--" + name.replace("_", "-"), type=type(getattr(defaults, name)),
                        default=getattr(defaults, name), help=f"assumption (default {getattr(defaults, name)})")
    args = ap.parse_args()
    cluster = Cluster(nvlink_hop_s=args.nvlink_hop_s, ib_hop_s=args.ib_hop_s, ddp_host_ms=args.ddp_host_ms,
                      cores_per_node=args.cores_per_node)
    t0 = time.perf_counter()
    market = Market()
    measured = measure(market, args.allreduce_reps, args.step_reps)
    text = report(measured, GpuFigures(), cluster, market, args.gpus)
    log(f"done in {time.perf_counter() - t0:.0f} s")
    print(text)
    if args.out:
        args.out.write_text(text + "\n")


if __name__ == "__main__":
    main()
