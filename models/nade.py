"""NADE: the Neural Autoregressive Distribution Estimator.

Larochelle & Murray, "The Neural Autoregressive Distribution Estimator", AISTATS 2011.

    h_i = σ(c + W[:, <i] x_<i),     p(x_i = 1 | x_<i) = σ(b_i + V_i · h_i)

The hidden units share the tied weights W across positions, so the pre-activation a_i = c + W[:, <i] x_<i
grows by one column per position: a_{i+1} = a_i + W[:, i] x_i. The parallel pass computes every a_i with
one cumulative sum; the incremental step carries the running sum, O(H) per pixel instead of O(H·D).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor, nn

from models.base import ARModel, State, bernoulli_logits


@dataclass(frozen=True)
class NADEConfig:
    length: int = 784  # D binary dimensions (28x28 pixels in raster order)
    hidden: int = 500  # H hidden units (the paper's choice for binarized MNIST)
    vocab_size: int = 2  # Bernoulli outputs


class NADE(ARModel):
    family = "nade"
    config_class = NADEConfig
    dist = "bernoulli"

    def __init__(self, config: NADEConfig):
        super().__init__(config)
        D, H = config.length, config.hidden
        self.W = nn.Parameter(torch.randn(D, H) * 0.01)  # row i = column W[:, i] of the paper
        self.c = nn.Parameter(torch.zeros(H))
        self.V = nn.Parameter(torch.randn(D, H) * 0.01)
        self.b = nn.Parameter(torch.zeros(D))

    @classmethod
    def tiny_configs(cls) -> list[NADEConfig]:
        return [NADEConfig(length=8, hidden=16), NADEConfig(length=5, hidden=3), NADEConfig(length=12, hidden=7)]

    def state_spec(self):
        return [("a", (self.config.hidden,), torch.float32)]

    def _conditionals(self, x: Tensor) -> Tensor:
        contrib = x.to(self.W.dtype).unsqueeze(-1) * self.W  # (B, D, H)
        a = torch.cumsum(contrib, dim=1) - contrib  # exclusive prefix sum: a_i uses x_<i
        h = torch.sigmoid(a + self.c)  # (B, D, H)
        logit = (h * self.V).sum(-1) + self.b  # (B, D)
        return bernoulli_logits(logit)  # (B, D, 2)

    def _step(self, x_prev: Tensor, pos: Tensor, state: State) -> tuple[Tensor, State]:
        (a,) = state
        prev = (pos - 1).clamp(min=0)
        gate = (pos > 0).to(a.dtype) * x_prev.to(a.dtype)  # x_{pos-1}, or 0 at the first position
        a = a + self.W[prev] * gate.unsqueeze(-1)  # (B, H)
        h = torch.sigmoid(a + self.c)
        logit = (h * self.V[pos]).sum(-1) + self.b[pos]  # (B,)
        return bernoulli_logits(logit), (a,)
