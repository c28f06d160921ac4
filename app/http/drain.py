"""Graceful shutdown with a deadline (docs/security.md, "Shutdown").

On SIGTERM the launcher (app/serve.py) calls `Drain.begin`: from then on /readyz and every new request get 503
(only /healthz and /metrics still answer), while running requests and streams get ARSERVE_DRAIN_S to finish.
When the deadline passes, `expire` ends what is still running: streams send the `shutting_down` error event,
POST requests answer 503. uvicorn's own graceful-shutdown timeout (drain + CLOSE_GRACE_S) then closes whatever
a client still holds open, so the process exits within that bound whatever the clients do.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator

from starlette.types import ASGIApp, Receive, Scope, Send

from app.engine.errors import unavailable
from app.http.security import send_error

log = logging.getLogger("arserve")

CLOSE_GRACE_S = 2.0  # after the deadline: the last event's write, then uvicorn closes every connection
ALWAYS_ANSWERED = {"/healthz", "/metrics"}  # while draining: the process is alive and its metrics readable


class Drain:
    def __init__(self, drain_s: float):
        self.drain_s = drain_s
        self.draining = False  # SIGTERM received: no new work
        self.expired = False  # the drain deadline passed: running work is ended
        self.loop: asyncio.AbstractEventLoop | None = None  # the server's loop, set by the lifespan
        self._timeouts: set[asyncio.Timeout] = set()

    def begin_threadsafe(self) -> None:
        """From a signal handler (or any thread): start draining on the server's loop."""
        if self.loop is not None:
            self.loop.call_soon_threadsafe(self.begin)

    def begin(self) -> None:
        if self.draining:
            return
        self.draining = True
        log.warning("draining: new requests get 503, running ones have ARSERVE_DRAIN_S=%gs", self.drain_s)
        asyncio.get_running_loop().call_later(self.drain_s, self.expire)

    def expire(self) -> None:
        self.expired = True
        if self._timeouts:
            log.warning("drain deadline passed: ending %d running request(s)", len(self._timeouts))
        now = asyncio.get_running_loop().time()
        for timeout in list(self._timeouts):
            timeout.reschedule(now)

    @contextlib.asynccontextmanager
    async def deadline(self) -> AsyncIterator[None]:
        """The block raises TimeoutError when the drain deadline passes (then `expired` is true)."""
        async with asyncio.timeout(None) as timeout:
            if self.expired:
                timeout.reschedule(asyncio.get_running_loop().time())
            self._timeouts.add(timeout)
            try:
                yield
            finally:
                self._timeouts.discard(timeout)

    @contextlib.asynccontextmanager
    async def request(self) -> AsyncIterator[None]:
        """A request's work: a 503 `shutting_down` when the drain deadline passes."""
        try:
            async with self.deadline():
                yield
        except TimeoutError:
            if not self.expired:
                raise
            raise shutting_down() from None


def shutting_down():
    return unavailable("shutting_down", "the server is shutting down; retry on another replica")


class DrainMiddleware:
    """While draining, every new request but /healthz and /metrics gets 503 `shutting_down`."""

    def __init__(self, app: ASGIApp, drain: Drain):
        self.app, self.drain = app, drain

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and self.drain.draining and scope["path"] not in ALWAYS_ANSWERED:
            return await send_error(send, 503, "shutting_down", "the server is shutting down",
                                    {"Connection": "close", "Retry-After": "1"})
        await self.app(scope, receive, send)
