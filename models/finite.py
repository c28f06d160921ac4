"""Finite-memory model: one shared MLP predicts each token from the k tokens before it.

Bengio, Ducharme, Vincent & Jauvin, "A Neural Probabilistic Language Model", JMLR 2003 (here over characters);
the "finite memory" model of the lecture notes (seed 003, section 5.2.1), where k = 2:

    p(x_i | x_<i) = p(x_i | x_{i-k}, ..., x_{i-1}) = softmax(W_out MLP([E[x_{i-k}]; ...; E[x_{i-1}]]))

Positions i < k have fewer than k predecessors; the missing ones are a start token. The same weights serve every
position, so the model scores sequences of any length, but nothing older than k tokens can ever matter: this is
the limited memory that RNNs and attention lift. (Bengio et al. also add optional direct input-to-output
connections; we leave them out, the tanh MLP alone carries the model.)

Embedding rows are indexed by token + 1, with row 0 the start token. The incremental state is the window itself,
a shift register of the last k embedding indices [B, k] (int64): all zeros, the required initial state, is
exactly "k start tokens", so no separate flag is needed. A step shifts in x_prev + 1 and runs the MLP once.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor, nn

from models.base import ARModel, State


@dataclass(frozen=True)
class FiniteConfig:
    vocab_size: int = 65  # characters of Tiny Shakespeare
    length: int = 1024  # the longest sequence scored or sampled; the state is k tokens whatever the length
    # The lecture's k = 2 (a trigram model) is a config away; 8 characters of context cost nothing extra to
    # step (the state is 8 int64) and reach roughly a word back, which is where char n-grams stop improving on
    # 1M characters of training text.
    k: int = 8
    embed_dim: int = 32  # per-character embedding; the MLP input is k * embed_dim = 256 wide
    # Two tanh layers of 512 (0.43M parameters, ~0.43M MACs per character): measured ~10k chars/s fwd + bwd on
    # one thread of the shared 2-core machine (batch 32 x 256), ~35 passes over the 1M training chars an hour.
    hidden: int = 512
    n_layers: int = 2
    dropout: float = 0.1  # after every hidden layer (training only)

    def __post_init__(self):
        if self.k < 1:
            raise ValueError(f"k (the number of previous tokens seen) must be >= 1, got {self.k}")


class FiniteMemory(ARModel):
    family = "finite"
    config_class = FiniteConfig
    variable_length = True

    def __init__(self, config: FiniteConfig):
        super().__init__(config)
        self.embed = nn.Embedding(config.vocab_size + 1, config.embed_dim)  # row 0: the start token
        layers: list[nn.Module] = []
        width = config.k * config.embed_dim
        for _ in range(config.n_layers):
            layers += [nn.Linear(width, config.hidden), nn.Tanh(), nn.Dropout(config.dropout)]
            width = config.hidden
        self.mlp = nn.Sequential(*layers, nn.Linear(width, config.vocab_size))

    @classmethod
    def tiny_configs(cls) -> list[FiniteConfig]:
        return [
            FiniteConfig(vocab_size=5, length=12, k=2, embed_dim=4, hidden=16, n_layers=1, dropout=0.0),
            FiniteConfig(vocab_size=3, length=7, k=1, embed_dim=3, hidden=8, n_layers=2, dropout=0.0),  # bigram
            FiniteConfig(vocab_size=11, length=9, k=12, embed_dim=2, hidden=10, n_layers=0, dropout=0.0),  # k > T
        ]

    def state_spec(self):
        return [("history", (self.config.k,), torch.int64)]

    def _predict(self, window: Tensor) -> Tensor:
        """Embedding indices of the k previous tokens (..., k) -> logits (..., V)."""
        e = self.embed(window)  # (..., k, E)
        return self.mlp(e.flatten(-2))  # (..., k * E) -> (..., V)

    def _conditionals(self, x: Tensor) -> Tensor:
        k = self.config.k
        padded = torch.cat([torch.zeros_like(x[:, :1]).expand(-1, k), x + 1], dim=1)  # (B, k + T), 0 = start
        # Column j of the window at position i is x_{i-k+j}: k shifted copies of length T, cut with a negative
        # end so that no sequence length is baked into a traced graph.
        window = torch.stack([padded[:, j : j - k] for j in range(k)], dim=2)  # (B, T, k)
        return self._predict(window)  # (B, T, V)

    def _step(self, x_prev: Tensor, pos: Tensor, state: State) -> tuple[Tensor, State]:
        (history,) = state
        shifted = torch.cat([history[:, 1:], (x_prev + 1).unsqueeze(1)], dim=1)  # (B, k)
        # At position 0 there is no previous token: the window is all start tokens, whatever the slot held.
        history = torch.where((pos == 0).unsqueeze(1), torch.zeros_like(shifted), shifted)
        return self._predict(history), (history,)
