"""MADE: the Masked Autoencoder for Distribution Estimation.

Germain, Gregor, Murray & Larochelle, "MADE: Masked Autoencoder for Distribution Estimation", ICML 2015.

An ordinary autoencoder x -> h^1 -> ... -> h^L -> logits whose weight matrices are multiplied by fixed binary
masks so that output i depends only on x_<i. Every unit gets a degree m (0-based here):

    inputs:  m(x_i) = i                          hidden unit k of layer l: m^l(k) ~ U{min m^{l-1}, ..., D-2}
    hidden mask: m^l(k) >= m^{l-1}(k')           output mask: m(out_i) = i > m^L(k)

so a path from x_j to output i needs j <= ... <= m^L(k) < i. Output 0 sees no hidden unit: p(x_0) is a constant.
We use the identity ordering (the serving contract generates x_0, x_1, ... in order) and one connectivity
drawn from `seed` (the paper's single-mask setting, 88.40 nats on binarized MNIST with one layer of 500).

Two options, both off by default (existing artifacts keep their meaning): `direct` adds a masked input -> output
connection, logit_i += sum_{j<i} V[i, j] x_j (an FVSBN beside the autoencoder, as in NADE's and later MADE
variants), and `dropout` drops hidden units while training only (the exported, eval-mode graph has none).

The incremental step carries the first layer's pre-activation accumulator: once x_{i-1} is known it adds its masked
column, O(H1); the upper layers are recomputed and only output row i is evaluated. With `direct`, it also carries
the direct connection's running pre-activations of every position, as FVSBN's step does, O(D).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from models.base import ARModel, State, bernoulli_logits


@dataclass(frozen=True)
class MADEConfig:
    length: int = 784  # D binary dimensions (28x28 pixels in raster order)
    hidden: tuple[int, ...] = (500,)  # hidden layer sizes (the paper's single-mask MNIST model: one layer of 500)
    seed: int = 0  # draws the hidden units' degrees, i.e. the connectivity; part of the model's identity
    vocab_size: int = 2  # Bernoulli outputs
    direct: bool = False  # a masked input -> output connection (strictly lower triangular)
    dropout: float = 0.0  # on every hidden layer's units, training only

    def __post_init__(self):
        # configs read back from JSON checkpoints carry lists; keep the frozen config hashable
        object.__setattr__(self, "hidden", tuple(int(h) for h in self.hidden))


class MaskedLinear(nn.Linear):
    """nn.Linear whose weight is multiplied by a fixed 0/1 mask (a buffer) on every use."""

    def __init__(self, mask: Tensor, bias: bool = True):
        super().__init__(mask.shape[1], mask.shape[0], bias=bias)
        self.register_buffer("mask", mask.bool())  # (out, in); bool keeps the artifact small

    def forward(self, x: Tensor) -> Tensor:
        return F.linear(x, self.mask * self.weight, self.bias)


def hidden_degrees(length: int, sizes: tuple[int, ...], seed: int) -> list[Tensor]:
    """Degrees of each hidden layer, drawn as in the paper but with the lowest allowed degree always present.

    A unit of degree 0 in every layer guarantees each output i >= 1 a path from x_0, however few units there
    are (a random draw could otherwise leave output 1 with no hidden unit of degree < 1).
    """
    g = torch.Generator().manual_seed(seed)
    degrees, low = [], 0  # inputs have degrees 0 .. D-1, so the first layer draws from [0, D-2]
    for size in sizes:
        m = torch.randint(low, length - 1, (size,), generator=g)
        m[torch.randint(0, size, (1,), generator=g)] = low
        degrees.append(m)
        low = int(m.min())
    return degrees


def made_masks(length: int, sizes: tuple[int, ...], seed: int) -> list[Tensor]:
    """The (out, in) masks of every layer, input -> hidden ... -> output."""
    m_in = torch.arange(length)
    layers = [m_in, *hidden_degrees(length, sizes, seed)]
    masks = [(m_out[:, None] >= m_prev[None, :]) for m_prev, m_out in zip(layers, layers[1:], strict=False)]
    masks.append(m_in[:, None] > layers[-1][None, :])  # output i sees hidden units of degree < i
    return masks


class MADE(ARModel):
    family = "made"
    config_class = MADEConfig
    dist = "bernoulli"

    def __init__(self, config: MADEConfig):
        super().__init__(config)
        if config.length < 2 or not config.hidden or min(config.hidden) < 1:
            raise ValueError(f"MADE needs length >= 2 and non-empty hidden layers, got {config}")
        self.layers = nn.ModuleList(MaskedLinear(m) for m in made_masks(config.length, config.hidden, config.seed))
        self.drop = nn.Dropout(config.dropout)
        if config.direct:  # output i sees x_j for j < i; the output layer's bias serves both
            self.direct = MaskedLinear(torch.tril(torch.ones(config.length, config.length), diagonal=-1), bias=False)

    @classmethod
    def tiny_configs(cls) -> list[MADEConfig]:
        return [
            MADEConfig(length=8, hidden=(16,), seed=0),
            MADEConfig(length=5, hidden=(3, 4), seed=1),
            MADEConfig(length=12, hidden=(9, 20, 6), seed=2),
            MADEConfig(length=7, hidden=(10,), seed=3, direct=True, dropout=0.5),  # dropout: training only
        ]

    def state_spec(self):
        spec = [("acc", (self.config.hidden[0],), torch.float32)]
        if self.config.direct:
            spec.append(("direct", (self.config.length,), torch.float32))
        return spec

    def _conditionals(self, x: Tensor) -> Tensor:
        h = x.to(self.layers[0].weight.dtype)  # (B, D)
        for layer in self.layers[:-1]:
            h = self.drop(torch.relu(layer(h)))  # (B, H_l)
        logit = self.layers[-1](h)  # (B, D)
        if self.config.direct:
            logit = logit + self.direct(x.to(logit.dtype))
        return bernoulli_logits(logit)  # (B, D, 2)

    def _step(self, x_prev: Tensor, pos: Tensor, state: State) -> tuple[Tensor, State]:
        acc = state[0]
        first, out = self.layers[0], self.layers[-1]
        prev = (pos - 1).clamp(min=0)
        gate = torch.where(pos > 0, x_prev.to(acc.dtype), torch.zeros_like(acc[:, 0])).unsqueeze(-1)  # (B, 1)
        col = first.weight.t()[prev] * first.mask.t()[prev]  # (B, H1): masked column of x_{pos-1}
        acc = acc + col * gate  # first-layer pre-activation without its bias
        h = torch.relu(acc + first.bias)  # (B, H1)
        for layer in self.layers[1:-1]:
            h = torch.relu(layer(h))  # (B, H_l)
        row = out.weight[pos] * out.mask[pos]  # (B, H_L): the masked output row of position pos only
        logit = (h * row).sum(-1) + out.bias[pos]  # (B,)
        if not self.config.direct:
            return bernoulli_logits(logit), (acc,)
        # the direct connection's pre-activations of every position, x_{pos-1}'s masked column added
        s = state[1] + (self.direct.weight.t()[prev] * self.direct.mask.t()[prev]) * gate  # (B, D)
        logit = logit + s.gather(1, pos.unsqueeze(1)).squeeze(1)
        return bernoulli_logits(logit), (acc, s)

    def _multi_step(self, x_prev: Tensor, pos: Tensor, state: State) -> tuple[Tensor, State]:
        """`_step` inside the multi-token graph (models/multistep.py), where x_prev is a drawn pixel and 0 at
        position 0, so that it is its own gate: the same bits (a column times 0 adds ±0, whichever column
        position 0 reads), fewer nodes, the logit alone."""
        acc = state[0]
        first, out = self.layers[0], self.layers[-1]
        gate = x_prev.to(acc.dtype).unsqueeze(-1)  # (B, 1)
        acc = acc + (first.weight.t()[pos - 1] * first.mask.t()[pos - 1]) * gate
        h = torch.relu(acc + first.bias)  # (B, H1)
        for layer in self.layers[1:-1]:
            h = torch.relu(layer(h))  # (B, H_l)
        logit = (h * (out.weight[pos] * out.mask[pos])).sum(-1) + out.bias[pos]  # (B,)
        if not self.config.direct:
            return logit, (acc,)
        s = state[1] + (self.direct.weight.t()[pos - 1] * self.direct.mask.t()[pos - 1]) * gate  # (B, D)
        return logit + s.gather(1, pos.unsqueeze(1)).squeeze(1), (acc, s)
