"""The one contract every arserve model obeys.

An autoregressive model is an exact density p(x) = prod_i p(x_i | x_<i). Every family exposes:

- ``conditionals(x) -> [B, T, P]``: teacher-forced parameters of p(x_i | x_<i) for every position, in one
  parallel pass. Discrete families return logits (P = vocab_size; Bernoulli families return the two
  logits [0, l] so that one categorical code path serves them all); RNADE returns mixture parameters.
- ``log_prob(x) -> [B, T]``: the exact per-position log-probabilities (log-densities for RNADE).
- ``init_state(batch)`` / ``step(x_prev, pos, state) -> (params [B, P], state)``: one generation step.
  ``x_prev`` [B] is the token at ``pos - 1`` (ignored where pos == 0), ``pos`` [B] the position being
  generated, each row at its own position. The state is a flat tuple of tensors, batch first, all
  zeros initially (declared by ``state_spec``), returned by ``step`` and never stored on the module.
  A tensor named in ``state_slots`` is written in place by ``step``, only at its declared slots (a KV cache
  row at each row's position, one slot per WaveNet ring), and returned as given; the others are replaced
  whole. The caller owns the tensors either way (docs/state.md).

The public methods validate their inputs and raise ``ValueError`` naming the problem; the underscored
cores (``_conditionals``, ``_step``) do no checks and are what the exporter traces.
"""

from __future__ import annotations

import contextlib
import dataclasses
import math
from typing import Any, ClassVar

import torch
import torch.nn.functional as F
from torch import Tensor, nn

State = tuple[Tensor, ...]


class ARModel(nn.Module):
    family: ClassVar[str] = ""
    config_class: ClassVar[type] = object
    # "bernoulli" and "categorical" share the logits code path; "gaussian_mixture" is RNADE's.
    dist: ClassVar[str] = "categorical"
    # Variable-length models (text, audio) score any 1 <= T <= length; the others need T == length.
    variable_length: ClassVar[bool] = False

    def __init__(self, config: Any):
        super().__init__()
        self.config = config

    # ----- what subclasses provide -------------------------------------------------------------

    @classmethod
    def tiny_configs(cls) -> list[Any]:
        """Small configs (first one is the default tiny model) used by tests and checks."""
        raise NotImplementedError

    def state_spec(self) -> list[tuple[str, tuple[int, ...], torch.dtype]]:
        """(name, shape without the batch dim, dtype) of each state tensor."""
        raise NotImplementedError

    def state_slots(self) -> dict[str, tuple[int, list[tuple[int, int]]]]:
        """The state tensors that `step` writes in place: name -> (slot axis, [(ring start, ring size), ...]).
        A step at position pos writes, in each row, slot start + pos % size of every ring and nothing else."""
        return {}

    def step_program(self) -> tuple[nn.Module, list[str]] | None:
        """A step for torch.export with the weights as inputs, for families where packing them pays:
        (module, the state-dict entries it takes, in order), or None. The module's forward(x_prev, pos, state,
        weights) writes the "slots" tensors in place, as _step, and returns params (then the new value of each
        "replace" tensor, as a tuple). Exported as step.pt2 and compiled by the service (docs/compiled.md)."""
        return None

    def _conditionals(self, x: Tensor) -> Tensor:
        raise NotImplementedError

    def _step(self, x_prev: Tensor, pos: Tensor, state: State) -> tuple[Tensor, State]:
        raise NotImplementedError

    # ----- the contract ------------------------------------------------------------------------

    @property
    def vocab_size(self) -> int:
        return self.config.vocab_size

    @property
    def length(self) -> int:
        return self.config.length

    @property
    def num_params(self) -> int:
        """Width of the per-position distribution parameters (logits or mixture parameters)."""
        return self.vocab_size

    @property
    def token_dtype(self) -> torch.dtype:
        return torch.float32 if self.dist == "gaussian_mixture" else torch.long

    def config_dict(self) -> dict:
        return dataclasses.asdict(self.config)

    def init_state(self, batch_size: int) -> State:
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        return tuple(torch.zeros(batch_size, *shape, dtype=dtype) for _, shape, dtype in self.state_spec())

    def conditionals(self, x: Tensor) -> Tensor:
        self.check_inputs(x)
        return self._conditionals(x)

    def log_prob(self, x: Tensor) -> Tensor:
        self.check_inputs(x)
        return params_log_prob(self.dist, self._conditionals(x), x)

    def step(self, x_prev: Tensor, pos: Tensor, state: State) -> tuple[Tensor, State]:
        self.check_step(x_prev, pos, state)
        return self._step(x_prev, pos, state)

    # ----- validation: loud, specific errors ---------------------------------------------------

    def check_inputs(self, x: Tensor) -> None:
        if x.dim() != 2:
            raise ValueError(f"x must be [batch, length], got shape {tuple(x.shape)}")
        B, T = x.shape
        if B < 1:
            raise ValueError("x is an empty batch")
        if T > self.length:
            raise ValueError(f"sequence length {T} exceeds the model's length {self.length}")
        if not self.variable_length and T != self.length:
            raise ValueError(f"{self.family} needs sequences of exactly length {self.length}, got {T}")
        if T < 1:
            raise ValueError("sequences must hold at least one token")
        if x.dtype != self.token_dtype:
            raise ValueError(f"x must have dtype {self.token_dtype}, got {x.dtype}")
        if self.token_dtype == torch.long:
            bad = (x < 0) | (x >= self.vocab_size)
            if bad.any():
                b, t = (int(v) for v in bad.nonzero()[0])
                raise ValueError(
                    f"token {int(x[b, t])} at batch {b}, position {t} is outside the vocabulary "
                    f"[0, {self.vocab_size})"
                )
        elif not torch.isfinite(x).all():
            raise ValueError("x holds NaN or infinite values")

    def check_step(self, x_prev: Tensor, pos: Tensor, state: State) -> None:
        spec = self.state_spec()
        if x_prev.dim() != 1 or pos.dim() != 1 or x_prev.shape != pos.shape:
            raise ValueError(
                f"x_prev and pos must both be [batch], got {tuple(x_prev.shape)} and {tuple(pos.shape)}"
            )
        B = x_prev.shape[0]
        if len(state) != len(spec):
            raise ValueError(f"state must hold {len(spec)} tensors, got {len(state)}")
        for (name, shape, _), s in zip(spec, state, strict=True):
            if tuple(s.shape) != (B, *shape):
                raise ValueError(
                    f"state tensor {name!r} has shape {tuple(s.shape)}, expected {(B, *shape)} "
                    f"(a state from another batch size?)"
                )
        if ((pos < 0) | (pos >= self.length)).any():
            raise ValueError(f"pos must lie in [0, {self.length}), got {pos.tolist()}")
        if self.token_dtype == torch.long:
            bad = (pos > 0) & ((x_prev < 0) | (x_prev >= self.vocab_size))
            if bad.any():
                raise ValueError(f"x_prev holds tokens outside the vocabulary [0, {self.vocab_size})")


def params_log_prob(dist: str, params: Tensor, x: Tensor) -> Tensor:
    """log p(x_i | params_i) for every position: params [B, T, P], x [B, T] -> [B, T]."""
    if dist == "gaussian_mixture":
        return mixture_log_prob(params, x)
    return F.log_softmax(params, dim=-1).gather(-1, x.unsqueeze(-1)).squeeze(-1)


def split_mixture(params: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """[..., 3K] -> (mixture logits, means, log standard deviations), each [..., K]."""
    logit_w, mu, log_sigma = params.chunk(3, dim=-1)
    return logit_w, mu, log_sigma


def mixture_log_prob(params: Tensor, x: Tensor) -> Tensor:
    logit_w, mu, log_sigma = split_mixture(params)
    z = (x.unsqueeze(-1) - mu) * torch.exp(-log_sigma)
    comp = -0.5 * z * z - log_sigma - 0.5 * math.log(2 * math.pi)
    return torch.logsumexp(F.log_softmax(logit_w, dim=-1) + comp, dim=-1)


def bernoulli_logits(logit: Tensor) -> Tensor:
    """One logit l per position -> the two categorical logits [0, l] (softmax = [1 - σ(l), σ(l)])."""
    # A product with the constant [0, 1]: two nodes in an exported step graph, where a stack costs five. Every
    # family's logit is finite (a -inf would give NaN here).
    return logit.unsqueeze(-1) * torch.tensor([0.0, 1.0], dtype=logit.dtype, device=logit.device)


def bos_where_first(x_prev: Tensor, pos: Tensor, bos: int) -> Tensor:
    """Replace x_prev by the start token where a row is at position 0."""
    return torch.where(pos == 0, torch.full_like(x_prev, bos), x_prev)


def shift_right(x: Tensor, start: int | float) -> Tensor:
    """[B, T] -> [B, T]: the inputs seen at each position (start token, then x_0 .. x_{T-2})."""
    first = torch.full_like(x[:, :1], start)
    return torch.cat([first, x[:, :-1]], dim=1)


# ----- the static key/value cache shared by the attention families -------------------------------------
#
# The cache is a "slots" state (docs/state.md): (B, nh, length, hs) per layer, one ring as long as the model; a
# step writes each row's new key/value at slot pos, in place, and attends over slots j <= pos. In eager PyTorch
# and TorchScript that is an in-place scatter and a masked attention. In ONNX it is ONNX Runtime's
# com.microsoft.GroupQueryAttention: with the cache bound as both its past and present buffer it writes the one
# new row per layer and reads only the slots each row has (seqlens_k), so a step's cost does not grow with the
# cache's size; run without shared buffers, it copies the cache instead and gives the same results.

GQA_HEAD_MULTIPLE = 8  # ONNX Runtime's CPU GroupQueryAttention needs head_size % 8 == 0; others export the scatter
_ONNX_EXPORT = False  # set by the exporter (exporting_onnx) while it traces the step graph for ONNX


@contextlib.contextmanager
def exporting_onnx():
    """While tracing for ONNX, attention steps emit GroupQueryAttention (TorchScript cannot hold that op)."""
    global _ONNX_EXPORT
    _ONNX_EXPORT = True
    try:
        yield
    finally:
        _ONNX_EXPORT = False


def cache_slots(pos: Tensor, slots: Tensor, n_head: int, head_dim: int) -> tuple[Tensor, Tensor]:
    """Where each row writes this step's key/value, and which cache slots it may attend to (j <= pos).

    pos (B,), slots = arange(length) -> index (B, nh, 1, hs), visible (B, 1, 1, length). Computed once per
    step and shared by every layer."""
    index = pos.view(-1, 1, 1, 1).expand(-1, n_head, 1, head_dim)
    visible = (slots <= pos.unsqueeze(1)).view(-1, 1, 1, slots.shape[0])
    return index, visible


def attend_cached(q: Tensor, k: Tensor, v: Tensor, k_cache: Tensor, v_cache: Tensor, pos: Tensor, index: Tensor,
                  visible: Tensor, n_head: int, head_dim: int) -> tuple[Tensor, Tensor, Tensor]:
    """This position's q, k, v (B, 1, nh * hs) and the caches (B, nh, length, hs): write k, v into the caches at
    each row's pos, in place, and attend over the slots j <= pos -> (y (B, 1, nh * hs), k_cache, v_cache).
    n_head and head_dim are the config's (plain ints, not traced shapes)."""
    B, _, C = q.shape
    if _ONNX_EXPORT and head_dim % GQA_HEAD_MULTIPLE == 0:
        return _GroupQueryAttention.apply(q, k, v, k_cache, v_cache, pos, n_head, head_dim)
    q, k, v = (t.view(B, 1, n_head, head_dim).transpose(1, 2) for t in (q, k, v))  # (B, nh, 1, hs)
    k_cache.scatter_(2, index, k)
    v_cache.scatter_(2, index, v)
    y = F.scaled_dot_product_attention(q, k_cache, v_cache, attn_mask=visible)  # (B, nh, 1, hs)
    return y.transpose(1, 2).reshape(B, 1, C), k_cache, v_cache


class _GroupQueryAttention(torch.autograd.Function):
    """attend_cached as one com.microsoft.GroupQueryAttention node (only ever traced for ONNX export)."""

    @staticmethod
    def forward(ctx, q, k, v, k_cache, v_cache, pos, n_head: int, head_dim: int):
        B, _, C = q.shape
        index, visible = cache_slots(pos, torch.arange(k_cache.shape[2]), n_head, head_dim)
        q, k, v = (t.view(B, 1, n_head, head_dim).transpose(1, 2) for t in (q, k, v))
        k_cache, v_cache = k_cache.scatter(2, index, k), v_cache.scatter(2, index, v)
        y = F.scaled_dot_product_attention(q, k_cache, v_cache, attn_mask=visible)
        return y.transpose(1, 2).reshape(B, 1, C), k_cache, v_cache

    @staticmethod
    def symbolic(g, q, k, v, k_cache, v_cache, pos, n_head: int, head_dim: int):
        int32 = 6  # onnx.TensorProto.INT32
        seqlens_k = g.op("Cast", pos, to_i=int32)  # slots before this one, per row
        one = g.op("Constant", value_t=torch.tensor(1, dtype=torch.int64))
        total = g.op("Cast", g.op("Add", g.op("ReduceMax", pos, keepdims_i=0), one), to_i=int32)  # the longest row
        y, new_k, new_v = g.op("com.microsoft::GroupQueryAttention", q, k, v, k_cache, v_cache, seqlens_k, total,
                               num_heads_i=n_head, kv_num_heads_i=n_head, scale_f=head_dim**-0.5, outputs=3)
        for out, like in ((y, q), (new_k, k_cache), (new_v, v_cache)):  # ONNX has no shape inference for it
            out.setType(like.type())
        return y, new_k, new_v
