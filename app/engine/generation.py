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
    draw_row,
    log_softmax,
    mixture_log_density,
    sample_mixture,
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


@dataclass(eq=False)  # compared by identity: a Batch finds its members with list.index
class Generation:
    """One sample being drawn: its settings, its own Generator and what it has drawn so far. Its position and
    state live in the Batch that runs it (a row of slot buffers); `tokens` and `logprobs` receive the drawn
    tokens when the Batch hands them over (`Batch.take_new`, `Batch.leave`)."""

    spec: SampleSpec
    mixture: bool  # gaussian-mixture parameters (RNADE) instead of logits
    token_dtype: str
    pos: int = 0  # positions stepped, as of the last hand-over
    tokens: list = field(default_factory=list)
    logprobs: list[float] = field(default_factory=list)
    top: list[tuple[list, list[float]]] = field(default_factory=list)  # per position: (tokens, log-probs)
    created: float = field(default_factory=time.perf_counter)
    started: float | None = None  # joined a batch (its first step follows in the same turn); no prefix: first token
    first_token: float | None = None  # first drawn token (after the prefill)
    finished: float | None = None

    def __post_init__(self):
        self.rng = np.random.default_rng(self.spec.seed)
        self.end = len(self.spec.prefix) + self.spec.max_new

    @property
    def done(self) -> bool:
        return self.pos >= self.end

    @property
    def draw_settings(self) -> tuple:
        """Rows with equal settings are drawn together, in one vectorized call."""
        s = self.spec
        return (s.temperature, s.top_k, s.top_p, s.min_p)

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


UNIFORMS = 128  # uniforms drawn ahead per row, in one rng.random(n) call: the same numbers as n rng.random() calls
_ROW_ARRAYS = ("seq", "lps", "pos", "plen", "end", "sent", "u", "ucur", "first")


class Batch:
    """Generations of one backend stepped together, each in its own row of slot buffers (llama.cpp's slots).

    The batch owns every member's state: one buffer per state tensor, `capacity` rows, members in rows
    [0, n). A step runs rows [0, k) (the runnable members, moved to the front) on views of those buffers:
    "slots" tensors are written in place by the backend, "replace" tensors are copied back into their rows. A
    member joining takes the next free row (the buffers double, up to `max_rows`, when full); one leaving is
    replaced by the last row. So nobody's state is ever concatenated or copied per step, and nothing big stays
    allocated once the batch is empty.

    The per-token work is vectorized over the rows: positions, the sequences (prefix then drawn tokens, from
    which x_prev is read), log-probs, uniforms (drawn ahead from each row's own Generator, so a sample never
    depends on the batch) and finished flags are arrays; per-member Python runs only when tokens are handed
    over, when a member joins or leaves, and every UNIFORMS draws to refill its uniforms.
    """

    def __init__(self, backend: Backend, max_rows: int):
        self.backend, self.backend_name, self.max_rows = backend, backend.name, max_rows
        self.in_place = [u == "slots" for u in backend.updates]
        self.gens: list[Generation] = []  # row order
        self.capacity, self.width = 0, 0
        self.state: list[np.ndarray] = []
        self._version = 0  # bumped when rows move, so that cached settings groups are recomputed
        self._groups: tuple[int, bytes, list] | None = None
        self.keeping_top = 0  # members that record their positions' most likely tokens (spec.top_logprobs)
        self._free()

    def __len__(self) -> int:
        return len(self.gens)

    # ----- membership ----------------------------------------------------------------------------------

    def join(self, gen: Generation) -> None:
        if len(self.gens) >= self.max_rows:
            raise ValueError(f"batch is full ({self.max_rows} rows)")
        if not self.gens:
            self.mixture, self.token_dtype = gen.mixture, gen.token_dtype
        r = len(self.gens)
        if r == self.capacity or gen.end > self.width:
            self._resize(max(r + 1, min(2 * self.capacity, self.max_rows)), max(self.width, gen.end))
        for buf in self.state:
            buf[r] = 0  # every state starts as zeros
        plen = len(gen.spec.prefix)
        self.seq[r, :plen] = gen.spec.prefix
        self.seq[r, plen:] = 0
        self.pos[r], self.plen[r], self.end[r], self.sent[r] = 0, plen, gen.end, plen
        self.ucur[r], self.first[r] = UNIFORMS, np.nan
        self.gens.append(gen)
        self.keeping_top += bool(gen.spec.top_logprobs)
        gen.started = time.perf_counter()
        self._version += 1

    def leave(self, gen: Generation) -> tuple[Generation, int, list, list] | None:
        """Remove gen (its last tokens handed over first, returned as take_new returns them); the last row
        moves into its place."""
        r = self.gens.index(gen)
        out = self._hand_over(r)
        last = len(self.gens) - 1
        if r != last:
            for a in self._arrays():
                a[r] = a[last]
            self.gens[r] = self.gens[last]
        self.gens.pop()
        self.keeping_top -= bool(gen.spec.top_logprobs)
        self._version += 1
        if not self.gens:
            self._free()
            getattr(self.backend, "release", lambda: None)()  # a binding kept over our buffers lets them go
        return out

    def front(self, runnable) -> int:
        """Move the members for which runnable(gen) holds to rows [0, k); returns k."""
        i, j = 0, len(self.gens) - 1
        while i <= j:
            if runnable(self.gens[i]):
                i += 1
            elif not runnable(self.gens[j]):
                j -= 1
            else:
                self._swap(i, j)
        return i

    # ----- one step ------------------------------------------------------------------------------------

    def step(self, k: int) -> tuple[list[Generation], int]:
        """Advance rows [0, k) by one position; returns (the members that finished, tokens drawn)."""
        if k == 1 and not self.mixture:
            return self._step_one()
        rows = self._rows[:k]
        pos = self.pos[:k]
        x_prev = self.seq[rows, np.maximum(pos - 1, 0)]  # (k,); position 0 reads its own slot, which the model ignores
        views = [buf[:k] for buf in self.state]
        params, new = self.backend.step(x_prev, pos.copy(), views)
        for view, fresh, in_place in zip(views, new, self.in_place, strict=True):
            if not in_place:
                view[...] = fresh
        params = np.asarray(params, dtype=np.float64)  # (k, P)
        if self.keeping_top:
            self._keep_top(params, k)
        drawing = pos >= self.plen[:k]
        draw_rows = rows if drawing.all() else rows[drawing]
        if len(draw_rows):
            tokens, logprobs = (self._draw_mixture if self.mixture else self._draw)(params, draw_rows)
            at = pos[draw_rows]
            self.seq[draw_rows, at] = tokens
            self.lps[draw_rows, at] = logprobs
            firsts = draw_rows[at == self.plen[draw_rows]]
            if len(firsts):
                self.first[firsts] = time.perf_counter()
        pos += 1
        finished = np.flatnonzero(pos >= self.end[:k])
        now = time.perf_counter()
        done = [self.gens[r] for r in finished.tolist()]
        for g in done:
            g.finished = now
        return done, len(draw_rows)

    def _step_one(self) -> tuple[list[Generation], int]:
        """`step` for a single row on Python scalars: numpy calls on one-element arrays cost more than a fast
        model's step (the same arithmetic, so the same tokens)."""
        pos, g = int(self.pos[0]), self.gens[0]
        x_prev, views = self.seq[0:1, max(pos - 1, 0)], [b[:1] for b in self.state]
        params, new = self.backend.step(x_prev, self.pos[0:1].copy(), views)
        for buf, fresh, in_place in zip(self.state, new, self.in_place, strict=True):
            if not in_place:
                buf[:1] = fresh
        if self.keeping_top:
            self._keep_top(params, 1)
        drawn = pos >= self.plen[0]
        if drawn:
            c = int(self.ucur[0])
            if c >= UNIFORMS:
                self.u[0], c = g.rng.random(UNIFORMS), 0
            self.ucur[0] = c + 1
            row = np.asarray(params[0], dtype=np.float64)
            token = draw_row(row, float(self.u[0, c]), *g.draw_settings)
            self.seq[0, pos], self.lps[0, pos] = token, token_log_softmax(row, token)
            if pos == self.plen[0]:
                self.first[0] = time.perf_counter()
        self.pos[0] = pos + 1
        if pos + 1 < self.end[0]:
            return [], int(drawn)
        g.finished = time.perf_counter()
        return [g], int(drawn)

    def _draw(self, params: np.ndarray, rows: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        u = self._uniforms(rows)
        p = params if len(rows) == len(params) else params[rows]
        if len(rows) == 1:  # one row: sample_row's arithmetic on Python floats where it is cheaper
            token = draw_row(p[0], float(u[0]), *self.gens[int(rows[0])].draw_settings)
            return np.array([token]), np.array([token_log_softmax(p[0], token)])
        tokens = np.empty(len(rows), dtype=np.int64)
        for settings, sel in self._settings_groups(rows):
            tokens[sel] = sample_rows(p[sel], u[sel], *settings)
        return tokens, log_softmax(p)[np.arange(len(rows)), tokens]

    def _draw_mixture(self, params: np.ndarray, rows: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Mixtures draw a uniform then a normal from each row's Generator, interleaved: one row at a time."""
        values, logprobs = [], []
        for r in rows.tolist():
            row = params[r : r + 1]
            value = sample_mixture(row, self.gens[r].rng, self.gens[r].spec.temperature)  # (1,) float32
            values.append(value[0])
            logprobs.append(mixture_log_density(row, value.astype(np.float64))[0])
        return np.array(values, dtype=np.float32), np.array(logprobs)

    def _keep_top(self, params: np.ndarray, k: int) -> None:
        """Record the most likely tokens at each position of the rows that ask for them (before it moves on),
        for callers that report alternatives (the OpenAI-compatible logprobs): Generation.top[pos]."""
        for r in range(k):
            g = self.gens[r]
            if g.spec.top_logprobs and not g.mixture:
                g.top.append(top_logprobs(np.asarray(params[r], dtype=np.float64), g.spec.top_logprobs))

    def _uniforms(self, rows: np.ndarray) -> np.ndarray:
        """One uniform per row, the next one of the row's Generator."""
        cur = self.ucur[rows]
        for r in rows[cur >= UNIFORMS].tolist():
            self.u[r] = self.gens[r].rng.random(UNIFORMS)
            self.ucur[r] = 0
        cur = self.ucur[rows]
        self.ucur[rows] = cur + 1
        return self.u[rows, cur]

    def _settings_groups(self, rows: np.ndarray) -> list[tuple[tuple, np.ndarray]]:
        """(settings, indices into rows) of the rows sharing each draw setting (usually one group)."""
        key = (self._version, rows.tobytes())
        if self._groups is None or self._groups[:2] != key:
            groups: dict[tuple, list[int]] = {}
            for i, r in enumerate(rows.tolist()):
                groups.setdefault(self.gens[r].draw_settings, []).append(i)
            out = [(s, slice(None) if len(ix) == len(rows) else np.array(ix)) for s, ix in groups.items()]
            self._groups = (*key, out)
        return self._groups[2]

    # ----- handing tokens over -------------------------------------------------------------------------

    def take_new(self) -> list[tuple[Generation, int, list, list]]:
        """Per member with tokens drawn since the last call: (gen, position of the first, tokens, log-probs).
        The tokens are appended to gen.tokens / gen.logprobs too."""
        n = len(self.gens)
        return [self._hand_over(r) for r in np.flatnonzero(self.pos[:n] > self.sent[:n]).tolist()]

    def _hand_over(self, r: int) -> tuple[Generation, int, list, list] | None:
        g, a, b = self.gens[r], int(self.sent[r]), int(self.pos[r])
        g.pos = b
        if b <= a:
            return None
        tokens, logprobs = self.seq[r, a:b].tolist(), self.lps[r, a:b].tolist()
        g.tokens += tokens
        g.logprobs += logprobs
        self.sent[r] = b
        if g.first_token is None:
            g.first_token = float(self.first[r])
            if not len(g.spec.prefix):  # nothing to prefill: its first step is its first token's (prefill 0 ms)
                g.started = g.first_token
        return g, a, tokens, logprobs

    # ----- the slot buffers ----------------------------------------------------------------------------

    def _arrays(self) -> list[np.ndarray]:
        return [getattr(self, name) for name in _ROW_ARRAYS] + self.state

    def _swap(self, i: int, j: int) -> None:
        for a in self._arrays():
            a[[i, j]] = a[[j, i]]
        self.gens[i], self.gens[j] = self.gens[j], self.gens[i]
        self._version += 1

    def _resize(self, capacity: int, width: int) -> None:
        n = len(self.gens)
        fresh = self._allocate(capacity, width)
        for name, old in zip(_ROW_ARRAYS, [getattr(self, name) for name in _ROW_ARRAYS], strict=True):
            new = fresh[name]
            if name in ("seq", "lps"):
                new[:n, : old.shape[1]] = old[:n]
            else:
                new[:n] = old[:n]
            setattr(self, name, new)
        state = self.backend.init_state(capacity)
        for new, old in zip(state, self.state or [None] * len(state), strict=True):
            if n:
                new[:n] = old[:n]
        self.state, self.capacity, self.width = state, capacity, width
        self._rows = np.arange(capacity)

    def _allocate(self, capacity: int, width: int) -> dict[str, np.ndarray]:
        dtype = getattr(self, "token_dtype", "int64")
        return {
            "seq": np.zeros((capacity, width), dtype=dtype),  # prefix, then drawn tokens
            "lps": np.zeros((capacity, width)),  # log-probs of the drawn tokens
            "pos": np.zeros(capacity, dtype=np.int64),  # the position each row steps next
            "plen": np.zeros(capacity, dtype=np.int64),  # prefix length
            "end": np.zeros(capacity, dtype=np.int64),  # prefix + tokens to draw
            "sent": np.zeros(capacity, dtype=np.int64),  # tokens up to here are handed over
            "u": np.zeros((capacity, UNIFORMS)),  # uniforms drawn ahead ...
            "ucur": np.zeros(capacity, dtype=np.int64),  # ... and the next one to use
            "first": np.full(capacity, np.nan),  # when the first token was drawn
        }

    def _free(self) -> None:
        for name, a in self._allocate(0, 0).items():
            setattr(self, name, a)
        self.state, self.capacity, self.width = [], 0, 0
        self._rows = np.arange(0)
