"""Models: qlib's parameter counts, output shapes, the Alpha360 flat reshape, init modes."""

from __future__ import annotations

import pytest
import torch

from distgru.config.schema import ModelConfig
from distgru.models import build_model, count_parameters


@pytest.mark.parametrize(("name", "params"), [("gru", 41_537), ("lstm", 55_361)])
def test_qlib_parameter_counts(name: str, params: int) -> None:
    assert count_parameters(build_model(ModelConfig(name=name, d_feat=20, hidden_size=64, num_layers=2), 20)) == params


def test_gru_d_feat_6_count() -> None:
    assert count_parameters(build_model(ModelConfig(d_feat=6), 20)) == 38_849


@pytest.mark.parametrize("name", ["gru", "lstm", "alstm"])
@pytest.mark.parametrize("init", ["default", "orthogonal"])
def test_window_output_shape(name: str, init: str) -> None:
    model = build_model(ModelConfig(name=name, d_feat=5, hidden_size=8, num_layers=2, dropout=0.1, init=init), 7)
    assert model(torch.randn(4, 7, 5)).shape == (4,)
    assert model(torch.randn(1, 7, 5)).shape == (1,)  # qlib's squeeze() would give a scalar here


def test_window_shape_mismatch_raises() -> None:
    model = build_model(ModelConfig(d_feat=5, hidden_size=8), 7)
    with pytest.raises(ValueError, match=r"\[B, 7, 5\]"):
        model(torch.randn(4, 6, 5))


def test_orthogonal_recurrent_blocks() -> None:
    model = build_model(ModelConfig(d_feat=4, hidden_size=8, num_layers=1, init="orthogonal"), 3)
    for block in model.rnn.weight_hh_l0.data.split(8):
        torch.testing.assert_close(block @ block.T, torch.eye(8), atol=1e-5, rtol=0)
    assert not model.rnn.bias_hh_l0.any()


def test_flat_reshape_order() -> None:
    """Alpha360 columns are CLOSE59..CLOSE0, OPEN59..OPEN0, …: step t must hold (CLOSE59-t, OPEN59-t, …)."""
    model = build_model(ModelConfig(d_feat=6, hidden_size=4, input="flat"), 1)
    names = ["CLOSE", "OPEN", "HIGH", "LOW", "VWAP", "VOLUME"]
    columns = [f"{n}{lag}" for n in names for lag in range(59, -1, -1)]
    # Encode each column as feature_index * 100 + lag so the mapping can be read back.
    x = torch.tensor([[names.index(c.rstrip("0123456789")) * 100 + int(c.lstrip("ABCDEFGHIJKLMNOPQRSTUVWXYZ"))
                       for c in columns]], dtype=torch.float32)
    steps = model.as_steps(x)
    assert steps.shape == (1, 60, 6)
    assert steps[0, 0].tolist() == [59, 159, 259, 359, 459, 559]  # CLOSE59 (oldest) at step 0
    assert steps[0, -1].tolist() == [0, 100, 200, 300, 400, 500]  # today at the last step
    # A step-1 window [B, 1, 360] (what the flat sample gather yields) maps identically.
    torch.testing.assert_close(model.as_steps(x[:, None, :]), steps)
    assert model(x[:, None, :].repeat(3, 1, 1)).shape == (3,)
