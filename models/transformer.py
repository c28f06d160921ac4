"""Transformer: a GPT-style decoder (and iGPT when the tokens are pixels).

Radford et al., "Improving Language Understanding by Generative Pre-Training", 2018, and "Language Models
are Unsupervised Multitask Learners" (GPT-2), 2019; Chen et al., "Generative Pretraining from Pixels"
(iGPT), 2020. Attention: Vaswani et al., "Attention Is All You Need", 2017.

    h^0_i = E[x_{i-1}] + P[i]   (a start token at i = 0)
    h^l = h^{l-1} + Attn(LN(h^{l-1}))  then  h^l + MLP(LN(h^l))   (pre-LayerNorm, causal attention)
    p(x_i | x_<i) = softmax(W LN(h^L_i))

Position i attends only to j <= i, so the keys and values of the prefix never change once computed: the step
keeps them in a static, full-length cache per layer, writes the new position's k, v at each row's own index,
in place, and attends over the entries j <= pos (models/base.py: attend_cached). It never re-encodes the prefix.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from models.base import ARModel, State, attend_cached, bos_where_first, cache_slots, shift_right


@dataclass(frozen=True)
class TransformerConfig:
    vocab_size: int = 65  # Tiny Shakespeare characters (iGPT on binarized MNIST: 2)
    length: int = 256  # block size: the context and the KV cache length (iGPT on 28x28 pixels: 784)
    # nanoGPT's "baby GPT" for Shakespeare is 6 x 384 (10.7M parameters) and wants a GPU. 4 x 192 (1.8M) trains
    # at ~6k tokens/s on 2 CPU cores (batch 32 x 256, fwd + bwd), ~20M tokens in an hour: ~20 passes over the text.
    n_layer: int = 4
    n_head: int = 4  # head_dim = n_embd / n_head = 48
    n_embd: int = 192
    dropout: float = 0.1  # on attention weights and residual branches (training only)
    bias: bool = False  # biases in Linear and LayerNorm; nanoGPT finds them slightly worse and slower


class MLP(nn.Module):
    def __init__(self, cfg: TransformerConfig):
        super().__init__()
        self.fc = nn.Linear(cfg.n_embd, 4 * cfg.n_embd, bias=cfg.bias)
        self.proj = nn.Linear(4 * cfg.n_embd, cfg.n_embd, bias=cfg.bias)
        self.drop = nn.Dropout(cfg.dropout)

    def forward(self, x: Tensor) -> Tensor:
        return self.drop(self.proj(F.gelu(self.fc(x))))


class CausalSelfAttention(nn.Module):
    def __init__(self, cfg: TransformerConfig):
        super().__init__()
        assert cfg.n_embd % cfg.n_head == 0, f"n_embd {cfg.n_embd} is not a multiple of n_head {cfg.n_head}"
        self.n_head, self.head_dim, self.dropout = cfg.n_head, cfg.n_embd // cfg.n_head, cfg.dropout
        self.qkv = nn.Linear(cfg.n_embd, 3 * cfg.n_embd, bias=cfg.bias)
        self.proj = nn.Linear(cfg.n_embd, cfg.n_embd, bias=cfg.bias)
        self.resid_drop = nn.Dropout(cfg.dropout)

    def _heads(self, x: Tensor) -> list[Tensor]:
        B, T, C = x.shape
        return [t.view(B, T, self.n_head, -1).transpose(1, 2) for t in self.qkv(x).split(C, dim=2)]  # (B, nh, T, hs)

    def _merge(self, y: Tensor) -> Tensor:
        B, _, T, _ = y.shape
        return self.resid_drop(self.proj(y.transpose(1, 2).reshape(B, T, -1)))  # (B, nh, T, hs) -> (B, T, C)

    def forward(self, x: Tensor) -> Tensor:
        q, k, v = self._heads(x)
        y = F.scaled_dot_product_attention(q, k, v, dropout_p=self.dropout if self.training else 0.0, is_causal=True)
        return self._merge(y)

    def step(self, x: Tensor, pos: Tensor, index: Tensor, visible: Tensor, k_cache: Tensor, v_cache: Tensor):
        """x (B, 1, C) at each row's position pos (B,); index (B, nh, 1, hs) = pos; visible (B, 1, 1, length).
        The caches are written in place."""
        q, k, v = self.qkv(x).split(x.shape[2], dim=2)  # (B, 1, C) each
        y, k_cache, v_cache = attend_cached(q, k, v, k_cache, v_cache, pos, index, visible, self.n_head,
                                              self.head_dim)  # y (B, 1, C)
        return self.resid_drop(self.proj(y)), k_cache, v_cache


class Block(nn.Module):
    def __init__(self, cfg: TransformerConfig):
        super().__init__()
        self.ln_1 = nn.LayerNorm(cfg.n_embd, bias=cfg.bias)
        self.attn = CausalSelfAttention(cfg)
        self.ln_2 = nn.LayerNorm(cfg.n_embd, bias=cfg.bias)
        self.mlp = MLP(cfg)

    def forward(self, x: Tensor) -> Tensor:
        x = x + self.attn(self.ln_1(x))
        return x + self.mlp(self.ln_2(x))

    def step(self, x: Tensor, pos: Tensor, index: Tensor, visible: Tensor, k_cache: Tensor, v_cache: Tensor):
        a, k_cache, v_cache = self.attn.step(self.ln_1(x), pos, index, visible, k_cache, v_cache)
        x = x + a
        return x + self.mlp(self.ln_2(x)), k_cache, v_cache


class Transformer(ARModel):
    family = "transformer"
    config_class = TransformerConfig
    variable_length = True

    def __init__(self, config: TransformerConfig):
        super().__init__(config)
        self.bos = config.vocab_size  # the start token: one extra embedding row
        self.wte = nn.Embedding(config.vocab_size + 1, config.n_embd)
        self.wpe = nn.Embedding(config.length, config.n_embd)
        self.drop = nn.Dropout(config.dropout)
        self.blocks = nn.ModuleList(Block(config) for _ in range(config.n_layer))
        self.ln_f = nn.LayerNorm(config.n_embd, bias=config.bias)
        # Not tied to wte: with 65 characters the head is 0.1% of the parameters, and wte has the extra BOS row.
        self.head = nn.Linear(config.n_embd, config.vocab_size, bias=False)
        # Cache slot j, used to build each row's visibility mask (a constant in the traced graphs).
        self.register_buffer("slots", torch.arange(config.length), persistent=False)
        self.apply(self._init_weights)
        for name, p in self.named_parameters():  # GPT-2: scale the residual projections by 1/sqrt(2 n_layer)
            if name.endswith("proj.weight"):
                nn.init.normal_(p, mean=0.0, std=0.02 / math.sqrt(2 * config.n_layer))

    @staticmethod
    def _init_weights(module: nn.Module) -> None:
        if isinstance(module, nn.Linear | nn.Embedding):
            nn.init.normal_(module.weight, mean=0.0, std=0.02)
        if isinstance(module, nn.Linear) and module.bias is not None:
            nn.init.zeros_(module.bias)

    @classmethod
    def tiny_configs(cls) -> list[TransformerConfig]:
        return [
            TransformerConfig(vocab_size=7, length=12, n_layer=2, n_head=2, n_embd=16, dropout=0.0, bias=True),
            TransformerConfig(vocab_size=2, length=16, n_layer=1, n_head=4, n_embd=32, dropout=0.0),  # iGPT-like
            TransformerConfig(vocab_size=11, length=9, n_layer=3, n_head=1, n_embd=8, dropout=0.0),
        ]

    @property
    def head_dim(self) -> int:
        return self.config.n_embd // self.config.n_head

    def state_spec(self):
        shape = (self.config.n_head, self.config.length, self.head_dim)
        return [(f"layer{i}.{kv}", shape, torch.float32) for i in range(self.config.n_layer) for kv in ("key", "value")]

    def state_slots(self):
        return {name: (2, [(0, self.config.length)]) for name, _, _ in self.state_spec()}  # slot pos of each cache

    def _conditionals(self, x: Tensor) -> Tensor:
        T = x.shape[1]
        h = self.drop(self.wte(shift_right(x, self.bos)) + self.wpe.weight[:T])  # (B, T, C)
        for block in self.blocks:
            h = block(h)
        return self.head(self.ln_f(h))  # (B, T, V)

    def _step(self, x_prev: Tensor, pos: Tensor, state: State) -> tuple[Tensor, State]:
        h = (self.wte(bos_where_first(x_prev, pos, self.bos)) + self.wpe(pos)).unsqueeze(1)  # (B, 1, C)
        index, visible = cache_slots(pos, self.slots, self.config.n_head, self.head_dim)
        new_state = []
        for i, block in enumerate(self.blocks):
            h, k_cache, v_cache = block.step(h, pos, index, visible, state[2 * i], state[2 * i + 1])
            new_state += [k_cache, v_cache]
        return self.head(self.ln_f(h[:, 0])), tuple(new_state)  # (B, V)
