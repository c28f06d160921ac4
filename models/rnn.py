"""Char-RNN: LSTM and GRU language models over characters.

Graves, "Generating Sequences With Recurrent Neural Networks", 2013; Karpathy, "The Unreasonable
Effectiveness of Recurrent Neural Networks", 2015. Cells: Hochreiter & Schmidhuber 1997 (LSTM),
Cho et al. 2014 (GRU).

    e_i = Embed(x_{i-1}) (a start token at i = 0),   h_i = RNN(e_i, h_{i-1}),   p(x_i | x_<i) = softmax(W h_i + b)

The recurrence is the incremental state: the parallel pass runs the fused nn.LSTM / nn.GRU over the
shifted sequence; the step applies the same weights with the cell equations written out (`step_rnn`). The
tests hold the two paths equal. The hidden state is O(num_layers · H) per row whatever the position.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from models.base import ARModel, State, bos_where_first, shift_right


def lstm_cell(gi: Tensor, gh: Tensor, hx: list[Tensor]) -> tuple[Tensor, ...]:
    """One LSTM time step from the input and hidden projections: (h, c) -> (h', c')."""
    i, f, g, o = (gi + gh).chunk(4, dim=-1)  # torch's gate order
    c = torch.sigmoid(f) * hx[1] + torch.sigmoid(i) * torch.tanh(g)
    return torch.sigmoid(o) * torch.tanh(c), c


def gru_cell(gi: Tensor, gh: Tensor, hx: list[Tensor]) -> tuple[Tensor, ...]:
    """One GRU time step from the input and hidden projections: (h,) -> (h',)."""
    i_r, i_z, i_n = gi.chunk(3, dim=-1)  # torch's gate order
    h_r, h_z, h_n = gh.chunk(3, dim=-1)
    r, z = torch.sigmoid(i_r + h_r), torch.sigmoid(i_z + h_z)
    n = torch.tanh(i_n + r * h_n)
    return ((1 - z) * n + z * hx[0],)


CELLS = {nn.LSTM: lstm_cell, nn.GRU: gru_cell}


def step_rnn(rnn: nn.RNNBase, inp: Tensor, state: tuple[Tensor, ...]) -> tuple[Tensor, tuple[Tensor, ...]]:
    """One time step of a (multi-layer) nn.LSTM / nn.GRU with the cell equations written out on its weights.

    torch's fused RNN kernel (oneDNN on CPU) spends ~2 ms per call setting up: 80x the arithmetic of one step.
    inp (B, E), state tensors (B, L, H) -> top layer's h (B, H), new state tensors (B, L, H).
    """
    cell = CELLS[type(rnn)]
    new = []
    for layer in range(rnn.num_layers):
        w_ih, w_hh, b_ih, b_hh = (getattr(rnn, f"{n}_l{layer}") for n in ("weight_ih", "weight_hh", "bias_ih",
                                                                          "bias_hh"))
        gi, gh = F.linear(inp, w_ih, b_ih), F.linear(state[0][:, layer], w_hh, b_hh)  # (B, G*H) each
        out = cell(gi, gh, [s[:, layer] for s in state])
        new.append(out)
        inp = out[0]  # this layer's h feeds the next
    return inp, tuple(torch.stack([n[k] for n in new], dim=1) for k in range(len(state)))


@dataclass(frozen=True)
class RNNConfig:
    vocab_size: int = 65  # characters of Tiny Shakespeare
    length: int = 1024  # the longest sequence scored or sampled; the state does not grow with it
    embed_dim: int = 64  # a learned embedding stands in for the one-hot input (same model, fewer FLOPs)
    # 2 x 384 (1.9M parameters as an LSTM, 1.4M as a GRU) fits the budget of ~1 hour on 2 CPU cores: fwd + bwd
    # measured ~10k chars/s (batch 32 x 128 chars, 2 threads), so an hour is ~30 passes over the ~1M-char training
    # split; a char-RNN of this size is expected to reach ~1.5 nats/char on validation (target <= 1.60). Karpathy's
    # 2 x 512 costs ~1.7x the FLOPs per char for a small gain; 2 x 256 is 2x cheaper but sits near the target.
    hidden_size: int = 384
    num_layers: int = 2
    dropout: float = 0.2  # between layers and on the embedding / output (training only); the corpus is small


class CharRNN(ARModel):
    """The shared char-RNN; LSTM and GRU differ only in the torch module and the state tensors."""

    config_class = RNNConfig
    variable_length = True
    rnn_class: ClassVar[type[nn.RNNBase]] = nn.RNNBase
    state_names: ClassVar[tuple[str, ...]] = ()

    def __init__(self, config: RNNConfig):
        super().__init__(config)
        self.bos = config.vocab_size  # the start token: one extra embedding row
        self.embed = nn.Embedding(config.vocab_size + 1, config.embed_dim)
        between = config.dropout if config.num_layers > 1 else 0.0  # torch warns about dropout after the last layer
        self.rnn = self.rnn_class(config.embed_dim, config.hidden_size, config.num_layers, batch_first=True,
                                  dropout=between)
        self.drop = nn.Dropout(config.dropout)
        self.head = nn.Linear(config.hidden_size, config.vocab_size)

    @classmethod
    def tiny_configs(cls) -> list[RNNConfig]:
        return [
            RNNConfig(vocab_size=5, length=12, embed_dim=8, hidden_size=16, num_layers=2, dropout=0.0),
            RNNConfig(vocab_size=3, length=7, embed_dim=4, hidden_size=5, num_layers=1, dropout=0.0),
            RNNConfig(vocab_size=11, length=16, embed_dim=6, hidden_size=12, num_layers=3, dropout=0.0),
        ]

    def state_spec(self):
        shape = (self.config.num_layers, self.config.hidden_size)
        return [(name, shape, torch.float32) for name in self.state_names]

    def _conditionals(self, x: Tensor) -> Tensor:
        e = self.drop(self.embed(shift_right(x, self.bos)))  # (B, T, E)
        h, _ = self.rnn(e)  # (B, T, H), from a zero initial state
        return self.head(self.drop(h))  # (B, T, V)

    def _step(self, x_prev: Tensor, pos: Tensor, state: State) -> tuple[Tensor, State]:
        inp = self.embed(bos_where_first(x_prev, pos, self.bos))  # (B, E)
        # A row at position 0 starts from zeros whatever its batch slot held before, so slots can be reused.
        fresh = (pos > 0).to(inp.dtype).view(-1, 1, 1)  # (B, 1, 1)
        h, state = step_rnn(self.rnn, inp, tuple(s * fresh for s in state))  # (B, H), each (B, L, H)
        return self.head(h), state  # (B, V)


class LSTM(CharRNN):
    family = "lstm"
    rnn_class = nn.LSTM
    state_names = ("h", "c")  # hidden and cell state of every layer


class GRU(CharRNN):
    family = "gru"
    rnn_class = nn.GRU
    state_names = ("h",)
