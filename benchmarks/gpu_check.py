"""The Python half of benchmarks/gpu_check.sh: timings and one-line summaries, each printed as a table row.

    python benchmarks/gpu_check.py step                # bare step, distgru's eager and graphed steps, its loop
    python benchmarks/gpu_check.py run-summary DIR     # newest run's result.json under DIR
    python benchmarks/gpu_check.py qlib-summary DIR    # benchmarks/qlib_gru.py's JSON in DIR
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))  # run from anywhere without an installed distgru

BATCH, STEP_LEN, D_FEAT = 800, 20, 20  # configs/gru_alpha158.yaml's shapes


def row(name: str, value: str) -> None:
    print(f"{name:<34} | {value}", flush=True)


def bare_step_ms(precision: str, fused: bool, steps: int = 200) -> float:
    """Milliseconds per forward/backward/clip/Adam step of the GRU with nothing around it: the floor distgru's
    loop is measured against (same model, batch, clipping and scaler as the loop)."""
    # Only torch and distgru.models here: the bare step must run on an image without numba (distgru's loop
    # imports the feature kernels through its panel types).
    from distgru.config.schema import ModelConfig
    from distgru.models import build_model

    dev = torch.device("cuda", 0)
    torch.manual_seed(0)
    model = build_model(ModelConfig(d_feat=D_FEAT), STEP_LEN).to(dev)
    opt = torch.optim.Adam(model.parameters(), lr=2e-4, fused=fused)
    dtype = {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}[precision]
    scaler = torch.amp.GradScaler("cuda", enabled=precision == "fp16")
    x, y = torch.randn(BATCH, STEP_LEN, D_FEAT, device=dev), torch.randn(BATCH, device=dev)
    params = list(model.parameters())

    def step() -> None:
        with torch.autocast("cuda", dtype=dtype or torch.float32, enabled=dtype is not None):
            pred = model(x)
        loss = ((pred.float() - y) ** 2).mean()
        opt.zero_grad(set_to_none=True)
        scaler.scale(loss).backward()
        scaler.unscale_(opt)
        torch.nn.utils.clip_grad_value_(params, 3.0)  # distgru measures the norms on every 8th step only
        scaler.step(opt)
        scaler.update()

    for _ in range(20):  # cuDNN plans, allocator warm-up
        step()
    torch.cuda.synchronize()
    t0 = time.perf_counter()
    for _ in range(steps):
        step()
    torch.cuda.synchronize()
    return (time.perf_counter() - t0) / steps * 1e3


def random_panel(n_inst: int = 300, n_days: int = 1200):  # -> ProcessedPanel
    """A csi300-sized panel of noise with a learnable label: distgru's loop end to end without data or Ray."""
    from distgru.processing.panel import ProcessedPanel

    rng = np.random.default_rng(0)
    features = rng.standard_normal((n_inst, n_days, D_FEAT)).astype(np.float32)
    label = (0.5 * features[:, :, 0] + rng.standard_normal((n_inst, n_days))).astype(np.float32)
    part = n_days // 6
    segments = {"train": (part, 4 * part), "valid": (4 * part, 5 * part), "test": (5 * part, n_days)}
    return ProcessedPanel(calendar=pd.bdate_range("2010-01-04", periods=n_days),
                          instruments=tuple(f"S{i:03d}" for i in range(n_inst)),
                          feature_names=tuple(f"f{k}" for k in range(D_FEAT)), features=features,
                          label_raw=label, label_learn=(label - label.mean(0)) / label.std(0),
                          membership=np.ones((n_inst, n_days), dtype=bool),
                          segments=segments)


def distgru_step_ms(mode: str, precision: str, steps: int = 200) -> float:
    """Milliseconds per step of distgru's own step runner (training/steps.py: the window gather from the resident
    panel, forward, loss, backward, clip, fused Adam, the on-device statistics), eager or one CUDA graph; the
    second epoch is timed (the first pays for cuDNN plans, the warm-up and the capture)."""
    from distgru.config.schema import ModelConfig, TrainConfig
    from distgru.models import build_model
    from distgru.training import parallel as par
    from distgru.training.loop import _make_optimizer
    from distgru.training.steps import EagerSteps, EpochBatches, GraphedSteps
    from distgru.training.windows import WindowSource

    dev = torch.device("cuda", 0)
    panel = random_panel()
    tc = TrainConfig(batch_size=BATCH, precision=precision)
    torch.manual_seed(0)
    model = build_model(ModelConfig(d_feat=D_FEAT), STEP_LEN).to(dev)
    source = WindowSource.place(panel.features, panel.membership, STEP_LEN, dev, "always")
    inst, day = np.nonzero(panel.membership[:, STEP_LEN:])
    rows = source.rows(torch.from_numpy(inst), torch.from_numpy(day + STEP_LEN))
    label = torch.randn(len(inst), device=dev)
    take = torch.from_numpy(np.random.default_rng(0).permutation(len(inst))[:steps * BATCH].reshape(steps, BATCH))
    batches = EpochBatches.take(rows, label, torch.ones_like(label), take)
    runner = (GraphedSteps if mode == "graph" else EagerSteps)(
        model, _make_optimizer(model, tc, dev, capturable=mode == "graph"), par.Amp(precision, dev), tc, source)
    runner.epoch(batches)
    if mode == "graph" and runner.graph is None:
        raise RuntimeError("the step was not captured (see the warning above)")
    torch.cuda.synchronize()
    t0 = time.perf_counter()
    runner.epoch(batches)
    torch.cuda.synchronize()
    return (time.perf_counter() - t0) / steps * 1e3


def loop_rows(precision: str) -> list[dict]:
    """distgru's train_loop on cuda:0 for 2 epochs (``train.step`` auto): its metrics rows."""
    from distgru.config.schema import Config, DatasetConfig, ModelConfig, ResourcesConfig, TrainConfig
    from distgru.training.loop import make_shard, train_loop

    cfg = Config(model=ModelConfig(d_feat=D_FEAT), dataset=DatasetConfig(step_len=STEP_LEN),
                 train=TrainConfig(n_epochs=2, early_stop=5, batch_size=BATCH, precision=precision),
                 resources=ResourcesConfig(use_gpu=True))
    panel = random_panel()
    rows: list[dict] = []
    train_loop(cfg, panel, make_shard(cfg, panel), lambda metrics, state: rows.append(metrics),
               device=torch.device("cuda", 0))
    return rows


def timings() -> None:
    if not torch.cuda.is_available():
        row("step timing", "no CUDA device: stopping before the GPU checks")
        sys.exit(2)
    for precision, fused in [("fp32", False), ("fp32", True), ("bf16", True), ("fp16", True)]:
        ms = bare_step_ms(precision, fused)
        row(f"bare step {precision} {'fused' if fused else 'foreach'} Adam",
            f"{ms:.2f} ms/step = {BATCH / ms * 1e3:,.0f} samples/s (batch {BATCH})")
    try:
        import numba  # noqa: F401  (distgru's loop imports the feature kernels)
    except ImportError:
        row("distgru loop", "SKIPPED: numba not importable (carry its wheels in .devdeps/extra-whl)")
    else:
        for precision in ("fp32", "bf16"):
            for mode in ("eager", "graph"):
                ms = distgru_step_ms(mode, precision)
                row(f"distgru {mode} step {precision} fused", f"{ms:.2f} ms/step = {BATCH / ms * 1e3:,.0f} samples/s")
        for precision in ("fp32", "bf16"):
            first, second = loop_rows(precision)
            # The second epoch is steady; the first one's start-up is reported apart (see EpochRow).
            row(f"distgru loop {precision} (auto step)", f"{second['samples_per_s']:,.0f} samples/s end to end; "
                f"start-up {first['startup_s']:.1f} s, first-steps warm-up {first['warmup_s']:.2f} s")
    row("peak GPU memory", f"{torch.cuda.max_memory_allocated() / 2**20:,.0f} MiB")


def run_summary(parent: Path) -> None:
    results = sorted(parent.glob("*/result.json"), key=lambda p: p.stat().st_mtime)
    if not results:
        print(f"no result.json under {parent}")
        return
    r = json.loads(results[-1].read_text())
    test = r.get("test", {})
    print(f"fit {r.get('train_wall_s', float('nan')):.0f}s, {r.get('epochs')} epochs (best {r.get('best_epoch')}), "
          f"test IC {test.get('IC', float('nan')):.4f}, {r.get('train_samples_per_s', 0):,.0f} samples/s")


def qlib_summary(out: Path) -> None:
    files = sorted(out.glob("*_seed*.json"))
    if not files:
        print(f"no qlib_gru JSON in {out}")
        return
    r = json.loads(files[0].read_text())
    print(f"fit {r['fit_s']:.0f}s for {r['epochs']} epochs ({r['fit_s_per_epoch']:.1f} s/epoch, "
          f"{r.get('train_samples_per_s') or 0:,.0f} samples/s), data {r['data_s']:.0f}s, test IC {r['IC']:.4f}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("what", choices=["step", "run-summary", "qlib-summary"])
    parser.add_argument("dir", nargs="?", type=Path)
    args = parser.parse_args()
    if args.what == "step":
        timings()
    elif args.dir is None:
        parser.error(f"{args.what} needs DIR")
    else:
        (run_summary if args.what == "run-summary" else qlib_summary)(args.dir)


if __name__ == "__main__":
    main()
