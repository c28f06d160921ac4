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
    chunk: int = 49  # positions per chunk of the parallel pass (784 = 16 x 49); no effect on results


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
        return [NADEConfig(8, 16, chunk=3), NADEConfig(5, 3, chunk=5), NADEConfig(12, 7, chunk=5)]

    def state_spec(self):
        return [("a", (self.config.hidden,), torch.float32)]

    def _conditionals(self, x: Tensor) -> Tensor:
        # a_i = sum_{j<i} W_j x_j for all i at once, in chunks of positions: inside a chunk a strictly
        # lower-triangular matmul, across chunks a running sum. Same result as one cumsum over (B, D, H),
        # but the working set stays small: 6x faster to train on a CPU.
        x = x.to(self.W.dtype)
        k = self.config.chunk
        lower = torch.tril(torch.ones(k, k, dtype=x.dtype), diagonal=-1)  # (k, k)
        run = x.new_zeros(x.shape[0], self.config.hidden)  # (B, H) sum over the chunks before
        logits = []
        for s in range(0, self.config.length, k):
            xc, Wc = x[:, s : s + k], self.W[s : s + k]  # (B, k), (k, H)
            n = xc.shape[1]
            a = (xc.unsqueeze(1) * lower[:n, :n]).matmul(Wc) + run.unsqueeze(1)  # (B, k, H)
            run = run + xc.matmul(Wc)
            h = torch.sigmoid(a + self.c)
            logits.append((h * self.V[s : s + k]).sum(-1) + self.b[s : s + k])  # (B, k)
        return bernoulli_logits(torch.cat(logits, dim=1))  # (B, D, 2)

    def _step(self, x_prev: Tensor, pos: Tensor, state: State) -> tuple[Tensor, State]:
        # Written for a short graph: the step is one ONNX Runtime call per pixel, and at ~1 µs a node its
        # length, not its O(H) arithmetic, sets the cost.
        (a,) = state
        seen = (pos * x_prev > 0).to(a.dtype).unsqueeze(-1)  # x_{pos-1} in {0, 1}; 0 at position 0, whatever x_prev
        a = a + self.W[pos - 1] * seen  # position 0 reads row -1 and multiplies it by 0
        return bernoulli_logits(self._logit(a, pos)), (a,)

    def _multi_step(self, x_prev: Tensor, pos: Tensor, state: State) -> tuple[Tensor, State]:
        """`_step` inside the multi-token graph (models/multistep.py), where x_prev is a drawn pixel and 0 at
        position 0, so that it is its own gate: the same arithmetic on three nodes fewer, the logit alone."""
        (a,) = state
        a = a + self.W[pos - 1] * x_prev.to(a.dtype).unsqueeze(-1)
        return self._logit(a, pos), (a,)

    def _logit(self, a: Tensor, pos: Tensor) -> Tensor:
        return (torch.sigmoid(a + self.c) * self.V[pos]).sum(-1) + self.b[pos]  # (B,)
