"""One worker thread per model, fed by a queue: blocking torch / ONNX Runtime calls never touch the event loop.

The thread runs scoring jobs as they come and advances every open stream of its model by one position per
turn, batching the streams that use the same backend into one `step` call (whose batched state is kept
while the grouping holds). Results go back to the event loop in one call_soon_threadsafe every SEND_EVERY_S
at most, and whenever the worker is about to block. A stream whose reader falls `BUFFER` tokens behind is
paused (so a stalled client costs no compute), and a cancelled stream is dropped at the next turn.
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
_WAKE = object()


class Stream:
    """The event-loop side of one generation. Items: ("token", pos, token, logprob), ("done", gen),
    ("error", code, message)."""

    def __init__(self, worker: ModelWorker, backend: str, make: Callable[[Backend], Generation]):
        self.worker, self.backend, self.make = worker, backend, make
        self.loop = asyncio.get_running_loop()
        self.items: asyncio.Queue = asyncio.Queue()
        self.gen: Generation | None = None
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
        tokens = sum(1 for item in items if item[0] == "token")
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
        # The open batches and the (backend, streams) grouping they were built for: kept while it holds.
        self.batches: list[tuple[str, list[Stream], Batch]] = []
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

    def open(self, backend: str, make: Callable[[Backend], Generation]) -> Stream:
        stream = Stream(self, backend, make)
        self._submit(("open", stream))
        return stream

    def send(self, force: bool = False) -> None:
        """Worker thread -> event loop: hand over the unsent items in one call_soon_threadsafe. That call wakes
        the loop with a syscall and hands it the GIL, which costs a fast model more than its step; so it happens
        at most every SEND_EVERY_S while streams run, and always before the worker blocks."""
        now = time.perf_counter()
        if not self.unsent or (not force and now - self.last_sent < SEND_EVERY_S):
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
            for job in jobs:
                if job is _STOP:
                    self._shutdown()
                    return
                if job is not _WAKE:
                    self.metrics.queue_depth.labels(self.name).dec()
                    self._handle(job)
            self._advance()
            self.send()

    def _wait_for_jobs(self) -> list:
        jobs = []
        if not self._runnable():
            self.send(force=True)  # nothing may wait in unsent while the worker sleeps
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
                stream.gen = stream.make(self.backend(stream.backend))
            except Exception as e:
                log.exception("cannot start a generation on %s", self.name)
                stream.push(("error", "backend_error", f"cannot start generation: {e}"))
                return
            self.streams.append(stream)

    def _runnable(self) -> list[Stream]:
        out = []
        for s in self.streams:
            if s.cancelled:
                continue
            if s.produced - s.consumed >= BUFFER:
                s.paused = True  # set before re-reading consumed, so a reader that missed it has already woken us
                if s.produced - s.consumed >= BUFFER:
                    continue
                s.paused = False
            out.append(s)
        return out

    def _advance(self) -> None:
        self.streams = [s for s in self.streams if not s.cancelled]
        runnable = self._runnable()
        plan = []  # (backend, streams) per batched step call
        for backend in sorted({s.backend for s in runnable}):
            group = [s for s in runnable if s.backend == backend]
            plan += [(backend, group[i : i + self.max_rows]) for i in range(0, len(group), self.max_rows)]
        if [(b, [id(s) for s in g]) for b, g in plan] != [(b, [id(s) for s in g]) for b, g, _ in self.batches]:
            for *_, batch in self.batches:  # every stream gets its state back before any is regrouped
                batch.release()
            self.batches = [(b, g, Batch([s.gen for s in g])) for b, g in plan]
        for backend, group, batch in self.batches:
            self._step(backend, group, batch)

    def _step(self, backend: str, group: list[Stream], batch: Batch) -> None:
        self.step_rows.observe(len(group))
        try:
            outs = batch.step(self.backend(backend))
        except Exception as e:
            log.exception("step failed on %s", self.name)
            for s in group:
                s.push(("error", "backend_error", f"generation failed: {e}"))
                s.cancelled = True
            return
        drawn = 0
        for s, out in zip(group, outs, strict=True):
            items = []
            if out is not None:
                s.produced += 1
                drawn += 1
                items.append(("token", s.gen.pos - 1, *out))
            if s.gen.done:
                items.append(("done", s.gen))
                s.cancelled = True  # finished: leaves the worker at the next turn
            if items:
                self.unsent.append((s, items))
        if drawn:
            self.tokens.inc(drawn)

    def _shutdown(self) -> None:
        for s in self.streams:
            s.push(("error", "shutting_down", "the server is shutting down"))
        self.streams = []
