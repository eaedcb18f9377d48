"""The GPU paths' CPU-testable halves: fractional GPUs across DDP ranks, fp16 skipped steps in the logged grad norm,
resume with fewer GPUs, the fused optimizer switch, when a step is graphed and the graph's eager fallback; and,
with ``-m gpu`` on a CUDA machine, the graphed step against the eager one and the streamed panel against the
resident one (the recurrence dtypes: tests/test_precision.py)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from test_loop import run, tiny_config, tiny_panel
from torch import nn

from distgru.config import ConfigError, config_from_dict
from distgru.models import build_model
from distgru.training import loop as loop_module
from distgru.training import parallel as par
from distgru.training import steps as steps_module
from distgru.training.loop import make_shard
from distgru.training.scoring import predict, score_chunk
from distgru.training.state import TIMINGS, capture_rng, restore_rng
from distgru.training.steps import EagerSteps, EpochBatches, GraphedSteps, step_mode
from distgru.training.windows import WindowSource, available, sample_index

cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")


@pytest.mark.parametrize("gpus", [0.25, 0.5, 1.5])
def test_fractional_gpus_across_several_workers_are_refused_before_ray_starts(gpus: float) -> None:
    with pytest.raises(ConfigError, match=r"resources\.gpus_per_worker.*whole GPUs.*tune\.resources\.gpu: 0\.25"):
        config_from_dict({"resources": {"num_workers": 2, "use_gpu": True, "gpus_per_worker": gpus}})


@pytest.mark.parametrize("resources", [{"num_workers": 1, "use_gpu": True, "gpus_per_worker": 0.25},
                                       {"num_workers": 2, "use_gpu": False, "gpus_per_worker": 0.5},
                                       {"num_workers": 4, "use_gpu": True, "gpus_per_worker": 2.0}])
def test_whole_gpus_single_workers_and_cpu_runs_pass(resources: dict) -> None:
    assert config_from_dict({"resources": resources}).resources.gpus_per_worker == resources["gpus_per_worker"]


class SkippingAmp(par.Amp):
    """fp32 Amp that poisons every other step's gradients with inf and skips those steps, as the fp16 scaler does."""

    def __init__(self, precision: par.Precision, device: torch.device) -> None:
        super().__init__(precision, device)
        self.calls, self.applied_norms = 0, {}

    def backward(self, loss: torch.Tensor, optimizer: torch.optim.Optimizer) -> None:
        super().backward(loss, optimizer)
        self.calls += 1
        if self.calls % 2 == 0:
            next(p for g in optimizer.param_groups for p in g["params"] if p.grad is not None).grad[0] = float("inf")

    def step(self, optimizer: torch.optim.Optimizer) -> None:
        grads = [p.grad for g in optimizer.param_groups for p in g["params"] if p.grad is not None]
        if self.calls % 2:  # applied: remember its pre-clip norm as logged (clip 'none' leaves grads as they were)
            self.applied_norms[self.calls - 1] = float(torch.nn.utils.get_total_norm(grads))
            optimizer.step()


@pytest.mark.parametrize("every", [1, 3])
def test_a_skipped_fp16_step_does_not_make_the_logged_grad_norm_inf(monkeypatch: pytest.MonkeyPatch,
                                                                     every: int) -> None:
    amps: list[SkippingAmp] = []
    monkeypatch.setattr(par, "Amp", lambda precision, device: amps.append(SkippingAmp(precision, device)) or amps[0])
    monkeypatch.setattr(steps_module, "GRAD_STATS_EVERY", every)
    result, _ = run(tiny_config(n_epochs=1, clip="none"), tiny_panel())
    row, norms = result.history[0], amps[0].applied_norms
    assert amps[0].calls >= 10 and np.isfinite(row["train_loss"])
    # The mean over the measured steps (every `every`-th from step 0) that were applied (odd calls): with 3, steps
    # 3, 9, 15, ... were measured and skipped, and count in neither the sum nor the divisor.
    measured = [norm for step, norm in norms.items() if step % every == 0]
    assert 0 < len(measured) < len(norms) or every == 1
    assert row["grad_norm"] == pytest.approx(np.mean(measured), rel=1e-5)
    assert row["clip_frac"] == 0.0


def test_clipped_share_counts_applied_steps(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(par, "Amp", lambda precision, device: SkippingAmp(precision, device))
    result, _ = run(tiny_config(n_epochs=1, clip="value", clip_value=1e-6), tiny_panel())
    assert result.history[0]["clip_frac"] == 1.0 and np.isfinite(result.history[0]["grad_norm"])


def test_resume_with_fewer_visible_gpus_restores_the_streams_it_has(monkeypatch: pytest.MonkeyPatch) -> None:
    state = capture_rng()
    state["cuda"] = [torch.full((16,), i, dtype=torch.uint8) for i in range(4)]  # saved on a 4-GPU node
    restored: list[int] = []
    monkeypatch.setattr(torch.cuda, "set_rng_state", lambda s, i: restored.append((int(s[0]), i)))
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 0)
    restore_rng(state)  # a CPU-only node: nothing to restore, and no crash
    assert restored == []
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    restore_rng(state)
    assert restored == [(0, 0)]
    assert torch.equal(torch.get_rng_state(), state["torch"])


def test_fused_adam_is_cuda_only() -> None:
    cpu, gpu = torch.device("cpu"), torch.device("cuda", 0)
    assert [par.fused_optimizer(s, gpu) for s in ("auto", "on", "off")] == [True, True, False]
    assert [par.fused_optimizer(s, cpu) for s in ("auto", "off")] == [False, False]
    with pytest.raises(ValueError, match="fused_optimizer 'on' needs a CUDA device"):
        par.fused_optimizer("on", cpu)
    model = nn.Linear(2, 1)
    for setting, device, fused in [("auto", cpu, None), ("auto", gpu, True), ("off", gpu, None)]:
        opt = loop_module._make_optimizer(model, tiny_config(fused_optimizer=setting).train, device)
        assert opt.defaults["fused"] is fused
    assert isinstance(loop_module._make_optimizer(model, tiny_config(optimizer="sgd").train, gpu), torch.optim.SGD)


def test_a_step_is_graphed_on_one_cuda_worker_in_fp32_or_bf16_with_a_resident_panel() -> None:
    cpu, gpu = torch.device("cpu"), torch.device("cuda", 0)  # descriptors only: no GPU is touched
    assert step_mode("auto", gpu, 1, "fp32", False) == step_mode("graph", gpu, 1, "bf16", False) == "graph"
    for device, world, precision, streamed in [(cpu, 1, "fp32", False), (gpu, 2, "fp32", False),
                                               (gpu, 1, "fp16", False), (gpu, 1, "fp32", True)]:
        assert step_mode("auto", device, world, precision, streamed) == "eager"
        with pytest.raises(ValueError, match=r"train\.step 'graph' needs .*use 'auto' or 'eager'"):
            step_mode("graph", device, world, precision, streamed)
    assert step_mode("eager", gpu, 1, "fp32", False) == "eager"
    # Validation in large chunks where launches cost (CUDA), in training batches where caches do (CPU).
    assert (score_chunk(gpu, 800), score_chunk(gpu, 20_000), score_chunk(cpu, 800)) == (16384, 20_000, 800)
    with pytest.raises(ConfigError, match=r"train\.step: 'fast' is not allowed; valid choices: 'auto', 'graph'"):
        config_from_dict({"train": {"step": "fast"}})
    with pytest.raises(ConfigError, match=r"train\.checkpoint_every: 0 must be >= 1"):
        config_from_dict({"train": {"checkpoint_every": 0}})


def _steps_on(device: torch.device, graphed: bool, capturable: bool = False, precision: str = "fp32",
              n_steps: int = 6) -> tuple[EagerSteps, EpochBatches]:
    """A step runner of the tiny model on the tiny panel (resident on ``device``), and its first epoch's batches."""
    cfg, panel = tiny_config(clip_value=0.05, precision=precision), tiny_panel()
    torch.manual_seed(0)
    model = build_model(cfg.model, cfg.window_len).to(device)
    if capturable:
        optimizer = torch.optim.Adam(model.parameters(), lr=cfg.train.lr, fused=True, capturable=True)
    else:
        optimizer = loop_module._make_optimizer(model, cfg.train, device)
    source = WindowSource.place(panel.features, available(panel, "learn"), cfg.window_len, device, "always")
    shard = make_shard(cfg, panel)
    rows = source.rows(torch.from_numpy(shard.train_inst), torch.from_numpy(shard.train_day))
    label = torch.from_numpy(panel.label_learn[shard.train_inst, shard.train_day]).to(device)
    take = torch.from_numpy(np.random.default_rng(0).permutation(len(label))[:n_steps * 64].reshape(n_steps, 64))
    batches = EpochBatches.take(rows, label, torch.ones_like(label), take)
    runner = (GraphedSteps if graphed else EagerSteps)(model, optimizer, par.Amp(precision, device), cfg.train,
                                                       source)
    return runner, batches


def test_a_failed_capture_warns_once_and_trains_as_the_eager_steps(caplog: pytest.LogCaptureFixture) -> None:
    """On the CPU every capture fails: the graph's body then runs eagerly and must be the eager step, bit for bit."""
    cpu = torch.device("cpu")
    (eager, batches), (graphed, _) = _steps_on(cpu, graphed=False), _steps_on(cpu, graphed=True)
    with caplog.at_level("WARNING", logger="distgru.training.steps"):
        sums = [(eager.epoch(batches), graphed.epoch(batches)) for _ in range(2)]
    assert [r.getMessage() for r in caplog.records if "CUDA graph failed" in r.getMessage()] == [
        "train.step: capturing the training step as a CUDA graph failed (RuntimeError: CUDA graphs need a CUDA "
        "device, not cpu); training on with eager steps"]
    for e, g in sums:
        assert torch.equal(e[0], g[0])  # the same losses
        assert g[3] == 6 and e[3] == 1  # the graph's body measures every step, the eager step every 8th
        assert 0 < g[2] <= 6  # clip_value 0.05 clips
    for p, q in zip(eager.model.parameters(), graphed.model.parameters(), strict=True):
        assert torch.equal(p, q)
    assert graphed.warmup_s > 0 and eager.warmup_s > 0


@pytest.mark.gpu
@cuda
@pytest.mark.parametrize(("precision", "rtol"), [("fp32", 1e-4), ("bf16", 1e-3)])
def test_graphed_steps_train_as_the_eager_ones_on_cuda(precision: str, rtol: float) -> None:
    """Same optimizer kernel (fused, capturable) in both: the graph's losses and weights follow the eager ones."""
    gpu = torch.device("cuda", 0)
    (eager, batches), (graphed, _) = _steps_on(gpu, False, True, precision), _steps_on(gpu, True, True, precision)
    losses = [(float(eager.epoch(batches)[0]), float(graphed.epoch(batches)[0])) for _ in range(4)]
    assert graphed.graph is not None and not graphed.eager  # captured, and replayed in epochs 1 (3 steps) to 4
    np.testing.assert_allclose(*zip(*losses, strict=True), rtol=rtol)
    for p, q in zip(eager.model.parameters(), graphed.model.parameters(), strict=True):
        torch.testing.assert_close(p, q, rtol=10 * rtol, atol=1e-5)


@pytest.mark.gpu
@cuda
def test_the_loop_graphs_its_steps_on_cuda(caplog: pytest.LogCaptureFixture) -> None:
    cfg, panel = tiny_config(n_epochs=2), tiny_panel()
    cfg.resources.use_gpu = True
    with caplog.at_level("INFO", logger="distgru.training"):
        result, _ = run(cfg, panel, device=torch.device("cuda", 0))
    assert any("graph steps" in r.getMessage() for r in caplog.records)
    assert not any("CUDA graph failed" in r.getMessage() for r in caplog.records)
    assert result.history[-1]["valid_ic"] > 0.3 and result.history[0]["warmup_s"] > 0


@pytest.mark.gpu
@cuda
def test_a_streamed_panel_trains_exactly_as_a_resident_one_on_cuda() -> None:
    gpu, panel, results = torch.device("cuda", 0), tiny_panel(), {}
    for mode in ("always", "never"):
        cfg = tiny_config(n_epochs=2, deterministic=True, step="eager")  # a streamed panel is never graphed
        cfg.resources.panel_on_device = mode
        results[mode], _ = run(cfg, panel, device=gpu)
    assert [{k: v for k, v in h.items() if k not in TIMINGS} for h in results["never"].history] == \
           [{k: v for k, v in h.items() if k not in TIMINGS} for h in results["always"].history]
    model = build_model(tiny_config().model, 5)
    inst, day = sample_index(panel, "test", "infer")
    np.testing.assert_array_equal(predict(model, panel, inst, day, 5, 64, gpu, "never"),
                                  predict(model, panel, inst, day, 5, 64, gpu, "always"))


def test_a_state_saved_by_a_graphed_cuda_run_resumes_with_this_workers_optimizer_kernels() -> None:
    torch.manual_seed(0)
    model = nn.Linear(3, 1)
    optimizer = torch.optim.Adam(model.parameters(), lr=0.1)
    model(torch.randn(4, 3)).sum().backward()
    optimizer.step()
    saved = loop_module._copy(optimizer.state_dict())
    for group in saved["param_groups"]:  # as a graphed CUDA run writes them
        group.update(fused=True, capturable=True)
    fresh = torch.optim.Adam(model.parameters(), lr=0.1)
    loop_module.load_optimizer(fresh, saved)
    # Kept from the state, the flags would switch this CPU worker to the fused Adam kernel (other numerics).
    assert [(g["fused"], g["capturable"]) for g in fresh.param_groups] == [(None, False)]
    assert fresh.state[model.weight]["step"].device.type == "cpu"
    assert torch.equal(fresh.state[model.weight]["exp_avg"], optimizer.state[model.weight]["exp_avg"])
    fresh.step()
    assert float(fresh.state[model.weight]["step"]) == 2.0
