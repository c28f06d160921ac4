"""FVSBN: the fully visible sigmoid belief network.

Neal, "Connectionist learning of belief networks", Artificial Intelligence 1992; Frey, "Graphical Models for
Machine Learning and Digital Communication", MIT Press 1998. In the lecture's terms: one logistic regression
per pixel in raster order, each on all the pixels before it.

    p(x_i = 1 | x_<i) = σ(b_i + Σ_{j<i} W[i, j] x_j)

W is kept dense and multiplied by a strictly lower-triangular mask (a buffer), so the parallel pass is one
masked matrix product. The incremental step carries the running pre-activations s of *all* positions: once
x_{i-1} is known it adds its column W[:, i-1] to every later position, O(D) per pixel instead of O(D²).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from models.base import ARModel, State, bernoulli_logits


@dataclass(frozen=True)
class FVSBNConfig:
    length: int = 784  # D binary dimensions (28x28 pixels in raster order)
    vocab_size: int = 2  # Bernoulli outputs


class FVSBN(ARModel):
    family = "fvsbn"
    config_class = FVSBNConfig
    dist = "bernoulli"

    def __init__(self, config: FVSBNConfig):
        super().__init__(config)
        D = config.length
        self.W = nn.Parameter(torch.randn(D, D) * 0.01)  # W[i, j]: weight of x_j in the regression of x_i
        self.b = nn.Parameter(torch.zeros(D))
        # strictly lower triangular: row i sees only x_j for j < i (row 0 sees nothing); bool keeps it small
        self.register_buffer("mask", torch.tril(torch.ones(D, D, dtype=torch.bool), diagonal=-1))

    @classmethod
    def tiny_configs(cls) -> list[FVSBNConfig]:
        return [FVSBNConfig(length=8), FVSBNConfig(length=5), FVSBNConfig(length=13)]

    def state_spec(self):
        return [("s", (self.config.length,), torch.float32)]

    def _conditionals(self, x: Tensor) -> Tensor:
        logit = F.linear(x.to(self.W.dtype), self.mask * self.W, self.b)  # (B, D)
        return bernoulli_logits(logit)  # (B, D, 2)

    def _step(self, x_prev: Tensor, pos: Tensor, state: State) -> tuple[Tensor, State]:
        (s,) = state
        prev = (pos - 1).clamp(min=0)
        # x_{pos-1}, or 0 at the first position (where x_prev is a meaningless start token)
        gate = torch.where(pos > 0, x_prev.to(s.dtype), torch.zeros_like(s[:, 0]))
        # column pos-1 of the masked W, one per row: index first so the step stays O(D)
        col = self.W.t()[prev] * self.mask.t()[prev]  # (B, D)
        s = s + col * gate.unsqueeze(-1)  # (B, D)
        logit = s.gather(1, pos.unsqueeze(1)).squeeze(1) + self.b[pos]  # (B,)
        return bernoulli_logits(logit), (s,)

    def _multi_step(self, x_prev: Tensor, pos: Tensor, state: State) -> tuple[Tensor, State]:
        """`_step` inside the multi-token graph (models/multistep.py), where x_prev is a drawn pixel and 0 at
        position 0, so that it is its own gate: the same bits (a column times 0 adds ±0 to s, whichever column
        position 0 reads), fewer nodes, the logit alone."""
        (s,) = state
        col = self.W.t()[pos - 1] * self.mask.t()[pos - 1]  # (B, D)
        s = s + col * x_prev.to(s.dtype).unsqueeze(-1)
        return s.gather(1, pos.unsqueeze(1)).squeeze(1) + self.b[pos], (s,)
