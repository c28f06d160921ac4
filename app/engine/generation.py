"""The generation loop, written against the Backend protocol. Knows nothing of HTTP or text.

Generation is prefill -> step -> sample -> stop: a request's prefix tokens are fed through `step` like any
other token (forced instead of drawn), then every position is drawn with app.engine.sampling from the request's
own numpy Generator. Rows of different requests can share one batched `step` call, each at its own
position; since the sampler takes one uniform per row per draw from the row's own Generator, how the work
is batched (or chunked into events) never changes a sample.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

import numpy as np

from app.engine.sampling import (
    log_softmax,
    mixture_log_density,
    sample_mixture,
    sample_row,
    sample_rows,
    token_log_softmax,
    top_logprobs,
)
from app.runtime.backends import Backend


@dataclass(frozen=True)
class SampleSpec:
    max_new: int  # tokens to draw after the prefix
    prefix: np.ndarray  # [k] tokens fed first (forced, not drawn)
    seed: int
    temperature: float = 1.0  # 0 = greedy
    top_k: int = 0  # 0 = off
    top_p: float = 1.0  # 1 = off
    min_p: float = 0.0  # 0 = off
    top_logprobs: int = 0  # keep the k most likely tokens of every position (Generation.top); 0 = off


@dataclass
class Generation:
    """One sample being drawn: its own Generator, state (batch of 1), position and output."""

    spec: SampleSpec
    state: list[np.ndarray]
    mixture: bool  # gaussian-mixture parameters (RNADE) instead of logits
    token_dtype: str
    pos: int = 0
    x_prev: float | int = 0  # the start token at position 0 is the model's business; 0 is ignored
    tokens: list = field(default_factory=list)
    logprobs: list[float] = field(default_factory=list)
    top: list[tuple[list, list[float]]] = field(default_factory=list)  # per position: (tokens, log-probs)
    created: float = field(default_factory=time.perf_counter)
    started: float | None = None  # first step
    first_token: float | None = None  # first drawn token (after the prefill)
    finished: float | None = None

    def __post_init__(self):
        self.rng = np.random.default_rng(self.spec.seed)
        self.end = len(self.spec.prefix) + self.spec.max_new

    @property
    def done(self) -> bool:
        return self.pos >= self.end

    def accept(self, params: np.ndarray) -> tuple[float | int, float] | None:
        """Take the step output [P] for this row's position: force the prefix token or draw one.
        Returns (token, log-prob under the untempered model) for drawn tokens, None for prefill."""
        if self.prefilling:
            self._advance(self.spec.prefix[self.pos])
            return None
        token = self._draw(params)
        return self.take(token, token_logprob(params, token, self.mixture))

    @property
    def prefilling(self) -> bool:
        return self.pos < len(self.spec.prefix)

    @property
    def draw_settings(self) -> tuple:
        """Rows with equal settings can be drawn together (Batch.step)."""
        s = self.spec
        return (self.mixture, s.temperature, s.top_k, s.top_p, s.min_p)

    def take(self, token: float | int, logprob: float) -> tuple[float | int, float]:
        """Record a drawn token and move on."""
        self.tokens.append(token)
        self.logprobs.append(logprob)
        now = time.perf_counter()
        self.started = self.started or now  # no prefix: the first step is the first token (prefill 0 ms)
        self.first_token = self.first_token or now
        self._advance(token)
        return token, logprob

    def _advance(self, token) -> None:
        self.started = self.started or time.perf_counter()
        self.x_prev = token
        self.pos += 1
        if self.done:
            self.finished = time.perf_counter()

    def _draw(self, params: np.ndarray):
        s = self.spec
        if self.mixture:
            return sample_mixture(params[None], self.rng, s.temperature)[0].item()  # float32 -> exact float
        return sample_row(params, self.rng, s.temperature, s.top_k, s.top_p, s.min_p)

    def keep_top(self, params: np.ndarray) -> None:
        """Record the most likely tokens at this row's position (before it moves on), for callers that report
        alternatives (the OpenAI-compatible logprobs)."""
        if self.spec.top_logprobs and not self.mixture:
            self.top.append(top_logprobs(params, self.spec.top_logprobs))

    def timings(self) -> dict[str, float]:
        end = self.finished or time.perf_counter()
        start, first = self.started or end, self.first_token or end
        ms = lambda a, b: round(1000 * max(0.0, b - a), 3)  # noqa: E731  (never negative, whatever the clock)
        n = len(self.tokens)
        return {
            "queued_ms": ms(self.created, start),
            "prefill_ms": ms(start, first),
            "generate_ms": ms(first, end),
            "total_ms": ms(self.created, end),
            "tokens_per_s": round(n / (end - start), 1) if end > start else 0.0,
        }


def token_logprob(params: np.ndarray, token, mixture: bool) -> float:
    if mixture:
        return float(mixture_log_density(params[None], np.array([token]))[0])
    return token_log_softmax(params, int(token))


class Batch:
    """Generations stepped together: one batched `step` call per position, each row at its own position.

    The batched state is kept between steps for as long as the members stay the same, so a step costs one
    backend call and no copying of the members' states (a Transformer's KV cache is megabytes per row). Members
    get their rows back, as views, by `release()`, which the owner calls before regrouping them.
    """

    def __init__(self, gens: list[Generation]):
        self.gens = list(gens)
        if len(gens) == 1:
            self.state = gens[0].state
        else:
            self.state = [np.concatenate([g.state[i] for g in gens]) for i in range(len(gens[0].state))]  # (B, ...)

    def step(self, backend: Backend) -> list[tuple[float | int, float] | None]:
        """Advance every member by one position; per member, what `Generation.accept` returns."""
        gens = self.gens
        x_prev = np.array([g.x_prev for g in gens], dtype=gens[0].token_dtype)  # (B,)
        pos = np.array([g.pos for g in gens], dtype=np.int64)  # (B,)
        params, self.state = backend.step(x_prev, pos, self.state)  # (B, P)
        params = np.asarray(params, dtype=np.float64)
        for r, g in enumerate(gens):
            if g.spec.top_logprobs:
                g.keep_top(params[r])
        out: list[tuple[float | int, float] | None] = [None] * len(gens)
        together: dict[tuple, list[int]] = {}  # categorical rows drawing with the same settings
        for r, g in enumerate(gens):
            if g.prefilling or g.mixture:
                out[r] = g.accept(params[r])
            else:
                together.setdefault(g.draw_settings, []).append(r)
        for (_, temperature, top_k, top_p, min_p), rows in together.items():
            if len(rows) == 1:
                out[rows[0]] = gens[rows[0]].accept(params[rows[0]])
                continue
            # One vectorized draw for the group; each row's uniform from its own Generator, as sample_row takes it
            u = np.array([gens[r].rng.random() for r in rows])
            tokens = sample_rows(params[rows], u, temperature, top_k, top_p, min_p)
            logprobs = log_softmax(params[rows])[np.arange(len(rows)), tokens]
            for r, token, lp in zip(rows, tokens.tolist(), logprobs.tolist(), strict=True):
                out[r] = gens[r].take(token, lp)
        return out

    def release(self) -> None:
        """Hand each member its row of the batched state (views: the next concatenate copies)."""
        for r, g in enumerate(self.gens):
            g.state = [s[r : r + 1] for s in self.state]

