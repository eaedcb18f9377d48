"""The GPU bugs' CPU-testable halves: fractional GPUs across DDP ranks, fp16 skipped steps in the logged grad norm,
resume with fewer GPUs, the fused optimizer switch (the recurrence dtypes: tests/test_precision.py)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from test_loop import run, tiny_config, tiny_panel
from torch import nn

from distgru.config import ConfigError, config_from_dict
from distgru.training import loop as loop_module
from distgru.training import parallel as par
from distgru.training.state import capture_rng, restore_rng


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
        self.calls, self.applied_norms = 0, []

    def backward(self, loss: torch.Tensor, optimizer: torch.optim.Optimizer) -> None:
        super().backward(loss, optimizer)
        self.calls += 1
        if self.calls % 2 == 0:
            next(p for g in optimizer.param_groups for p in g["params"] if p.grad is not None).grad[0] = float("inf")

    def step(self, optimizer: torch.optim.Optimizer) -> None:
        grads = [p.grad for g in optimizer.param_groups for p in g["params"] if p.grad is not None]
        if self.calls % 2:  # applied: remember its pre-clip norm as logged (clip 'none' leaves grads as they were)
            self.applied_norms.append(float(torch.nn.utils.get_total_norm(grads)))
            optimizer.step()


def test_a_skipped_fp16_step_does_not_make_the_logged_grad_norm_inf(monkeypatch: pytest.MonkeyPatch) -> None:
    amps: list[SkippingAmp] = []
    monkeypatch.setattr(par, "Amp", lambda precision, device: amps.append(SkippingAmp(precision, device)) or amps[0])
    result, _ = run(tiny_config(n_epochs=1, clip="none"), tiny_panel())
    row = result.history[0]
    assert amps[0].calls >= 4 and np.isfinite(row["train_loss"])
    # the mean over the applied (odd) steps only
    assert row["grad_norm"] == pytest.approx(np.mean(amps[0].applied_norms), rel=1e-5)
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
