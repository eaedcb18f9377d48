"""The recurrence dtype under autocast (distgru/models/rnn.py ``Recurrent.recur``): CPU, and CUDA with ``-m gpu``.

Choice made: under bf16 autocast the GRU/LSTM recurrence runs in fp32 (cuDNN's RNN autocast path casts to fp16
whatever the autocast dtype, and bf16 has no grad scaler); the linear layers stay in bf16; fp16 keeps cuDNN's half
recurrence (it has the scaler). This module imports only torch and distgru.models, so it runs on a bare GPU image
(no numba, no Ray): ``pytest -m gpu tests/test_precision.py``.
"""

from __future__ import annotations

import pytest
import torch
from torch import nn

from distgru.models import ALSTM, GRU, LSTM

cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")


@pytest.mark.parametrize("cls", [GRU, LSTM, ALSTM])
def test_the_recurrence_runs_in_fp32_under_bf16_autocast_on_cpu(cls: type[nn.Module]) -> None:
    seen = _run_with_dtype_hooks(cls, "cpu")
    assert seen["rnn_in"] == seen["rnn_out"] == seen["rnn_hidden"] == torch.float32
    assert seen["head"] == torch.bfloat16  # the linear layers keep autocast's dtype


@pytest.mark.gpu
@cuda
@pytest.mark.parametrize("cls", [GRU, ALSTM])
def test_the_recurrence_runs_in_fp32_under_bf16_autocast_on_cuda(cls: type[nn.Module]) -> None:
    """On CUDA, cuDNN's RNN autocast casts to fp16 whatever the dtype; distgru runs the recurrence in fp32."""
    seen = _run_with_dtype_hooks(cls, "cuda")
    assert seen["rnn_in"] == seen["rnn_out"] == seen["rnn_hidden"] == torch.float32
    assert seen["head"] == torch.bfloat16


@pytest.mark.gpu
@cuda
def test_fp16_keeps_cudnn_half_recurrence_on_cuda() -> None:
    seen = _run_with_dtype_hooks(GRU, "cuda", torch.float16)
    assert seen["rnn_out"] == torch.float16


def _run_with_dtype_hooks(cls: type[nn.Module], device: str, dtype: torch.dtype = torch.bfloat16) -> dict:
    torch.manual_seed(0)
    model = cls(4, 8, 2, 0.0, step_len=5).to(device)
    seen: dict[str, torch.dtype] = {}

    def on_rnn(module: nn.Module, args: tuple, output: tuple) -> None:
        seen["rnn_in"], seen["rnn_out"], seen["rnn_hidden"] = args[0].dtype, output[0].dtype, _first(output[1]).dtype

    model.rnn.register_forward_hook(on_rnn)
    model.fc_out.register_forward_hook(lambda m, a, out: seen.__setitem__("head", out.dtype))
    with torch.autocast(device, dtype=dtype):
        model(torch.randn(3, 5, 4, device=device)).float().sum().backward()
    return seen


def _first(hidden: torch.Tensor | tuple) -> torch.Tensor:
    return hidden[0] if isinstance(hidden, tuple) else hidden  # LSTM: (h, c)
