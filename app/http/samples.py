"""Several samples of one request, as the reader sees them: derived seeds, n streams read as one, stop strings.

`n` samples are n generations started together on the model's worker (which batches them into one `step`
call), each with its own seed derived from the request's, so that every sample is reproducible on its own.
Stop strings are watched here, on the decoded text: what could still become a stop string is held back, so
that no stopped text ever reaches the client, and a stream that hit one is cancelled.
"""

from __future__ import annotations

import asyncio
import contextlib

import numpy as np

from app.engine.worker import BUFFER, Stream


def derived_seed(seed: int, i: int) -> int:
    """Sample i's seed: the request's own for sample 0 (so n=1 and the first of n agree), a hash of (seed, i)
    for the others (independent streams, never a neighbouring seed's)."""
    if i == 0:
        return seed
    return int(np.random.SeedSequence([seed, i]).generate_state(1, np.uint64)[0] >> np.uint64(1))


class Samples:
    """n streams read as one: items come tagged with their sample's index, each stream's in order.

    One stream is read directly. Several are pumped into one bounded queue, so that a reader that stalls
    still stops the worker (each stream pauses BUFFER tokens ahead of what its pump could hand over)."""

    def __init__(self, streams: list[Stream]):
        self.streams = streams
        self.tasks: list[asyncio.Task] = []
        if len(streams) > 1:
            self.queue: asyncio.Queue = asyncio.Queue(maxsize=BUFFER * len(streams))
            self.tasks = [asyncio.create_task(self._pump(i, s)) for i, s in enumerate(streams)]

    async def _pump(self, i: int, stream: Stream) -> None:
        while True:
            for item in stream.drain() or [await stream.get()]:
                await self.queue.put((i, item))
                if item[0] != "tokens":
                    return

    def drain(self) -> list[tuple[int, tuple]]:
        """The items already delivered, without waiting."""
        if not self.tasks:
            return [(0, item) for item in self.streams[0].drain()]
        items = []
        while not self.queue.empty():
            items.append(self.queue.get_nowait())
        return items

    async def next(self, keepalive_s: float, deadline: float, timeout_s: float) -> list[tuple[int, tuple]] | None:
        """What has arrived, waiting at most keepalive_s for a first item: None when nothing came (send a
        keep-alive), and past `deadline` (loop time) the stream's timeout error as its one item."""
        loop = asyncio.get_running_loop()
        try:
            items = self.drain()
            if not items:  # asyncio.timeout, not wait_for: 3.11's wait_for can swallow an outer cancellation
                async with asyncio.timeout(min(keepalive_s, deadline - loop.time())):
                    items = [await self.get()]
            return items
        except TimeoutError:
            if loop.time() < deadline:
                return None
            return [(0, ("error", "timeout", f"the stream ran past ARSERVE_STREAM_TIMEOUT_S={timeout_s:g}s"))]

    async def get(self) -> tuple[int, tuple]:
        if not self.tasks:
            return 0, await self.streams[0].get()
        return await self.queue.get()

    def cancel(self, i: int | None = None) -> None:
        """Stop sample i (all of them by default): the worker drops its generation at its next turn."""
        for j, stream in enumerate(self.streams):
            if i is None or i == j:
                stream.cancel()
                if self.tasks:
                    self.tasks[j].cancel()


class StopWatch:
    """Finds the first stop string in a sample's text as it grows, and says how much of it is safe to send:
    everything before a possible start of a stop string (held back until the next characters decide)."""

    def __init__(self, stops: list[str]):
        self.stops = [s for s in stops if s]
        self.text = ""
        self.stopped_at: int | None = None  # characters kept when a stop string was found

    def add(self, text: str) -> int:
        """Append text; the number of leading characters that are final (never part of a stop string)."""
        if self.stopped_at is not None:
            return self.stopped_at
        start = max(0, len(self.text) - max((len(s) for s in self.stops), default=0))
        self.text += text
        found = [i for i in (self.text.find(s, start) for s in self.stops) if i >= 0]
        if found:
            self.stopped_at = min(found)
            return self.stopped_at
        return len(self.text) - self._held()

    def _held(self) -> int:
        """Length of the longest tail of the text that is the beginning of some stop string."""
        for n in range(min(len(self.text), max((len(s) for s in self.stops), default=0)), 0, -1):
            tail = self.text[-n:]
            if any(s.startswith(tail) for s in self.stops):
                return n
        return 0


async def close(samples: Samples) -> None:
    """Cancel every stream and wait for the pumps to go (a cancelled pump may be mid-put)."""
    samples.cancel()
    for task in samples.tasks:
        with contextlib.suppress(asyncio.CancelledError):
            await task


class Progress:
    """One sample's drawn tokens as the reader got them, and how many are final: not held back for a stop
    string. A found stop string cuts the sample there (its text is never sent) and finishes it."""

    def __init__(self, stops: list[str] | None = None):
        self.watch = StopWatch(stops) if stops else None
        self.positions: list[int] = []
        self.tokens: list = []
        self.logprobs: list[float] = []
        self.final = 0  # tokens [0, final) can be sent
        self.sent = 0  # tokens [0, sent) were sent
        self.finish_reason: str | None = None

    def add(self, pos: int, token, logprob: float, text: str | None = None) -> None:
        self.positions.append(pos)
        self.tokens.append(token)
        self.logprobs.append(logprob)
        if self.watch is None:
            self.final = len(self.tokens)
            return
        self.final = self.watch.add(text)  # text models: one character per token, so counts agree
        if self.watch.stopped_at is not None:
            del self.positions[self.final:], self.tokens[self.final:], self.logprobs[self.final:]
            self.finish_reason = "stop"

    def extend(self, index: int, tokens: list, logprobs: list[float], chars: str | None = None) -> None:
        """One worker item: consecutive tokens from position `index` on (`chars` decodes them, when stop
        strings are watched). Stops at a stop string."""
        if self.watch is None:
            self.positions += range(index, index + len(tokens))
            self.tokens += tokens
            self.logprobs += logprobs
            self.final = len(self.tokens)
            return
        for j, (token, logprob) in enumerate(zip(tokens, logprobs, strict=True)):
            self.add(index + j, token, logprob, chars[token])
            if self.stopped:
                return

    @property
    def stopped(self) -> bool:
        return self.finish_reason == "stop"

    def end(self, finish_reason: str) -> None:
        """The generation is over: what was held back for a stop string that never came is final."""
        self.final = len(self.tokens)
        self.finish_reason = self.finish_reason or finish_reason

    def take(self, multiple: int = 1, flush: bool = False) -> range:
        """Mark the next final tokens sent, a multiple of `multiple` of them unless flushing; their indices."""
        n = self.final - self.sent
        if not flush:
            n -= n % multiple
        out, self.sent = range(self.sent, self.sent + n), self.sent + n
        return out
