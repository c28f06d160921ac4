"""RNADE: the real-valued neural autoregressive density estimator.

Uria, Murray & Larochelle, "RNADE: The real-valued neural autoregressive density-estimator", NIPS 2013.

NADE's tied hidden layer feeding a mixture density network per dimension:

    a_0 = c,   a_{i+1} = a_i + W[:, i] x_i,   h_i = σ(ρ_i a_i)
    p(x_i | x_<i) = Σ_k π_ik N(x_i; μ_ik, σ_ik²),   (π_i, μ_i, log σ_i) = V_i h_i + b_i

The ρ_i rescale the growing pre-activation per position, as in the paper. The log standard deviations are
squashed into [log min_std, log max_std] so that no component can collapse onto a point (an unbounded density)
or spread wider than the standardized data ever needs; the bounded sigmoid hidden units keep the other
parameters finite as well. Like NADE, the step carries the running pre-activation a: O(H·K) per dimension.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from models.base import ARModel, State


@dataclass(frozen=True)
class RNADEConfig:
    length: int = 64  # D real dimensions (scikit-learn's 8x8 digits, dequantized and standardized)
    hidden: int = 100  # H hidden units
    components: int = 10  # K Gaussians per conditional
    min_std: float = 0.05  # below a standardized pixel's dequantization width (about 1/std of a 0..16 pixel)
    max_std: float = 3.0  # standardized data has unit marginal std; wider components only waste mass


class RNADE(ARModel):
    family = "rnade"
    config_class = RNADEConfig
    dist = "gaussian_mixture"

    def __init__(self, config: RNADEConfig):
        super().__init__(config)
        if not 0 < config.min_std < config.max_std:
            raise ValueError(f"need 0 < min_std < max_std, got {config.min_std} and {config.max_std}")
        D, H, K = config.length, config.hidden, config.components
        self.W = nn.Parameter(torch.randn(D, H) * 0.01)  # row i = column W[:, i] of the paper
        self.c = nn.Parameter(torch.zeros(H))
        self.rho = nn.Parameter(torch.ones(D))
        self.V = nn.Parameter(torch.randn(D, 3 * K, H) * 0.01)  # per dimension: logits, means, raw log stds
        self.b = nn.Parameter(self._initial_bias(D, K))

    def _initial_bias(self, D: int, K: int) -> Tensor:
        # means spread over the standardized range so that components start apart; all stds start at 1
        means = torch.linspace(-1.5, 1.5, K) if K > 1 else torch.zeros(1)
        lo, hi = math.log(self.config.min_std), math.log(self.config.max_std)
        raw_std = math.log(-lo / hi) if hi > 0 > lo else 0.0  # σ(raw) = (0 - lo) / (hi - lo): log σ = 0
        row = torch.cat([torch.zeros(K), means, torch.full((K,), raw_std)])  # (3K,)
        return row.repeat(D, 1)  # (D, 3K)

    @classmethod
    def tiny_configs(cls) -> list[RNADEConfig]:
        return [
            RNADEConfig(length=6, hidden=8, components=3),
            RNADEConfig(length=2, hidden=5, components=3),  # 2-D: its density is integrated on a grid in tests
            RNADEConfig(length=9, hidden=4, components=1),
        ]

    @property
    def vocab_size(self) -> int | None:
        return None  # continuous values

    @property
    def num_params(self) -> int:
        return 3 * self.config.components

    def state_spec(self):
        return [("a", (self.config.hidden,), torch.float32)]

    def _mixture(self, raw: Tensor) -> Tensor:
        """[..., 3K] raw outputs -> [..., 3K] (mixture logits, means, log stds) with bounded log stds."""
        logit_w, mu, raw_std = raw.chunk(3, dim=-1)
        lo, hi = math.log(self.config.min_std), math.log(self.config.max_std)
        log_sigma = lo + (hi - lo) * torch.sigmoid(raw_std)
        return torch.cat([logit_w, mu, log_sigma], dim=-1)

    def _conditionals(self, x: Tensor) -> Tensor:
        contrib = x.to(self.W.dtype).unsqueeze(-1) * self.W  # (B, D, H)
        a = torch.cumsum(contrib, dim=1) - contrib + self.c  # exclusive prefix sum: a_i uses x_<i
        h = torch.sigmoid(self.rho.unsqueeze(-1) * a)  # (B, D, H)
        raw = torch.einsum("bdh,dph->bdp", h, self.V) + self.b  # (B, D, 3K)
        return self._mixture(raw)

    def _step(self, x_prev: Tensor, pos: Tensor, state: State) -> tuple[Tensor, State]:
        (a,) = state
        prev = (pos - 1).clamp(min=0)
        # x_{pos-1}, or 0 at the first position (where x_prev may be any start value)
        gate = torch.where(pos > 0, x_prev.to(a.dtype), torch.zeros_like(a[:, 0]))
        a = a + self.W[prev] * gate.unsqueeze(-1)  # (B, H), the running sum without c
        h = torch.sigmoid(self.rho[pos].unsqueeze(-1) * (a + self.c))  # (B, H)
        raw = torch.einsum("bh,bph->bp", h, self.V[pos]) + self.b[pos]  # (B, 3K)
        return self._mixture(raw), (a,)
