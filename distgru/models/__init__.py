"""Model registry: ``build_model(cfg.model, step_len)`` builds the network named by ``ModelConfig.name``."""

from __future__ import annotations

from torch import nn

from distgru.config.schema import ModelConfig
from distgru.models.rnn import ALSTM, GRU, LSTM

MODELS: dict[str, type[GRU] | type[ALSTM]] = {"gru": GRU, "lstm": LSTM, "alstm": ALSTM}


def build_model(cfg: ModelConfig, step_len: int) -> nn.Module:
    """The network for ``cfg``; ``step_len`` is the window length T it checks its input against ('window' mode)."""
    cls = MODELS[cfg.name]
    return cls(cfg.d_feat, cfg.hidden_size, cfg.num_layers, cfg.dropout, step_len=step_len,
               flat=cfg.input == "flat", init=cfg.init)


def count_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


__all__ = ["ALSTM", "GRU", "LSTM", "MODELS", "build_model", "count_parameters"]
