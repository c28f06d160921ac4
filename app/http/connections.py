"""Connection-level guards uvicorn's h11 protocol lacks (docs/security.md, "Connections").

uvicorn bounds an idle keep-alive connection (timeout_keep_alive), but not a connection that opens and never
sends a request, nor one that dribbles its headers (slowloris), nor a reader that never drains a response; and
its limit_concurrency answers 503 only once a request arrived, after the connection already holds a file
descriptor. This subclass adds, per connection:

- a header deadline: a request's headers must be complete within `header_timeout_s` of the connection opening
  (or of its previous response), else the connection is closed;
- a connection cap: past `max_connections`, the connection that has waited longest for a request is closed to
  make room (so a flood of idle connections cannot lock out a health check), or the newcomer if every connection
  is busy;
- a write deadline: a connection whose writes stay paused (the peer does not read) for `write_stall_s` is
  aborted, which frees its file descriptor and its buffered bytes;
- a bounded kernel send buffer (SEND_BUFFER): Linux grows it up to 4 MB per socket on its own, which would let a
  client that stopped reading swallow ~30,000 token events before the server notices (and cost as much kernel
  memory per connection); with it, a stalled reader blocks the stream's writes after some 200 KB.

nginx (client_header_timeout, send_timeout, limit_conn) does the same in front of a server; these guards make the
bare server safe on its own. The protocol is uvicorn's internal class, pinned with uvicorn in pyproject.toml.
"""

from __future__ import annotations

import asyncio
import logging
import socket
from dataclasses import dataclass

from uvicorn.protocols.http.h11_impl import H11Protocol

log = logging.getLogger("arserve")

SEND_BUFFER = 64 * 1024  # SO_SNDBUF per connection (Linux doubles it): 128 KB in flight is >1 MB/s at 100 ms RTT


@dataclass(frozen=True)
class Limits:
    max_connections: int
    header_timeout_s: float
    write_stall_s: float


class GuardedH11Protocol(H11Protocol):
    limits = Limits(max_connections=1000, header_timeout_s=10.0, write_stall_s=60.0)  # replaced by guarded()

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        sock = transport.get_extra_info("socket")
        if sock is not None:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, SEND_BUFFER)
        self.waiting_since: float | None = None  # loop time since which it waits for a request's headers
        self._header_timer: asyncio.TimerHandle | None = None
        self._write_timer: asyncio.TimerHandle | None = None
        self._seen_cycle = None
        self._wait_for_request()
        if len(self.connections) > self.limits.max_connections:
            self._make_room()

    def connection_lost(self, exc: Exception | None) -> None:
        for timer in (self._header_timer, self._write_timer):
            if timer is not None:
                timer.cancel()
        super().connection_lost(exc)

    # ----- the header deadline ----------------------------------------------------------------------------

    def _wait_for_request(self) -> None:
        self.waiting_since = self.loop.time()
        if self._header_timer is not None:
            self._header_timer.cancel()
        self._header_timer = self.loop.call_later(self.limits.header_timeout_s, self._header_timeout)

    def _request_started(self) -> None:
        self.waiting_since = None
        if self._header_timer is not None:
            self._header_timer.cancel()
            self._header_timer = None

    def handle_events(self) -> None:
        super().handle_events()
        if self.cycle is not None and self.cycle is not self._seen_cycle:  # a request's headers are in
            self._seen_cycle = self.cycle
            self._request_started()

    def on_response_complete(self) -> None:
        super().on_response_complete()
        if not self.transport.is_closing() and self.cycle.response_complete:  # no pipelined request began
            self._wait_for_request()

    def _header_timeout(self) -> None:
        self._header_timer = None
        if self.waiting_since is not None and not self.transport.is_closing():
            log.debug("closing %s: no request headers within %gs", self.client, self.limits.header_timeout_s)
            self.transport.close()

    # ----- the connection cap -----------------------------------------------------------------------------

    def _make_room(self) -> None:
        idle = [c for c in self.connections if c is not self and getattr(c, "waiting_since", None) is not None
                and not c.transport.is_closing()]
        victim = min(idle, key=lambda c: c.waiting_since) if idle else self
        log.debug("%d connections, over max_connections=%d: closing %s", len(self.connections),
                  self.limits.max_connections, "the longest idle" if idle else "the new one")
        victim.transport.abort()  # no lingering buffer: the descriptor is free at once

    # ----- the write deadline -----------------------------------------------------------------------------

    def pause_writing(self) -> None:
        super().pause_writing()
        if self._write_timer is None:
            self._write_timer = self.loop.call_later(self.limits.write_stall_s, self._write_stalled)

    def resume_writing(self) -> None:
        super().resume_writing()
        if self._write_timer is not None:
            self._write_timer.cancel()
            self._write_timer = None

    def _write_stalled(self) -> None:
        self._write_timer = None
        log.info("aborting %s: its reader took nothing for %gs", self.client, self.limits.write_stall_s)
        self.transport.abort()


def guarded(limits: Limits) -> type[GuardedH11Protocol]:
    """The protocol class for uvicorn.Config(http=...), with these limits."""
    return type("GuardedH11Protocol", (GuardedH11Protocol,), {"limits": limits})
