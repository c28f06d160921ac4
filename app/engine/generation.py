"""The generation loop, written against the Backend protocol. Knows nothing of HTTP or text.

Generation is prefill -> step -> sample -> stop: a request's prefix tokens are fed through `step` like any
other token (forced instead of drawn), then every position is drawn with app.engine.sampling from the request's
own numpy Generator. Rows of different requests can share one batched `step` call, each at its own
position; since the sampler takes one uniform per row per draw from the row's own Generator, how the work
is batched (or chunked into events) never changes a sample.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field, replace

import numpy as np

from app.engine.sampling import (
    bernoulli_bounds,
    draw_row,
    log_softmax,
    mixture_log_density,
    mixture_values,
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
    chunk: int = 1  # tokens per event the reader wants: up to this many positions may be drawn per runtime call

    @property
    def multi_token(self) -> bool:
        """Whether the multi-token graph can draw this stream (several positions per call): its events hold
        several tokens, and it asks for no filter the graph lacks (top-p, min-p, top-k above 1)."""
        return self.chunk >= 2 and self.top_k in (0, 1) and self.top_p >= 1.0 and self.min_p == 0


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
MAX_K = 256  # most positions a row draws in one multi-token call (ARSERVE_MAX_CHUNK's default)
RANDOMS = UNIFORMS + MAX_K  # a row's buffer of numbers drawn ahead
# An emptied batch keeps state buffers up to this size, and the runtime's binding over them: the next stream
# then steps at once (a new binding costs its first step ~0.6 ms, the char-Transformer's time to first token).
KEEP_IDLE_BYTES = 4 << 20
MIXTURE_AHEAD = 64  # mixtures draw a uniform and a normal per position, in turn: pairs drawn ahead per refill
_ROW_ARRAYS = ("seq", "lps", "pos", "plen", "end", "sent", "u", "z", "lo", "hi", "ucur", "ulen", "first", "chunk",
               "temp", "multi", "hold")


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
        # several positions per call (stepk.onnx), where the backend has it: for "replace" states only
        self.step_k = getattr(backend, "step_k", None)
        self.gens: list[Generation] = []  # row order
        self.capacity, self.width = 0, 0
        self.state: list[np.ndarray] = []
        self._version = 0  # bumped when rows move, so that cached settings groups are recomputed
        self._groups: tuple[int, bytes, list] | None = None
        self.multi_members = 0  # members the multi-token graph may draw
        self.fresh = False  # a member drew its first token since the worker last looked (it hands it over now)
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
        self.ucur[r], self.ulen[r], self.first[r], self.hold[r] = 0, 0, np.nan, False
        spec = gen.spec
        self.chunk[r] = min(spec.chunk, MAX_K)
        self.temp[r] = 0.0 if spec.top_k == 1 else spec.temperature  # top-k 1 is the argmax
        self.multi[r] = self.step_k is not None and spec.multi_token
        self.multi_members += bool(self.multi[r])
        self.gens.append(gen)
        self.keeping_top += bool(gen.spec.top_logprobs)
        gen.started = time.perf_counter()
        self._version += 1

    def leave(self, gen: Generation) -> tuple[Generation, int, list, list] | None:
        """Remove gen (its last tokens handed over first, returned as take_new returns them); the last row
        moves into its place."""
        r = self.gens.index(gen)
        out = self._hand_over(r)
        self.multi_members -= bool(self.multi[r])
        last = len(self.gens) - 1
        if r != last:
            for a in self._arrays():
                a[r] = a[last]
            self.gens[r] = self.gens[last]
        self.gens.pop()
        self.keeping_top -= bool(gen.spec.top_logprobs)
        self._version += 1
        if not self.gens and self.state_bytes() > KEEP_IDLE_BYTES:
            self._free()
            getattr(self.backend, "release", lambda: None)()  # a binding kept over our buffers lets them go
        return out

    def state_bytes(self) -> int:
        return sum(a.nbytes for a in self.state)

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
        """Advance rows [0, k): by one position, or by up to `chunk` positions in one multi-token call for the rows
        that allow it (moved to the front of the k); returns (the members that finished, tokens drawn)."""
        m = self._front_multi(k) if self.multi_members else 0
        if not m:
            return self._step_rows(0, k)
        done, drawn = self._step_multi(m)
        if m < k:
            more, extra = self._step_rows(m, k)
            done, drawn = done + more, drawn + extra
        return done, drawn

    def _front_multi(self, k: int) -> int:
        """Move the rows of [0, k) that the multi-token graph can draw now to the front; returns how many. Not:
        a stream that does not allow it, one still in its prefix (forced tokens go one per call), or one whose
        last multi-token call stopped before a draw too close to call (`hold`: that position goes one-token)."""
        ok = self.multi[:k] & (self.pos[:k] >= self.plen[:k]) & ~self.hold[:k]
        m = int(ok.sum())
        if 0 < m < k and not ok[:m].all():
            i, j = 0, k - 1
            while i < j:
                if ok[i]:
                    i += 1
                elif not ok[j]:
                    j -= 1
                else:
                    self._swap(i, j)
                    ok[i], ok[j] = True, False
        return m

    def _step_multi(self, m: int) -> tuple[list[Generation], int]:
        """Rows [0, m) through the multi-token graph: row r draws up to n[r] positions in one call, from random
        numbers its own Generator drew beforehand (the same ones, in the same order, as one call per position)."""
        pos, end = self.pos[:m], self.end[:m]
        n = np.minimum(self.chunk[:m], end - pos)  # (m,)
        for r in np.flatnonzero(self.ulen[:m] - self.ucur[:m] < n).tolist():
            self._refill(r, int(n[r]))
        x_prev = self.seq[self._rows[:m], np.maximum(pos - 1, 0)]
        views = [buf[:m] for buf in self.state]
        tokens, params, pos_next, new = self.step_k(x_prev, pos.copy(), views, self._draw_inputs(n, m), n)
        for view, fresh in zip(views, new, strict=True):
            view[...] = fresh  # (M, m) tokens, (M, m, P) params
        took = pos_next - pos  # (m,)
        self.hold[:m] = took < n  # it stopped before a draw it could not settle: that one goes one-token
        if not took.any():
            return [], 0
        if m == 1:  # slices, not index arrays: a lone stream is the latency case
            c, at = int(took[0]), int(pos[0])
            p = np.asarray(params[:c, 0], dtype=np.float64)
            values, where = tokens[:c, 0], (0, slice(at, at + c))
            rr = np.zeros(c, dtype=np.int64)
        else:
            rr, jj = np.nonzero(np.arange(tokens.shape[0]) < took[:, None])  # row-major: each row's positions in order
            p = np.asarray(params[jj, rr], dtype=np.float64)  # (N, P)
            values, where = tokens[jj, rr], (rr, pos[rr] + jj)
        self.seq[where] = values
        if self.mixture:
            self.lps[where] = mixture_log_density(p, values.astype(np.float64))
        else:
            self.lps[where] = log_softmax(p)[np.arange(len(values)), values]
        if self.keeping_top:
            for i, r in enumerate(rr.tolist()):
                g = self.gens[r]
                if g.spec.top_logprobs:
                    g.top.append(top_logprobs(p[i], g.spec.top_logprobs))
        self.ucur[:m] += took
        firsts = np.flatnonzero((pos == self.plen[:m]) & (took > 0))
        if len(firsts):
            self.first[firsts] = time.perf_counter()
            self.fresh = True
        pos += took
        finished = np.flatnonzero(pos >= end)
        now = time.perf_counter()
        done = [self.gens[r] for r in finished.tolist()]
        for g in done:
            g.finished = now
        return done, len(values)

    def _draw_inputs(self, n: np.ndarray, m: int) -> dict[str, np.ndarray]:
        """The multi-token graph's random inputs for rows [0, m), [m, M]: the uniforms (and normals) as drawn, or
        for Bernoulli draws the bounds of each uniform (computed when it was drawn)."""
        M = int(n.max())
        if m == 1:
            c = int(self.ucur[0])
            cols = slice(c, c + M)
            take = (lambda a: a[0:1, cols]) if c + M <= RANDOMS else None
        else:
            take = None
        if take is None:
            rows, cols = self._rows[:m, None], np.minimum(self.ucur[:m, None] + np.arange(M), RANDOMS - 1)
            take = lambda a: a[rows, cols]  # noqa: E731  (past a row's n: read, never used)
        if self.step_k.draw == "bernoulli":
            lo, hi = take(self.lo).copy(), take(self.hi).copy()
            past = np.arange(M) >= n[:, None]  # positions a row does not want: never sure, so it stops there
            if past.any():
                lo[past], hi[past] = -np.inf, np.inf
            return {"lo": lo, "hi": hi}
        temp = self.temp[:m].copy()
        if self.step_k.draw == "mixture":
            return {"u": take(self.u).copy(), "z": take(self.z).copy(), "temperature": temp}
        return {"u": take(self.u).copy(), "temperature": temp}

    def _step_rows(self, a: int, b: int) -> tuple[list[Generation], int]:
        """Advance rows [a, b) by one position; returns (the members that finished, tokens drawn)."""
        self.hold[a:b] = False
        if b - a == 1 and not self.mixture:
            return self._step_one(a)
        rows = self._rows[a:b]
        pos = self.pos[a:b]
        x_prev = self.seq[rows, np.maximum(pos - 1, 0)]  # (k,); position 0 reads its own slot, which the model ignores
        views = self._views(a, b)
        params, new = self.backend.step(x_prev, pos.copy(), views)
        for view, fresh, in_place in zip(views, new, self.in_place, strict=True):
            if not in_place:
                view[...] = fresh
        params = np.asarray(params, dtype=np.float64)  # (k, P)
        if self.keeping_top:
            self._keep_top(params, a, b)
        drawing = pos >= self.plen[a:b]
        sel = np.flatnonzero(drawing)  # indices into rows [a, b)
        if len(sel):
            draw_rows = rows[sel]
            tokens, logprobs = (self._draw_mixture if self.mixture else self._draw)(params[sel], draw_rows)
            at = pos[sel]
            self.seq[draw_rows, at] = tokens
            self.lps[draw_rows, at] = logprobs
            firsts = draw_rows[at == self.plen[draw_rows]]
            if len(firsts):
                self.first[firsts] = time.perf_counter()
            self.fresh = True
        pos += 1
        finished = np.flatnonzero(pos >= self.end[a:b]) + a
        now = time.perf_counter()
        done = [self.gens[r] for r in finished.tolist()]
        for g in done:
            g.finished = now
        return done, len(sel)

    def _step_one(self, r: int) -> tuple[list[Generation], int]:
        """`_step_rows` for a single row on Python scalars: numpy calls on one-element arrays cost more than a fast
        model's step (the same arithmetic, so the same tokens)."""
        pos, g = int(self.pos[r]), self.gens[r]
        x_prev, views = self.seq[r : r + 1, max(pos - 1, 0)], self._views(r, r + 1)
        params, new = self.backend.step(x_prev, self.pos[r : r + 1].copy(), views)
        for buf, fresh, in_place in zip(views, new, self.in_place, strict=True):
            if not in_place:
                buf[...] = fresh
        if self.keeping_top:
            self._keep_top(params, r, r + 1)
        drawn = pos >= self.plen[r]
        if drawn:
            c = int(self.ucur[r])
            if c >= self.ulen[r]:
                self._refill(r, 1)
                c = 0
            self.ucur[r] = c + 1
            row = np.asarray(params[0], dtype=np.float64)
            token = draw_row(row, float(self.u[r, c]), *g.draw_settings)
            self.seq[r, pos], self.lps[r, pos] = token, token_log_softmax(row, token)
            if pos == self.plen[r]:
                self.first[r] = time.perf_counter()
                self.fresh = True
        self.pos[r] = pos + 1
        if pos + 1 < self.end[r]:
            return [], int(drawn)
        g.finished = time.perf_counter()
        return [g], int(drawn)

    def _draw(self, params: np.ndarray, rows: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """params [len(rows), P] of the given batch rows -> (tokens, log-probs)."""
        u = self._uniforms(rows)
        if len(rows) == 1:  # one row: sample_row's arithmetic on Python floats where it is cheaper
            token = draw_row(params[0], float(u[0]), *self.gens[int(rows[0])].draw_settings)
            return np.array([token]), np.array([token_log_softmax(params[0], token)])
        tokens = np.empty(len(rows), dtype=np.int64)
        for settings, sel in self._settings_groups(rows):
            tokens[sel] = sample_rows(params[sel], u[sel], *settings)
        return tokens, log_softmax(params)[np.arange(len(rows)), tokens]

    def _draw_mixture(self, params: np.ndarray, rows: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Mixtures take a uniform then a normal of each row's Generator, drawn ahead in that order."""
        u, z = self._uniforms(rows, normals=True)
        values, logprobs = [], []
        for i, r in enumerate(rows.tolist()):
            row = params[i : i + 1]
            value = mixture_values(row, u[i : i + 1], z[i : i + 1], self.gens[r].spec.temperature)  # (1,) float32
            values.append(value[0])
            logprobs.append(mixture_log_density(row, value.astype(np.float64))[0])
        return np.array(values, dtype=np.float32), np.array(logprobs)

    def _keep_top(self, params: np.ndarray, a: int, b: int) -> None:
        """Record the most likely tokens at each position of the rows [a, b) that ask for them (before it moves
        on), for callers that report alternatives (the OpenAI-compatible logprobs): Generation.top[pos]."""
        for r in range(a, b):
            g = self.gens[r]
            if g.spec.top_logprobs and not g.mixture:
                g.top.append(top_logprobs(np.asarray(params[r - a], dtype=np.float64), g.spec.top_logprobs))

    def _uniforms(self, rows: np.ndarray, normals: bool = False):
        """The next number drawn ahead for each row (and its normal, for mixtures)."""
        for r in rows[self.ucur[rows] >= self.ulen[rows]].tolist():
            self._refill(r, 1)
        cur = self.ucur[rows]
        self.ucur[rows] = cur + 1
        return (self.u[rows, cur], self.z[rows, cur]) if normals else self.u[rows, cur]

    def _refill(self, r: int, need: int) -> None:
        """Row r's numbers drawn ahead, topped up to at least `need` unread ones: its Generator continues where it
        stopped, so the numbers are those that one call per position would draw (uniforms in one rng.random(n);
        a mixture's uniform and normal alternately, as `sample_mixture` draws them for one row)."""
        c, end, rng = int(self.ucur[r]), int(self.ulen[r]), self.gens[r].rng
        keep = end - c
        self.u[r, :keep] = self.u[r, c:end]
        if self.mixture:
            self.z[r, :keep] = self.z[r, c:end]
            fill = min(RANDOMS, keep + max(need, MIXTURE_AHEAD))
            for j in range(keep, fill):
                self.u[r, j], self.z[r, j] = rng.random(), rng.standard_normal()
        else:
            fill = RANDOMS
            self.u[r, keep:] = rng.random(RANDOMS - keep)
            if self.multi[r] and self.step_k.draw == "bernoulli":  # its bounds, once per number drawn
                self.lo[r, :keep], self.hi[r, :keep] = self.lo[r, c:end], self.hi[r, c:end]
                self.lo[r, keep:], self.hi[r, keep:] = bernoulli_bounds(self.u[r, keep:], self.temp[r])
        self.ucur[r], self.ulen[r] = 0, fill

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
        """Per member with at least one event's worth of tokens (its `chunk`) drawn since the last call: (gen,
        position of the first, tokens, log-probs); the tokens are appended to gen.tokens / gen.logprobs too. Fewer
        tokens than an event wait in the batch (the reader could not send them yet), so that a stream of 80-token
        events costs the event loop one wake-up per event, not one per hand-over; `leave` hands over the rest."""
        n = len(self.gens)
        return [self._hand_over(r) for r in np.flatnonzero(self.pos[:n] - self.sent[:n] >= self.chunk[:n]).tolist()]

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

    def _views(self, a: int, b: int) -> list[np.ndarray]:
        """Rows [a, b) of the state buffers: the same view objects from step to step while the rows and buffers
        stay, so that the backend's kept binding recognises them by identity (reading their data pointers costs
        ~1 µs each, a tenth of a lone fast stream's Python per token)."""
        cached = self._view_cache
        if cached is None or cached[0] != (a, b) or cached[1] is not self.state:
            cached = self._view_cache = ((a, b), self.state, [buf[a:b] for buf in self.state])
        return cached[2]

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
        if capacity != self.capacity:  # (a wider sample keeps the state buffers, and the binding made over them)
            state = self.backend.init_state(capacity)
            for new, old in zip(state, self.state or [None] * len(state), strict=True):
                if n:
                    new[:n] = old[:n]
            self.state = state
        self.capacity, self.width = capacity, width
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
            "u": np.zeros((capacity, RANDOMS)),  # uniforms drawn ahead ...
            "z": np.zeros((capacity, RANDOMS)),  # ... (mixtures: their normals; Bernoulli: the bounds of each u)
            "lo": np.zeros((capacity, RANDOMS), dtype=np.float32),
            "hi": np.zeros((capacity, RANDOMS), dtype=np.float32),
            "ucur": np.zeros(capacity, dtype=np.int64),  # ... the next one to use ...
            "ulen": np.zeros(capacity, dtype=np.int64),  # ... and how many are there
            "first": np.full(capacity, np.nan),  # when the first token was drawn
            "chunk": np.zeros(capacity, dtype=np.int64),  # most positions per multi-token call
            "temp": np.zeros(capacity),  # temperature of the multi-token draw (0: argmax)
            "multi": np.zeros(capacity, dtype=bool),  # the multi-token graph may draw this row
            "hold": np.zeros(capacity, dtype=bool),  # ... but its next position goes one-token
        }

    def _free(self) -> None:
        for name, a in self._allocate(0, 0).items():
            setattr(self, name, a)
        self.state, self.capacity, self.width = [], 0, 0
        self._rows = np.arange(0)
        self._view_cache: tuple | None = None


def generate(backend: Backend, specs: list[SampleSpec], mixture: bool, token_dtype: str) -> list[Generation]:
    """The specs' samples through one Batch (all rows joined at once), run to the end on this thread: what the
    worker does, without a worker (the exporter's parity gate and `arserve verify` compare paths with it)."""
    gens = [Generation(s, mixture, token_dtype) for s in specs]
    batch = Batch(backend, max(1, len(gens)))
    for g in gens:
        batch.join(g)
    while len(batch):
        done, _ = batch.step(len(batch))
        for g in done:
            batch.leave(g)
    return gens


def multi_token_problem(backend: Backend, mixture: bool, token_dtype: str, steps: int, seed: int,
                        temperatures: list[float]) -> tuple[str | None, int]:
    """Generate the same seeded samples one position per call and several per call (the multi-token graph),
    1 and 3 rows at once, chunks 7 and 64: (the first difference in a token or log-prob, or None; tokens compared)."""
    checked = 0
    for temperature in temperatures:
        for rows in (1, 3):
            specs = [SampleSpec(max_new=steps, prefix=np.zeros(0, dtype=token_dtype), seed=seed + r,
                                temperature=temperature) for r in range(rows)]
            want = generate(backend, specs, mixture, token_dtype)
            for chunk in (7, 64):
                got = generate(backend, [replace(s, chunk=chunk) for s in specs], mixture, token_dtype)
                for r, (w, g) in enumerate(zip(want, got, strict=True)):
                    for what, a, b in (("tokens", w.tokens, g.tokens), ("log-probs", w.logprobs, g.logprobs)):
                        if not np.array_equal(np.asarray(a), np.asarray(b)):
                            i = next((i for i, (x, y) in enumerate(zip(a, b, strict=False)) if x != y), len(a))
                            return (f"multi-token {what} differ from one-token ones at position {i} (row {r} of "
                                    f"{rows}, temperature {temperature:g}, chunk {chunk})"), checked
                    checked += len(w.tokens)
    return None, checked
