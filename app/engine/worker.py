"""One worker thread per model, fed by a queue: blocking torch / ONNX Runtime calls never touch the event loop.

The thread runs scoring jobs as they come and advances every open stream of its model by one position per
turn (or up to its `chunk`, where the model has a multi-token graph), the streams of one backend stepped together
in a Batch (slot buffers that hold their states: up to max_rows rows each). Drawn tokens stay in the batch's
arrays until they go back to the event loop, per stream in one item once it holds an event's worth (`chunk`), in
one call_soon_threadsafe every SEND_EVERY_S at most, at once when a stream drew its first token, and whenever the
worker is about to block.
A stream whose reader falls `BUFFER` tokens behind is paused (so a stalled client costs no compute), and a
cancelled stream is dropped at the next turn. Who runs is recomputed only when something changed (a job, a
wake-up, a finished or paused stream), so a turn with nothing new costs the batched steps and no per-stream work.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import logging
import queue
import threading
import time
from collections.abc import Callable
from typing import Any

from app.engine.generation import Batch, Generation
from app.runtime.backends import Backend

log = logging.getLogger("arserve")

BUFFER = 64  # tokens a stream may run ahead of its reader
SEND_EVERY_S = 0.002  # while streams run, drawn tokens go to the event loop at most this often (latency bound)
_STOP = object()


def _ahead(s: Stream) -> int:
    """Tokens a stream may run ahead of its reader: BUFFER, or two events where a runtime call may draw a whole
    event (the multi-token path), so that it is not paused after every call."""
    return max(BUFFER, 2 * s.gen.spec.chunk)

_WAKE = object()


class Stream:
    """The event-loop side of one generation. Items: ("tokens", position of the first, [tokens], [logprobs]),
    ("done", gen), ("error", code, message)."""

    def __init__(self, worker: ModelWorker, backend: str, gen: Generation):
        self.worker, self.backend, self.gen = worker, backend, gen
        self.loop = asyncio.get_running_loop()
        self.items: asyncio.Queue = asyncio.Queue()
        self.batch: Batch | None = None
        self.cancelled = False
        self.paused = False
        self.produced = 0  # written by the worker thread
        self.consumed = 0  # written by the event loop

    async def get(self) -> tuple:
        item = await self.items.get()
        self._consumed([item])
        return item

    def drain(self) -> list[tuple]:
        """The items already delivered, without waiting (so that a reader can write them out together)."""
        items = []
        while not self.items.empty():
            items.append(self.items.get_nowait())
        self._consumed(items)
        return items

    def _consumed(self, items: list[tuple]) -> None:
        tokens = sum(len(item[2]) for item in items if item[0] == "tokens")
        if tokens:
            self.consumed += tokens
            if self.paused:  # consumed is written before paused is read: no lost wake-up (see _runnable)
                self.worker.wake()

    def cancel(self) -> None:
        if not self.cancelled:
            self.cancelled = True
            self.worker.wake()

    def push(self, item: tuple) -> None:
        """Worker thread -> event loop, now (errors; after any of this stream's tokens still unsent)."""
        self.worker._take_tokens()
        self.worker.unsent.append((self, [item]))
        self.worker.send(force=True)


def _put(batch: list[tuple[Stream, list[tuple]]]) -> None:
    """On the event loop: each item into its stream's queue, in order."""
    for stream, items in batch:
        for item in items:
            stream.items.put_nowait(item)


class ModelWorker:
    def __init__(self, name: str, backend: Callable[[str], Backend], metrics, max_rows: int):
        self.name, self.backend, self.metrics, self.max_rows = name, backend, metrics, max_rows
        # this model's metric children, looked up once (labels() takes a lock and a dict lookup per call)
        self.step_rows, self.tokens = metrics.step_rows.labels(name), metrics.tokens.labels(name)
        self.inbox: queue.Queue = queue.Queue()
        self.streams: list[Stream] = []
        self.batches: list[Batch] = []  # each holds streams of one backend, at most max_rows
        self.idle: dict[str, Batch] = {}  # per backend, an emptied batch that kept its buffers (Batch.leave)
        self.stream_of: dict[int, Stream] = {}  # id(gen) -> its stream
        self.plan: list[tuple[Batch, int]] = []  # each batch and how many of its rows (the runnable) step
        self.dirty = False  # something changed: recompute the plan before the next step
        # Items for the event loop, not yet handed over (worker thread only), and when the last hand-over was.
        self.unsent: list[tuple[Stream, list[tuple]]] = []
        self.last_sent = 0.0
        self.thread = threading.Thread(target=self._run, name=f"arserve-{name}", daemon=True)

    def start(self) -> None:
        self.thread.start()

    def stop(self, timeout: float = 5.0) -> None:
        self.inbox.put(_STOP)
        self.thread.join(timeout)

    def wake(self) -> None:
        self.inbox.put(_WAKE)

    # ----- event-loop side ---------------------------------------------------------------------------

    async def call(self, fn: Callable[[Backend], Any], backend: str, timeout: float) -> Any:
        """Run fn(backend) on the worker thread; raises TimeoutError (the job is dropped if not started)."""
        fut: concurrent.futures.Future = concurrent.futures.Future()
        self._submit(("call", fn, backend, fut))
        try:
            return await asyncio.wait_for(asyncio.wrap_future(fut), timeout)
        finally:
            fut.cancel()  # no-op once it ran

    def open(self, backend: str, gen: Generation) -> Stream:
        stream = Stream(self, backend, gen)
        self._submit(("open", stream))
        return stream

    def send(self, force: bool = False) -> None:
        """Worker thread -> event loop: hand over the unsent items in one call_soon_threadsafe. That call wakes
        the loop with a syscall and hands it the GIL, which costs a fast model more than its step; so it happens
        at most every SEND_EVERY_S while streams run, and always before the worker blocks."""
        now = time.perf_counter()
        if not force and now - self.last_sent < SEND_EVERY_S:
            return
        self._take_tokens()
        if not self.unsent:
            return
        batch, self.unsent, self.last_sent = self.unsent, [], now
        try:
            batch[0][0].loop.call_soon_threadsafe(_put, batch)  # every stream of a server lives on its one loop
        except RuntimeError:  # the loop is gone (shutdown): nobody listens any more
            for stream, _ in batch:
                stream.cancelled = True

    def _submit(self, job: tuple) -> None:
        self.metrics.queue_depth.labels(self.name).inc()
        self.inbox.put(job)

    # ----- worker thread -----------------------------------------------------------------------------

    def _run(self) -> None:
        while True:
            jobs = self._wait_for_jobs()
            self.dirty = self.dirty or bool(jobs)
            for job in jobs:
                if job is _STOP:
                    self._shutdown()
                    return
                if job is not _WAKE:
                    self.metrics.queue_depth.labels(self.name).dec()
                    self._handle(job)
            fresh = self._advance()
            self.send(force=fresh)  # a stream's first token goes at once: time to first token is not throttled

    def _wait_for_jobs(self) -> list:
        jobs = []
        if self.dirty:
            self._regroup()
        if not any(k for _, k in self.plan):
            self.send(force=True)  # nothing may wait in unsent while the worker sleeps
            self.dirty = True  # whatever wakes us (or the timeout) may change who runs
            # Idle or all streams paused: block. The timeout is a safety net for paused streams only.
            try:
                jobs.append(self.inbox.get(timeout=0.1 if self.streams else None))
            except queue.Empty:
                pass
        while True:
            try:
                jobs.append(self.inbox.get_nowait())
            except queue.Empty:
                return jobs

    def _handle(self, job: tuple) -> None:
        if job[0] == "call":
            _, fn, backend, fut = job
            if fut.set_running_or_notify_cancel():
                try:
                    fut.set_result(fn(self.backend(backend)))
                except BaseException as e:  # handed to the awaiting request, which turns it into a response
                    fut.set_exception(e)
        else:
            stream = job[1]
            if stream.cancelled:
                return
            try:
                backend = self.backend(stream.backend)
                batch = next((b for b in self.batches if b.backend_name == stream.backend and len(b) < self.max_rows),
                             None) or self.idle.pop(stream.backend, None) or Batch(backend, self.max_rows)
                batch.join(stream.gen)
            except Exception as e:
                log.exception("cannot start a generation on %s", self.name)
                stream.push(("error", "backend_error", f"cannot start generation: {e}"))
                return
            if batch not in self.batches:
                self.batches.append(batch)
            stream.batch = batch
            self.stream_of[id(stream.gen)] = stream
            self.streams.append(stream)

    def _runnable(self) -> list[Stream]:
        out = []
        for s in self.streams:
            if s.cancelled:
                continue
            ahead = _ahead(s)
            if s.produced - s.consumed >= ahead:
                s.paused = True  # set before re-reading consumed, so a reader that missed it has already woken us
                if s.produced - s.consumed >= ahead:
                    continue
                s.paused = False
            out.append(s)
        return out

    def _regroup(self) -> None:
        """Drop cancelled streams, then move each batch's runnable members to its front rows."""
        self.dirty = False
        for s in self.streams:
            if s.cancelled:
                self._leave(s)
        self.streams = [s for s in self.streams if not s.cancelled]
        for b in self.batches:
            if not len(b) and b.capacity:  # small enough to keep its buffers: the next stream of its backend takes it
                self.idle[b.backend_name] = b
        self.batches = [b for b in self.batches if len(b)]
        runnable = {id(s.gen) for s in self._runnable()}
        self.plan = [(b, b.front(lambda g: id(g) in runnable)) for b in self.batches]

    def _leave(self, s: Stream) -> None:
        if s.batch is not None:
            s.batch.leave(s.gen)
            s.batch = None
            self.stream_of.pop(id(s.gen), None)

    def _advance(self) -> bool:
        """One step of every batch's runnable rows; whether a stream drew its first token."""
        if self.dirty:
            self._regroup()
        fresh = False
        for batch, k in self.plan:
            if k and len(batch) >= k:
                self._step(batch, k)
                fresh, batch.fresh = fresh or batch.fresh, False
        return fresh

    def _step(self, batch: Batch, k: int) -> None:
        self.step_rows.observe(k)
        try:
            finished, drawn = batch.step(k)
        except Exception as e:
            log.exception("step failed on %s", self.name)
            for g in batch.gens[:k]:
                s = self.stream_of[id(g)]
                s.push(("error", "backend_error", f"generation failed: {e}"))
                s.cancelled = True
            self.dirty = True
            return
        if drawn:
            self.tokens.inc(drawn)
        for g in finished:  # its last tokens, then done; it leaves its batch now
            s = self.stream_of[id(g)]
            items = self._token_items(s, batch.leave(g))
            items.append(("done", g))
            self.unsent.append((s, items))
            s.batch, s.cancelled = None, True
            self.stream_of.pop(id(g), None)
            self.dirty = True

    def _take_tokens(self) -> None:
        """Every batch's tokens drawn since the last hand-over, one item per stream, into unsent."""
        for batch in self.batches:
            for taken in batch.take_new():
                s = self.stream_of[id(taken[0])]
                self.unsent.append((s, self._token_items(s, taken)))
                if s.produced - s.consumed >= _ahead(s):
                    self.dirty = True  # it may have to pause

    @staticmethod
    def _token_items(s: Stream, taken: tuple | None) -> list[tuple]:
        if taken is None:
            return []
        _, index, tokens, logprobs = taken
        s.produced += len(tokens)
        return [("tokens", index, tokens, logprobs)]

    def _shutdown(self) -> None:
        for s in self.streams:
            s.push(("error", "shutting_down", "the server is shutting down"))
        self.streams = []
