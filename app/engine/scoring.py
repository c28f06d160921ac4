"""POST /logprob's engine: one scoring thread per model, with a dynamic batcher and bounded chunks.

- **Merging** (Triton's dynamic batcher): rows of equal length from concurrent requests share one `log_prob`
  call, up to ARSERVE_SCORE_BATCH_ROWS rows, and are split back. Rows of different lengths never share a call
  (padding may change a row's last bits), and rows are merged only where the backend gives a row the same bits
  in any batch: checked per model and backend before its first merge (`merge_mode`). So a request's answer never
  depends on what it was batched with. Inputs are validated before they are queued; if a merged call fails
  anyway, each request's rows are retried on their own, so one request never fails its neighbours.
- **Chunks**: a call holds at most ARSERVE_SCORE_CHUNK_POSITIONS positions (at least one row), so a big request
  runs as several calls of bounded memory. Between calls the thread drops every request whose deadline passed
  (or whose caller gave up), and takes the request that has waited longest since its last call next: a long
  job does not hold back the small ones behind it.

Why a thread of its own beside the model's streaming worker (app/engine/worker.py) rather than chunks
interleaved with the streams' steps there: ONNX Runtime and torch release the GIL while they compute, so with
two threads a long scoring call and the streams' steps share the cores as the OS schedules them; streams keep
making tokens even while one chunk of several hundred milliseconds runs, and neither loop needs to know the
other's timing.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import logging
import math
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Literal

import numpy as np

from app.engine.errors import unavailable
from app.runtime.backends import Backend
from app.runtime.config import Settings
from app.runtime.manifest import Manifest

log = logging.getLogger("arserve")

# merge: rows of any requests share calls; pad_single: the same, but a lone row runs beside a zero row (a batch
# of one may take another kernel); alone: each request's rows are scored by themselves.
Mode = Literal["merge", "pad_single", "alone"]
PROBE_ROWS = 4


@dataclass(frozen=True)
class Score:
    logprob: float | None  # total over the scored positions, nats (None if it underflowed to -inf)
    bits_per_dim: float | None
    num_positions: int
    per_position: list[float | None] | None  # None unless asked for


def row_score(lp: np.ndarray, per_position: bool) -> Score:
    """One row's scored log-probs [n] -> its Score (each position's as a list only if asked: a Python list per
    input costs more than a cheap model's whole pass)."""
    total = float(lp.sum())
    n = len(lp)
    finite = math.isfinite(total)
    return Score(
        logprob=total if finite else None,
        bits_per_dim=-total / (n * math.log(2)) if finite else None,
        num_positions=n,
        per_position=[v if math.isfinite(v) else None for v in lp.tolist()] if per_position else None,
    )


def by_length(xs: list[np.ndarray] | np.ndarray) -> list[tuple[np.ndarray, list[int]]]:
    """Inputs -> (rows of one length [n, T], their indices in the request), one group per length."""
    if isinstance(xs, np.ndarray):  # already one [B, T] array (binary input)
        return [(xs, list(range(len(xs))))]
    groups: dict[int, list[int]] = {}
    for i, x in enumerate(xs):
        groups.setdefault(len(x), []).append(i)
    return [(np.stack([xs[i] for i in idx]), idx) for idx in groups.values()]


def score(backend: Backend, xs: list[np.ndarray] | np.ndarray, prefix_len: int,
          per_position: bool = False) -> list[Score]:
    """log p(x_>=k | x_<k) of each input in-process: one `log_prob` call per length, as the server scores a
    request that nothing else shares a call with (benchmarks compare the two)."""
    out: list[Score | None] = [None] * len(xs)
    for rows, idx in by_length(xs):
        lp = np.asarray(backend.log_prob(rows), dtype=np.float64)  # (n, T)
        for r, i in enumerate(idx):
            out[i] = row_score(lp[r, prefix_len:], per_position)
    return out


def random_rows(m: Manifest, n: int, length: int, rng: np.random.Generator) -> np.ndarray:
    """[n, length] inputs the model accepts: random tokens, or standard normal values for continuous models."""
    if m.token_dtype == "float32":
        return rng.standard_normal((n, length)).astype(np.float32)
    return rng.integers(0, m.vocab_size, (n, length), dtype=np.int64)


def merge_mode(backend: Backend, m: Manifest) -> Mode:
    """How rows of different requests may share this backend's calls without changing any row's bits.

    A backend that declares itself batch-invariant is checked on random rows at the lengths that matter (one
    token, where a batch of one is a matrix-vector product, and a typical length): rows inside a smaller batch
    must equal the same rows inside the probe's batch bit for bit, or nothing is merged; a lone row that differs
    means lone rows get padded to two."""
    if not backend.batch_invariant:
        return "alone"
    rng = np.random.default_rng(0)
    lengths = (1, min(m.length, 16)) if m.variable_length else (m.length,)
    pad = False
    for T in lengths:
        x = random_rows(m, PROBE_ROWS, T, rng)  # (4, T)
        ref = backend.log_prob(x)
        if not np.array_equal(backend.log_prob(x[1:3]), ref[1:3], equal_nan=True):
            return "alone"
        pad = pad or not np.array_equal(backend.log_prob(x[3:]), ref[3:], equal_nan=True)
    return "pad_single" if pad else "merge"


@dataclass(eq=False)
class Job:
    """One request: its rows grouped by length, where the thread has got to, and the answers so far."""

    backend: str
    groups: list[tuple[np.ndarray, list[int]]]
    prefix_len: int
    per_position: bool
    deadline: float  # time.monotonic()
    arrived: float = field(default_factory=time.monotonic)
    future: concurrent.futures.Future = field(default_factory=concurrent.futures.Future)
    results: list[Score | None] = field(default_factory=list)
    group: int = 0  # the group, and the row in it, that the next call takes
    row: int = 0
    waiting: int = 0  # rows handed to calls whose answers have not come back

    @property
    def length(self) -> int:
        return self.groups[self.group][0].shape[1]

    @property
    def taken(self) -> bool:
        return self.group == len(self.groups)

    def take(self, n: int) -> Part:
        rows, idx = self.groups[self.group]
        part = Part(self, rows[self.row : self.row + n], idx[self.row : self.row + n])
        self.row += n
        self.waiting += n
        if self.row == len(rows):
            self.group, self.row = self.group + 1, 0
        return part

    def left_in_group(self) -> int:
        return len(self.groups[self.group][0]) - self.row

    def given_up(self, now: float) -> bool:
        return self.future.done() or now > self.deadline


@dataclass(eq=False)
class Part:
    """The rows of one job in one call."""

    job: Job
    rows: np.ndarray  # (n, T)
    idx: list[int]


def _resolve(fut: concurrent.futures.Future, result=None, error: BaseException | None = None) -> None:
    """Answer a future the caller may have cancelled meanwhile (its deadline passed)."""
    try:
        if error is not None:
            fut.set_exception(error)
        else:
            fut.set_result(result)
    except concurrent.futures.InvalidStateError:
        pass


class Scorer:
    def __init__(self, name: str, backend: Callable[[str], Backend], manifest: Manifest, settings: Settings,
                 metrics, default_backend: str):
        self.name, self.backend, self.manifest, self.default_backend = name, backend, manifest, default_backend
        self.max_rows, self.chunk_positions = settings.score_batch_rows, settings.score_chunk_positions
        self.delay_s = settings.score_batch_delay_ms / 1000
        self.rows_per_call = metrics.score_rows.labels(name)
        self.requests_per_call = metrics.score_requests.labels(name)
        self.jobs: deque[Job] = deque()  # with rows not yet taken; the next call starts with the first
        self.cond = threading.Condition()
        self.stopping = False
        self.modes: dict[str, Mode] = {}  # per backend, found on first use
        self.thread = threading.Thread(target=self._run, name=f"arserve-score-{name}", daemon=True)

    def start(self) -> None:
        self.thread.start()

    def stop(self, timeout: float = 5.0) -> None:
        with self.cond:
            self.stopping = True
            self.cond.notify()
        self.thread.join(timeout)

    # ----- event-loop side ---------------------------------------------------------------------------

    async def score(self, backend: str, xs: list[np.ndarray] | np.ndarray, prefix_len: int, per_position: bool,
                    timeout: float) -> list[Score]:
        """Score validated inputs; raises TimeoutError after `timeout` s (the thread then drops what is left)."""
        job = Job(backend, by_length(xs), prefix_len, per_position, time.monotonic() + timeout)
        job.results = [None] * len(xs)
        with self.cond:
            if self.stopping:
                raise unavailable("shutting_down", "the server is shutting down")
            self.jobs.append(job)
            self.cond.notify()
        try:
            return await asyncio.wait_for(asyncio.wrap_future(job.future), timeout)
        finally:
            job.future.cancel()  # no-op once answered

    # ----- scoring thread ----------------------------------------------------------------------------

    def _run(self) -> None:
        try:
            self._mode(self.default_backend)  # checked before the first request rather than during it
        except Exception:
            log.exception("%s: cannot check how its %s backend batches", self.name, self.default_backend)
        while (lead := self._next_lead()) is not None:
            try:
                mode = self._mode(lead.backend)  # may load a backend: outside the lock
            except Exception as e:
                self._drop(lead, e)
                continue
            with self.cond:
                parts = self._gather(lead, mode)
            self._call(parts, mode)

    def _next_lead(self) -> Job | None:
        """The job to start the next call with, once there is one; None when stopping."""
        with self.cond:
            while True:
                if self.stopping:
                    for job in self.jobs:
                        _resolve(job.future, error=unavailable("shutting_down", "the server is shutting down"))
                    self.jobs.clear()
                    return None
                now = time.monotonic()
                for job in [j for j in self.jobs if j.given_up(now)]:  # the deadline passed: stop its work here
                    self.jobs.remove(job)
                    _resolve(job.future, error=TimeoutError())
                if self.jobs:
                    return self.jobs[0]
                self.cond.wait()

    def _drop(self, job: Job, error: BaseException) -> None:
        with self.cond:
            if job in self.jobs:
                self.jobs.remove(job)
        _resolve(job.future, error=error)

    def _mode(self, backend: str) -> Mode:
        if backend not in self.modes:
            self.modes[backend] = merge_mode(self.backend(backend), self.manifest)
            log.info("%s: %s scoring batches requests in mode %s", self.name, backend, self.modes[backend])
        return self.modes[backend]

    def _gather(self, lead: Job, mode: Mode) -> list[Part]:
        """(Under the lock) the rows of the next call: the lead's next rows, then rows of the same length and
        backend from the other queued jobs, oldest first; waiting up to the batch delay for more if not full."""
        cap = max(1, min(self.max_rows, self.chunk_positions // lead.length))
        while True:
            company = [] if mode == "alone" else [j for j in self.jobs if j is not lead and not j.taken
                                                  and j.backend == lead.backend and j.length == lead.length]
            rows = min(cap, lead.left_in_group() + sum(j.left_in_group() for j in company))
            wait = lead.arrived + self.delay_s - time.monotonic()  # Triton's max queue delay, from the arrival
            if rows == cap or mode == "alone" or wait <= 0:
                break
            self.cond.wait(wait)
        parts = []
        for job in [lead, *company]:
            n = min(cap - sum(len(p.rows) for p in parts), job.left_in_group())
            if n <= 0:
                break
            parts.append(job.take(n))
            self.jobs.remove(job)
            if not job.taken:
                self.jobs.append(job)  # to the back: the others' turn comes first
        return parts

    def _call(self, parts: list[Part], mode: Mode) -> None:
        """Run one call and hand each part its rows' scores; if it fails, retry each request's part alone."""
        try:
            lp = self._log_prob(parts[0].job.backend, [p.rows for p in parts], mode)
        except Exception as e:
            if len(parts) > 1:
                log.warning("%s: a merged scoring call failed (%s); retrying its %d requests one by one",
                            self.name, e, len(parts))
                for p in parts:
                    self._call([p], mode)
                return
            log.exception("%s: scoring failed", self.name)
            self._drop(parts[0].job, e)
            return
        self.rows_per_call.observe(len(lp))
        self.requests_per_call.observe(len(parts))
        r = 0
        for p in parts:
            job = p.job
            for i in p.idx:
                job.results[i] = row_score(lp[r, job.prefix_len :], job.per_position)
                r += 1
            job.waiting -= len(p.idx)
            if job.taken and job.waiting == 0:
                _resolve(job.future, job.results)

    def _log_prob(self, backend: str, rows: list[np.ndarray], mode: Mode) -> np.ndarray:
        x = rows[0] if len(rows) == 1 else np.concatenate(rows)  # (B, T)
        n = len(x)
        if n == 1 and mode == "pad_single":
            x = np.concatenate([x, np.zeros_like(x)])  # (2, T): a lone row computed as inside any batch
        return np.asarray(self.backend(backend).log_prob(x), dtype=np.float64)[:n]  # (B, T)
