"""Attention RNN: a char-RNN that attends over its own past hidden states.

The attention-based model of the lecture notes (seed 001, "基于注意力的模型"): compare a query from the current
hidden state with keys of the past hidden states, build an attention distribution, take the weighted sum as a
summary of the history, and predict the next character from that summary and the current state. Attention:
Bahdanau, Cho & Bengio, "Neural Machine Translation by Jointly Learning to Align and Translate", ICLR 2015;
dot-product scoring and the combined "attentional hidden state" tanh(W_c [h; a]): Luong, Pham & Manning, 2015;
separate key and value projections of an LM's own past states: Daniluk et al., "Frustratingly Short Attention
Spans in Neural Language Modeling", ICLR 2017. The cell is an LSTM (Hochreiter & Schmidhuber 1997) or a GRU.

    h_i = RNN(E[x_{i-1}], h_{i-1})          (a start token at i = 0)
    q_i, k_i, v_i = W_q h_i, W_k h_i, W_v h_i   (n_head heads)
    a_i = sum_{j <= i} softmax_j(q_i · k_j / sqrt(d)) v_j
    p(x_i | x_<i) = softmax(W_out tanh(W_c [h_i; a_i]))

Causality: h_j summarizes x_<j, so every j <= i may be seen when predicting x_i. Including j = i (the current
state) means the softmax is never over an empty set, at position 0 too, where a_0 = v_0.

The incremental state is the recurrence's (h, c) plus a static, full-length cache of the keys and values of
h_0 .. h_pos: a step runs the cell once, writes the new key and value at each row's own position (in place, as
in models/transformer.py) and attends over slots j <= pos: O(H^2 + length · d) per step, since
the masked attention runs over the whole static cache so that the graph has one shape for every position.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from models.base import ARModel, State, attend_cached, bos_where_first, cache_slots, shift_right
from models.rnn import step_rnn

_CELLS = {"lstm": (nn.LSTM, ("h", "c")), "gru": (nn.GRU, ("h",))}


@dataclass(frozen=True)
class AttnRNNConfig:
    vocab_size: int = 65  # characters of Tiny Shakespeare
    # The attention span and the key/value cache length. Validation is scored in windows of `length` chars, each
    # from a start token, so a longer window loses less to the cold start; 512 is also the training crop, because
    # attention over more states than it was trained on is untested. The cache costs 2 x 512 x 128 floats a row.
    length: int = 512
    cell: str = "lstm"  # or "gru"
    embed_dim: int = 64
    # One LSTM layer of 512 plus attention (1.7M parameters, ~1.8M MACs per char, about the 2 x 384 char-LSTM's
    # cost): the attention summary gives it the long-range access that the second layer otherwise buys, with one
    # sequential cell instead of two, which is what limits CPU throughput.
    hidden_size: int = 512
    num_layers: int = 1
    n_head: int = 4
    attn_dim: int = 128  # query / key / value width over all heads (32 per head)
    dropout: float = 0.2  # on the embedding, between layers and before the output (training only)

    def __post_init__(self):
        if self.cell not in _CELLS:
            raise ValueError(f"cell must be one of {sorted(_CELLS)}, got {self.cell!r}")
        if self.attn_dim % self.n_head:
            raise ValueError(f"attn_dim {self.attn_dim} is not a multiple of n_head {self.n_head}")


class AttnRNN(ARModel):
    family = "attnrnn"
    config_class = AttnRNNConfig
    variable_length = True

    def __init__(self, config: AttnRNNConfig):
        super().__init__(config)
        self.bos = config.vocab_size  # the start token: one extra embedding row
        self.embed = nn.Embedding(config.vocab_size + 1, config.embed_dim)
        rnn_class, self.state_names = _CELLS[config.cell]
        between = config.dropout if config.num_layers > 1 else 0.0  # torch warns about dropout after the last layer
        self.rnn = rnn_class(config.embed_dim, config.hidden_size, config.num_layers, batch_first=True,
                             dropout=between)
        self.qkv = nn.Linear(config.hidden_size, 3 * config.attn_dim)
        self.combine = nn.Linear(config.hidden_size + config.attn_dim, config.hidden_size)
        self.drop = nn.Dropout(config.dropout)
        self.head = nn.Linear(config.hidden_size, config.vocab_size)
        # Cache slot j, used to build each row's visibility mask (a constant in the traced graphs).
        self.register_buffer("slots", torch.arange(config.length), persistent=False)

    @classmethod
    def tiny_configs(cls) -> list[AttnRNNConfig]:
        return [
            AttnRNNConfig(vocab_size=5, length=12, embed_dim=8, hidden_size=16, num_layers=1, n_head=2, attn_dim=8,
                          dropout=0.0),
            AttnRNNConfig(vocab_size=3, length=7, cell="gru", embed_dim=4, hidden_size=6, num_layers=2, n_head=1,
                          attn_dim=4, dropout=0.0),
            AttnRNNConfig(vocab_size=11, length=16, embed_dim=6, hidden_size=12, num_layers=2, n_head=3, attn_dim=12,
                          dropout=0.0),
        ]

    @property
    def head_dim(self) -> int:
        return self.config.attn_dim // self.config.n_head

    def state_spec(self):
        cfg = self.config
        rnn = [(name, (cfg.num_layers, cfg.hidden_size), torch.float32) for name in self.state_names]
        cache = (cfg.n_head, cfg.length, self.head_dim)
        return rnn + [("key", cache, torch.float32), ("value", cache, torch.float32)]

    def state_slots(self):
        return {name: (2, [(0, self.config.length)]) for name in ("key", "value")}  # slot pos of each cache

    def _heads(self, h: Tensor) -> list[Tensor]:
        B, T, _ = h.shape
        return [t.view(B, T, self.config.n_head, -1).transpose(1, 2)  # (B, nh, T, hs)
                for t in self.qkv(h).split(self.config.attn_dim, dim=2)]

    def _predict(self, h: Tensor, a: Tensor) -> Tensor:
        """Hidden states (B, T, H) and attention summaries (B, T, d) -> logits (B, T, V)."""
        return self.head(self.drop(torch.tanh(self.combine(torch.cat([h, a], dim=2)))))

    def _conditionals(self, x: Tensor) -> Tensor:
        e = self.drop(self.embed(shift_right(x, self.bos)))  # (B, T, E)
        h, _ = self.rnn(e)  # (B, T, H), from a zero initial state
        q, k, v = self._heads(h)
        a = F.scaled_dot_product_attention(q, k, v, is_causal=True)  # (B, nh, T, hs): position i sees j <= i
        return self._predict(h, a.transpose(1, 2).reshape(*h.shape[:2], -1))  # (B, T, V)

    def _step(self, x_prev: Tensor, pos: Tensor, state: State) -> tuple[Tensor, State]:
        n = len(self.state_names)
        rnn_state, k_cache, v_cache = state[:n], state[n], state[n + 1]
        e = self.embed(bos_where_first(x_prev, pos, self.bos))  # (B, E)
        # A row at position 0 starts from zeros whatever its batch slot held before, so slots can be reused;
        # its stale cache entries need no reset, the mask below hides every slot > pos.
        fresh = (pos > 0).to(e.dtype).view(-1, 1, 1)  # (B, 1, 1)
        h, hx = step_rnn(self.rnn, e, tuple(s * fresh for s in rnn_state))  # (B, H), each (B, L, H)
        h = h.unsqueeze(1)  # (B, 1, H)
        index, visible = cache_slots(pos, self.slots, self.config.n_head, self.head_dim)
        q, k, v = self.qkv(h).split(self.config.attn_dim, dim=2)  # (B, 1, d) each
        a, k_cache, v_cache = attend_cached(q, k, v, k_cache, v_cache, pos, index, visible,
                                            self.config.n_head, self.head_dim)  # a (B, 1, d), in place
        params = self._predict(h, a)[:, 0]  # (B, V)
        return params, (*hx, k_cache, v_cache)
