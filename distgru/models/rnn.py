"""qlib's recurrent regressors (pytorch_gru_ts / pytorch_lstm_ts / pytorch_alstm_ts) as plain modules.

Every network maps a batch of windows ``[B, T, d_feat]`` to one score per sample ``[B]``. With ``flat=True`` the
input is one day's Alpha360 vector ``[B, d_feat*T]`` (or ``[B, 1, d_feat*T]``, a step-1 window), which is
feature-major and oldest-first inside each feature, so reshaping to ``[B, d_feat, T]`` and swapping the last two
axes gives the time-major sequence (qlib's pytorch_gru does the same).
"""

from __future__ import annotations

from typing import Literal

import torch
from torch import nn

Init = Literal["default", "orthogonal"]


class Recurrent(nn.Module):
    """Input handling and initialisation shared by the three networks."""

    def __init__(self, d_feat: int, step_len: int, flat: bool) -> None:
        super().__init__()
        self.d_feat, self.step_len, self.flat = d_feat, step_len, flat

    def as_steps(self, x: torch.Tensor) -> torch.Tensor:
        if self.flat:
            return x.reshape(x.shape[0], self.d_feat, -1).transpose(1, 2)
        if x.shape[1:] != (self.step_len, self.d_feat):
            # A silent broadcast here would train on the wrong features; fail on a config/panel mismatch instead.
            raise ValueError(f"expected windows [B, {self.step_len}, {self.d_feat}], got {list(x.shape)}")
        return x

    def recur(self, rnn: nn.RNNBase, x: torch.Tensor) -> torch.Tensor:
        """``rnn``'s output sequence; under bf16 autocast the recurrence runs in fp32.

        Choice made (not merely checked): cuDNN's RNN autocast wrapper (AutocastRNN.cpp) casts to fp16 whatever
        the autocast dtype, and bf16 training has no grad scaler to keep fp16 gradients from underflowing; the
        CPU runs the GRU in bf16 when its input is bf16 (ALSTM's input map). So under bf16 autocast the recurrence
        leaves autocast and runs on fp32 input and weights; the linear layers around it stay in bf16. Under fp16
        (which has the scaler) and without autocast nothing changes.
        """
        kind = x.device.type
        if torch.is_autocast_enabled(kind) and torch.get_autocast_dtype(kind) == torch.bfloat16:
            with torch.autocast(kind, enabled=False):
                return rnn(x.float())[0]
        return rnn(x)[0]

    def init_recurrent(self, rnn: nn.RNNBase, init: Init) -> None:
        if init == "default":
            return
        # Orthogonal per gate block: each gate's recurrent map keeps its own spectrum near 1.
        for name, param in rnn.named_parameters():
            if name.startswith("weight_"):
                for block in param.data.split(rnn.hidden_size, dim=0):
                    nn.init.orthogonal_(block)
            else:
                nn.init.zeros_(param)


class GRU(Recurrent):
    """nn.GRU (dropout between layers only) + Linear(hidden, 1) on the last step: 41,537 params at 20/64/2."""

    rnn_cls: type[nn.RNNBase] = nn.GRU

    def __init__(self, d_feat: int, hidden_size: int, num_layers: int, dropout: float, *, step_len: int,
                 flat: bool = False, init: Init = "default") -> None:
        super().__init__(d_feat, step_len, flat)
        self.rnn = self.rnn_cls(input_size=d_feat, hidden_size=hidden_size, num_layers=num_layers,
                                batch_first=True, dropout=dropout)
        self.fc_out = nn.Linear(hidden_size, 1)
        self.init_recurrent(self.rnn, init)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.recur(self.rnn, self.as_steps(x))
        return self.fc_out(out[:, -1, :]).squeeze(-1)


class LSTM(GRU):
    """qlib's LSTM: the GRU with nn.LSTM cells (55,361 params at 20/64/2)."""

    rnn_cls = nn.LSTM


class ALSTM(Recurrent):
    """qlib's ALSTM: Linear+Tanh input map → GRU → softmax attention over time; the head reads
    [last hidden state, attention-pooled states]."""

    def __init__(self, d_feat: int, hidden_size: int, num_layers: int, dropout: float, *, step_len: int,
                 flat: bool = False, init: Init = "default") -> None:
        super().__init__(d_feat, step_len, flat)
        self.fc_in = nn.Sequential(nn.Linear(d_feat, hidden_size), nn.Tanh())
        self.rnn = nn.GRU(input_size=hidden_size, hidden_size=hidden_size, num_layers=num_layers,
                          batch_first=True, dropout=dropout)
        half = hidden_size // 2
        self.att = nn.Sequential(nn.Linear(hidden_size, half), nn.Dropout(dropout), nn.Tanh(),
                                 nn.Linear(half, 1, bias=False))
        self.fc_out = nn.Linear(2 * hidden_size, 1)
        self.init_recurrent(self.rnn, init)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.recur(self.rnn, self.fc_in(self.as_steps(x)))
        weights = torch.softmax(self.att(out), dim=1)  # [B, T, 1]: a distribution over time steps
        pooled = (out * weights).sum(dim=1)
        return self.fc_out(torch.cat([out[:, -1, :], pooled], dim=1)).squeeze(-1)
