"""WaveNet: a stack of dilated causal convolutions over 8-bit mu-law audio, generated with per-layer queues.

van den Oord et al., "WaveNet: A Generative Model for Raw Audio", arXiv 2016 (the model);
Paine et al., "Fast Wavenet Generation Algorithm", arXiv 2016 (the incremental step).

    h_0 = W_in * emb(x_<t)                          a kernel-2 causal conv over the shifted input
    z_l = tanh(F_l * h_{l-1}) · σ(G_l * h_{l-1})    kernel-2 convs with dilation d_l
    h_l = h_{l-1} + R_l z_l,   s = Σ_l S_l z_l,     p(x_t | x_<t) = softmax(W_2 relu(W_1 relu(s)))

A kernel-2 dilated causal conv at time t reads only h[t - d] and h[t], so it is written here as two linear
maps, one for the past tap and one for the current one: the parallel pass applies the past map to the
sequence shifted right by d (zero-padded, as a causal conv pads), and the step applies it to the oldest
entry of a FIFO queue holding the layer's last d inputs. Each step pops that entry, pushes the current input
and costs O(layers), independent of the receptive field. Zero-initialised queues match the zero padding.
The queues are rings (slot pos % d) side by side in one state tensor, so a step reads every layer's past input
with one gather and stores the new ones with one scatter, in place, instead of shifting 20 queues: a step
writes one slot per ring and copies nothing (the state is declared "slots", docs/state.md).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from models.base import ARModel, State, bos_where_first, shift_right

BOS = 256  # the start token read at position 0, one past the 256 mu-law values


@dataclass(frozen=True)
class WaveNetConfig:
    length: int = 16000  # the longest clip scored or generated: 2 s at 8 kHz
    # Two stacks of 1..512, as the paper's: the layers span 2046 past inputs, so with the input conv each
    # p(x_t | x_<t) sees the last 2048 samples (~0.26 s at 8 kHz, a few pitch periods and a phoneme).
    dilations: tuple[int, ...] = tuple(2**i for i in range(10)) * 2
    # Narrow residual/skip widths (the paper's are 512/256 for 16 kHz speech): ~0.25 M MACs per sample, so
    # training runs at ~10k samples/s on one CPU core and an hour on 2 cores sees 1-2 hours of 8 kHz speech.
    residual_channels: int = 32  # also the embedding width
    skip_channels: int = 128
    vocab_size: int = 256  # 8-bit mu-law
    sample_rate: int = 8000
    mu: int = 255

    def __post_init__(self):
        object.__setattr__(self, "dilations", tuple(self.dilations))  # a JSON list comes back as a list
        if not self.dilations or min(self.dilations) < 1:
            raise ValueError(f"dilations must be positive, got {self.dilations}")
        if self.vocab_size != self.mu + 1:
            raise ValueError(f"vocab_size must be mu + 1 = {self.mu + 1} (8-bit mu-law), got {self.vocab_size}")

    @property
    def receptive_field(self) -> int:
        """Samples x_{t-k} that p(x_t | x_<t) can see: the input conv's 2 taps plus each layer's dilation."""
        return 2 + sum(self.dilations)


class WaveNet(ARModel):
    family = "wavenet"
    config_class = WaveNetConfig
    variable_length = True

    def __init__(self, config: WaveNetConfig):
        super().__init__(config)
        C, S, V = config.residual_channels, config.skip_channels, config.vocab_size
        n = len(config.dilations)
        self.embed = nn.Embedding(V + 1, C)  # + BOS
        self.in_past = nn.Linear(C, C, bias=False)  # the causal input conv: taps t-1 and t
        self.in_cur = nn.Linear(C, C)
        self.dil_past = nn.ModuleList(nn.Linear(C, 2 * C, bias=False) for _ in range(n))  # [filter; gate]
        self.dil_cur = nn.ModuleList(nn.Linear(C, 2 * C) for _ in range(n))
        self.res = nn.ModuleList(nn.Linear(C, C) for _ in range(n))  # 1x1 convs
        self.skip = nn.ModuleList(nn.Linear(C, S) for _ in range(n))
        self.head = nn.Sequential(nn.ReLU(), nn.Linear(S, S), nn.ReLU(), nn.Linear(S, V))
        # The step's queues: the input conv's (1 slot), then one ring per layer (dilation slots), in one tensor.
        sizes = torch.tensor((1, *config.dilations))
        self.register_buffer("ring_size", sizes, persistent=False)
        self.register_buffer("ring_start", torch.cumsum(sizes, 0) - sizes, persistent=False)

    @classmethod
    def tiny_configs(cls) -> list[WaveNetConfig]:
        return [
            WaveNetConfig(length=6, dilations=(1, 2), residual_channels=4, skip_channels=8),
            WaveNetConfig(length=32, dilations=(1, 2, 4, 8), residual_channels=8, skip_channels=12),
            WaveNetConfig(length=24, dilations=(1, 2, 4, 1, 2, 4), residual_channels=6, skip_channels=10),
        ]

    def state_spec(self):
        return [("queues", (int(self.ring_size.sum()), self.config.residual_channels), torch.float32)]

    def _gated(self, i: int, past_tap: Tensor, h: Tensor) -> tuple[Tensor, Tensor]:
        """Residual block i on (its past tap W_past · h[t - d], current input h[t]) -> (new h, gated activation z)."""
        C = self.config.residual_channels
        f, g = torch.split(past_tap + self.dil_cur[i](h), [C, C], dim=-1)
        z = torch.tanh(f) * torch.sigmoid(g)
        return h + self.res[i](z), z

    def _skip(self, zs: list[Tensor]) -> Tensor:
        """Σ_l S_l z_l as one matmul over the layers' concatenated activations (one op instead of 2L)."""
        weight = torch.cat([s.weight for s in self.skip], dim=1)  # (S, L*C)
        bias = torch.stack([s.bias for s in self.skip]).sum(0)  # (S,)
        return F.linear(torch.cat(zs, dim=-1), weight, bias)

    def _conditionals(self, x: Tensor) -> Tensor:
        e = self.embed(shift_right(x, BOS))  # (B, T, C): x_{t-1} at t, BOS at 0
        h = self.in_past(delay(e, 1)) + self.in_cur(e)
        zs = []
        for i, d in enumerate(self.config.dilations):
            h, z = self._gated(i, self.dil_past[i](delay(h, d)), h)
            zs.append(z)
        return self.head(self._skip(zs))  # (B, T, V)

    def _step(self, x_prev: Tensor, pos: Tensor, state: State) -> tuple[Tensor, State]:
        (queues,) = state  # (B, Q, C): every layer's FIFO queue side by side, each a ring of `dilation` slots
        B, C, L = queues.shape[0], self.config.residual_channels, len(self.config.dilations)  # C, L static
        # A ring's slot pos % d holds its input from d steps ago, the one this step reads; this step's input
        # then overwrites it. One gather reads all the layers' past inputs and one scatter writes the new ones.
        slots = (self.ring_start + pos.unsqueeze(1) % self.ring_size).unsqueeze(2).expand(B, L + 1, C)
        past = queues.gather(1, slots)  # (B, L+1, C): the input conv's, then one row per layer
        # Every layer's past tap at once: (B, L, 1, C) @ (L, C, 2C) -> (B, L * 2C)
        w_past = torch.stack([lin.weight.t() for lin in self.dil_past])
        past_taps = torch.matmul(past[:, 1:].unsqueeze(2), w_past).reshape(B, L * 2 * C)
        e = self.embed(bos_where_first(x_prev, pos, BOS))  # (B, C)
        h = self.in_past(past[:, 0]) + self.in_cur(e)
        inputs, zs = [e], []
        for i in range(L):
            inputs.append(h)  # this layer's input, read again d steps from now
            h, z = self._gated(i, past_taps[:, 2 * C * i : 2 * C * (i + 1)], h)
            zs.append(z)
        # In place (the state's "slots" update): one slot per ring changes, and nothing is copied.
        queues.scatter_(1, slots, torch.cat(inputs, dim=1).reshape(B, L + 1, C))
        return self.head(self._skip(zs)), (queues,)  # (B, V)

    def state_slots(self):
        rings = [(int(a), int(n)) for a, n in zip(self.ring_start, self.ring_size, strict=True)]
        return {"queues": (1, rings)}

    def step_program(self) -> tuple[nn.Module, list[str]]:
        """The step for torch.export / AOTInductor: PackedStep and the state-dict entries it takes, in order."""
        n = len(self.config.dilations)
        per_layer = [f"{m}.{i}.{p}" for m, p in PackedStep.LAYER for i in range(n)]
        return PackedStep(self), [*PackedStep.INPUT, *per_layer, *PackedStep.HEAD]


class PackedStep(nn.Module):
    """WaveNet's step with its weights as inputs, packed inside the program: every layer's past-tap matrix
    stacked into one (L, C, 2C) batched matmul, the skip projections concatenated into one (L*C, S) matmul
    and their biases summed. Exported as step.pt2 (docs/compiled.md); when the service compiles it, the
    weights become constants and the packing folds away (the plain _step repacks at every call). It writes the
    queues in place at the same slots as _step and returns the logits only."""

    INPUT = ("embed.weight", "in_past.weight", "in_cur.weight", "in_cur.bias")
    LAYER = (("dil_past", "weight"), ("dil_cur", "weight"), ("dil_cur", "bias"), ("res", "weight"), ("res", "bias"),
             ("skip", "weight"), ("skip", "bias"))
    HEAD = ("head.1.weight", "head.1.bias", "head.3.weight", "head.3.bias")

    def __init__(self, model: WaveNet):
        super().__init__()
        self.C, self.L = model.config.residual_channels, len(model.config.dilations)
        self.register_buffer("ring_size", model.ring_size.clone())
        self.register_buffer("ring_start", model.ring_start.clone())

    def forward(self, x_prev: Tensor, pos: Tensor, state: list[Tensor], weights: list[Tensor]) -> Tensor:
        (queues,), C, L = state, self.C, self.L
        embed, in_past, in_cur_w, in_cur_b = weights[:4]
        dil_past, dil_cur_w, dil_cur_b, res_w, res_b, skip_w, skip_b = (
            weights[4 + k * L : 4 + (k + 1) * L] for k in range(len(self.LAYER)))
        head1_w, head1_b, head2_w, head2_b = weights[4 + len(self.LAYER) * L :]
        # Indexed reads and an index_put_ write (not gather / scatter_ as in _step): Inductor writes an
        # index_put_ into the caller's buffer, where a scatter_ became a copy of the whole state and back.
        rows = torch.arange(queues.shape[0], device=pos.device).unsqueeze(1)  # (B, 1)
        slots = self.ring_start + pos.unsqueeze(1) % self.ring_size  # (B, L+1)
        past = queues[rows, slots]  # (B, L+1, C)
        B = past.shape[0]
        w_past = torch.stack([w.t() for w in dil_past])  # (L, C, 2C)
        past_taps = torch.matmul(past[:, 1:].unsqueeze(2), w_past).reshape(B, L, 2 * C)
        e = F.embedding(bos_where_first(x_prev, pos, BOS), embed)
        h = F.linear(past[:, 0], in_past) + F.linear(e, in_cur_w, in_cur_b)
        inputs, zs = [e], []
        for i in range(L):
            inputs.append(h)
            f, g = torch.split(past_taps[:, i] + F.linear(h, dil_cur_w[i], dil_cur_b[i]), [C, C], dim=-1)
            z = torch.tanh(f) * torch.sigmoid(g)
            h = h + F.linear(z, res_w[i], res_b[i])
            zs.append(z)
        queues.index_put_((rows, slots), torch.stack(inputs, dim=1))
        s = F.linear(torch.cat(zs, dim=-1), torch.cat(list(skip_w), dim=1), torch.stack(list(skip_b)).sum(0))
        return F.linear(F.relu(F.linear(F.relu(s), head1_w, head1_b)), head2_w, head2_b)

def delay(h: Tensor, d: int) -> Tensor:
    """(B, T, C) -> (B, T, C) shifted d steps later along time, zeros first: out[:, t] = h[:, t - d]."""
    return F.pad(h, (0, 0, d, 0))[:, : -d]
