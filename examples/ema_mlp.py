"""Decaying-memory MLP: a character model whose memory is a few running averages of everything before it.

The worked example of docs/own-model.md: a family written outside models/, trained, exported, verified and served
with the `arserve` command. (In the spirit of Mozer's "focused back-propagation" units, 1989, and of the
exponential-moving-average memories of state-space models: a fixed-size summary of the whole past, cheap to
update, with no attention and no recurrence to learn through.)

    e_i   = E[x_{i-1}]                          (E[start] at i = 0)
    m_i^c = λ_c m_{i-1}^c + e_i,  m_{-1} = 0    (C memories, each forgetting at its own learned rate λ_c in (0, 1))
          = Σ_{s <= i} λ_c^(i-s) e_s
    p(x_i | x_<i) = softmax(MLP([e_i; m_i^1; ...; m_i^C]))

Parallel pass: every m_i^c at once, as a lower-triangular T x T matrix of powers λ_c^(i-s) times the embeddings.
Step: the C memories are the whole state, [batch, C, D] float32, updated in O(C D) per token whatever the position.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from models.base import ARModel, State, bos_where_first, shift_right


@dataclass(frozen=True)
class EMAConfig:
    vocab_size: int = 65  # characters of Tiny Shakespeare
    length: int = 256  # the longest sequence scored or sampled (the parallel pass builds a T x T decay matrix)
    embed_dim: int = 32
    rates: tuple[float, ...] = (0.5, 0.8, 0.95, 0.99)  # initial forgetting rates, one memory each (learned)
    hidden: int = 256


class EMAMLP(ARModel):
    family = "ema_mlp"
    config_class = EMAConfig
    variable_length = True

    def __init__(self, config: EMAConfig):
        super().__init__(config)
        C, D = len(config.rates), config.embed_dim
        self.bos = config.vocab_size  # the start token: one extra embedding row
        self.embed = nn.Embedding(config.vocab_size + 1, D)
        self.rate_logit = nn.Parameter(torch.tensor([math.log(r / (1 - r)) for r in config.rates]))  # (C,)
        self.mlp = nn.Sequential(nn.Linear((C + 1) * D, config.hidden), nn.Tanh(),
                                 nn.Linear(config.hidden, config.vocab_size))
        lag = torch.arange(config.length).view(-1, 1) - torch.arange(config.length).view(1, -1)  # (L, L) i - s
        self.register_buffer("lag", lag.clamp(min=0).float(), persistent=False)
        self.register_buffer("causal", (lag >= 0).float(), persistent=False)

    @classmethod
    def tiny_configs(cls) -> list[EMAConfig]:
        return [EMAConfig(vocab_size=5, length=12, embed_dim=4, rates=(0.5, 0.9), hidden=8),
                EMAConfig(vocab_size=3, length=7, embed_dim=2, rates=(0.7,), hidden=4)]

    def state_spec(self):
        return [("memory", (len(self.config.rates), self.config.embed_dim), torch.float32)]

    def _conditionals(self, x: Tensor) -> Tensor:
        T = x.shape[1]
        e = self.embed(shift_right(x, self.bos))  # (B, T, D)
        log_rate = nn.functional.logsigmoid(self.rate_logit).view(-1, 1, 1)  # (C, 1, 1) log λ_c
        # decay[c, i, s] = λ_c^(i - s) for s <= i, else 0; the lag is clamped so that no power blows up
        decay = torch.exp(self.lag[:T, :T] * log_rate) * self.causal[:T, :T]  # (C, T, T)
        memory = torch.matmul(decay, e.unsqueeze(1))  # (B, C, T, D)
        memory = memory.transpose(1, 2).flatten(2)  # (B, T, C * D)
        return self.mlp(torch.cat([e, memory], dim=-1))  # (B, T, V)

    def _step(self, x_prev: Tensor, pos: Tensor, state: State) -> tuple[Tensor, State]:
        (memory,) = state  # (B, C, D)
        e = self.embed(bos_where_first(x_prev, pos, self.bos))  # (B, D)
        rate = torch.sigmoid(self.rate_logit).view(1, -1, 1)  # (1, C, 1)
        # A row at position 0 starts from an empty memory whatever its batch slot held, so slots can be reused.
        kept = (pos > 0).to(e.dtype).view(-1, 1, 1)  # (B, 1, 1)
        memory = rate * memory * kept + e.unsqueeze(1)  # (B, C, D)
        return self.mlp(torch.cat([e, memory.flatten(1)], dim=-1)), (memory,)  # (B, V)
