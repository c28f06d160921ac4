"""MADE: the Masked Autoencoder for Distribution Estimation.

Germain, Gregor, Murray & Larochelle, "MADE: Masked Autoencoder for Distribution Estimation", ICML 2015.

An ordinary autoencoder x -> h^1 -> ... -> h^L -> logits whose weight matrices are multiplied by fixed binary
masks so that output i depends only on x_<i. Every unit gets a degree m (0-based here):

    inputs:  m(x_i) = i                          hidden unit k of layer l: m^l(k) ~ U{min m^{l-1}, ..., D-2}
    hidden mask: m^l(k) >= m^{l-1}(k')           output mask: m(out_i) = i > m^L(k)

so a path from x_j to output i needs j <= ... <= m^L(k) < i. Output 0 sees no hidden unit: p(x_0) is a constant.
We use the identity ordering (the serving contract generates x_0, x_1, ... in order) and one connectivity
drawn from `seed` (the paper's single-mask setting, 88.40 nats on binarized MNIST with one layer of 500).

The incremental step carries the first layer's pre-activation accumulator: once x_{i-1} is known it adds its masked
column, O(H1); the upper layers are recomputed and only output row i is evaluated.
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

    def __post_init__(self):
        # configs read back from JSON checkpoints carry lists; keep the frozen config hashable
        object.__setattr__(self, "hidden", tuple(int(h) for h in self.hidden))


class MaskedLinear(nn.Linear):
    """nn.Linear whose weight is multiplied by a fixed 0/1 mask (a buffer) on every use."""

    def __init__(self, mask: Tensor):
        super().__init__(mask.shape[1], mask.shape[0])
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

    @classmethod
    def tiny_configs(cls) -> list[MADEConfig]:
        return [
            MADEConfig(length=8, hidden=(16,), seed=0),
            MADEConfig(length=5, hidden=(3, 4), seed=1),
            MADEConfig(length=12, hidden=(9, 20, 6), seed=2),
        ]

    def state_spec(self):
        return [("acc", (self.config.hidden[0],), torch.float32)]

    def _conditionals(self, x: Tensor) -> Tensor:
        h = x.to(self.layers[0].weight.dtype)  # (B, D)
        for layer in self.layers[:-1]:
            h = torch.relu(layer(h))  # (B, H_l)
        logit = self.layers[-1](h)  # (B, D)
        return bernoulli_logits(logit)  # (B, D, 2)

    def _step(self, x_prev: Tensor, pos: Tensor, state: State) -> tuple[Tensor, State]:
        (acc,) = state
        first, out = self.layers[0], self.layers[-1]
        prev = (pos - 1).clamp(min=0)
        gate = torch.where(pos > 0, x_prev.to(acc.dtype), torch.zeros_like(acc[:, 0]))
        col = first.weight.t()[prev] * first.mask.t()[prev]  # (B, H1): masked column of x_{pos-1}
        acc = acc + col * gate.unsqueeze(-1)  # first-layer pre-activation without its bias
        h = torch.relu(acc + first.bias)  # (B, H1)
        for layer in self.layers[1:-1]:
            h = torch.relu(layer(h))  # (B, H_l)
        row = out.weight[pos] * out.mask[pos]  # (B, H_L): the masked output row of position pos only
        logit = (h * row).sum(-1) + out.bias[pos]  # (B,)
        return bernoulli_logits(logit), (acc,)
