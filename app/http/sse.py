"""Server-Sent Events framing (https://html.spec.whatwg.org/multipage/server-sent-events.html), by hand."""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import AsyncIterator, Callable
from typing import Any

from starlette.responses import StreamingResponse
from starlette.types import Receive, Scope, Send

from app.http.drain import CLOSE_GRACE_S, Drain

HEADERS = {"Cache-Control": "no-cache", "X-Accel-Buffering": "no"}  # no proxy buffering of the stream


_ENCODE = json.JSONEncoder(separators=(",", ":")).encode  # json.dumps(data, separators=...) builds one per call


def event(name: str, data: Any) -> bytes:
    # JSON text never holds a raw newline, so the data fits one `data:` line
    return f"event: {name}\ndata: {_ENCODE(data)}\n\n".encode()


def comment(text: str) -> bytes:
    return f": {text}\n\n".encode()


def error(code: str, message: str) -> bytes:
    return event("error", {"error": {"code": code, "message": message}})


class EventStreamResponse(StreamingResponse):
    """A text/event-stream response whose clean-up always runs: when the stream ends, fails, or the client
    goes away (Starlette then cancels the sender, possibly before the generator's own `finally` ran).

    Two bounds end it early with an error event: a write that waits on the reader longer than `stall_s` (the
    socket buffers are full: the client stopped reading), and the drain deadline at shutdown. The slot is freed
    first; the error event then gets CLOSE_GRACE_S to leave, and a reader that still does not read loses it
    (app/http/connections.py aborts such a connection)."""

    media_type = "text/event-stream"

    def __init__(self, content: AsyncIterator[bytes], on_close: Callable[[], None], stall_s: float, drain: Drain):
        super().__init__(content, headers=HEADERS)
        self.on_close, self.stall_s, self.drain = on_close, stall_s, drain

    async def stream_response(self, send: Send) -> None:
        await send({"type": "http.response.start", "status": self.status_code, "headers": self.raw_headers})
        try:
            async with self.drain.deadline():
                with StallWatch(self.stall_s) as watch:
                    async for chunk in self.body_iterator:
                        watch.since = watch.loop.time()
                        await send({"type": "http.response.body", "body": chunk, "more_body": True})
                        watch.since = None
        except TimeoutError:
            if self.drain.expired:
                last = error("shutting_down", "the server is shutting down")
            else:
                last = error("stalled", f"the reader fell behind for ARSERVE_STREAM_STALL_S={self.stall_s:g}s")
            self.on_close()
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(CLOSE_GRACE_S):
                    await send({"type": "http.response.body", "body": last, "more_body": False})
            return
        await send({"type": "http.response.body", "body": b"", "more_body": False})

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        try:
            await super().__call__(scope, receive, send)
        finally:
            try:
                await self.body_iterator.aclose()
            finally:
                self.on_close()


class StallWatch:
    """TimeoutError in the task once one write has waited `stall_s` on the reader (`since`: the loop time the
    write in progress began, None between writes). The same as an `asyncio.timeout(stall_s)` around each write,
    for one timer per stall_s per stream instead of a timer made and cancelled per write (per token)."""

    def __init__(self, stall_s: float):
        self.stall_s = stall_s
        self.since: float | None = None
        self.fired = False

    def __enter__(self) -> StallWatch:
        self.loop, self.task = asyncio.get_running_loop(), asyncio.current_task()
        self.cancelling = self.task.cancelling()  # cancellations already pending are not ours (as asyncio.timeout)
        self.timer = self.loop.call_later(self.stall_s, self._check)
        return self

    def _check(self) -> None:
        now = self.loop.time()
        if self.since is not None and now - self.since >= self.stall_s:
            self.fired = True
            self.task.cancel()
            return
        # the next write can stall no sooner than stall_s from its start: from now, or from the one in progress
        self.timer = self.loop.call_at((now if self.since is None else self.since) + self.stall_s, self._check)

    def __exit__(self, exc_type, exc, tb) -> None:
        self.timer.cancel()
        if self.fired and exc_type is asyncio.CancelledError and self.task.uncancel() <= self.cancelling:
            raise TimeoutError from exc  # ours, not a cancellation from outside (the client left, shutdown)
