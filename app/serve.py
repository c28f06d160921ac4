"""The one way to start the server: `python -m app.serve [--host H] [--port P]`.

`make serve`, the Dockerfile and the tests all start uvicorn here, so they run with the same limits
(docs/security.md): the h11 protocol with the guards of app/http/connections.py, the asyncio loop (named, so
that an installed uvloop or httptools never swaps in silently), a connection cap below the file-descriptor
limit (whose soft value is raised to the hard one first), keep-alive and graceful-shutdown timeouts, no
X-Forwarded-* rewriting by uvicorn (the app trusts only ARSERVE_TRUSTED_PROXIES), and SIGTERM starting the
drain of app/http/drain.py at once. Host and port come from ARSERVE_HOST / ARSERVE_PORT, or the flags.
"""

from __future__ import annotations

import argparse
import logging
import resource

import uvicorn

from app.http.connections import Limits, guarded
from app.http.drain import CLOSE_GRACE_S
from app.runtime.config import Settings, get_settings

log = logging.getLogger("arserve")

FD_RESERVE = 128  # descriptors kept for everything but client connections: model files, logs, pipes, epoll
BACKLOG = 128  # listen queue, and the most connections asyncio accepts in one go before any is counted


def raise_fd_limit() -> int:
    """Soft RLIMIT_NOFILE up to the hard limit where allowed; returns the soft limit in force."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard == resource.RLIM_INFINITY or soft < hard:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
            soft = hard
        except (ValueError, OSError):
            pass  # e.g. an infinite hard limit the kernel refuses: keep the soft one
    return soft


M_MMAP_THRESHOLD, M_ARENA_MAX = -3, -8  # mallopt's parameter numbers (malloc.h)


def tune_malloc(settings: Settings) -> list[str]:
    """glibc malloc set for a long-running server (docs/security.md, "Memory"), before the model threads start;
    returns what was set. At most ARSERVE_MALLOC_ARENA_MAX arenas: each thread that mallocs otherwise gets an
    arena of its own, whose freed memory only that arena reuses. A fixed mmap threshold: by default glibc raises
    it to the size of each big block freed (up to 32 MB), after which blocks of a few MB (a scoring batch, a
    parsed body) are carved from the heap and leave holes there; above the threshold every block is its own
    mapping, returned to the OS when freed."""
    from app.main import glibc

    libc, done = glibc(), []
    if libc is None:
        return done
    if settings.malloc_arena_max and libc.mallopt(M_ARENA_MAX, settings.malloc_arena_max):
        done.append(f"at most {settings.malloc_arena_max} arenas")
    if settings.malloc_mmap_threshold and libc.mallopt(M_MMAP_THRESHOLD, settings.malloc_mmap_threshold):
        done.append(f"blocks over {settings.malloc_mmap_threshold} bytes mapped")
    return done


def connection_cap(settings: Settings, fd_limit: int) -> int:
    """Connections the server keeps open at most: below the fd limit by the reserve and one accept burst (asyncio
    accepts up to BACKLOG sockets before the protocol sees any), so that accept() never meets EMFILE."""
    room = fd_limit - FD_RESERVE - BACKLOG
    return max(1, min(settings.max_connections, room if room > fd_limit // 4 else fd_limit // 4))


class Server(uvicorn.Server):
    def handle_exit(self, sig, frame) -> None:
        self.config.app.state.drain.begin_threadsafe()  # /readyz 503 at once; running work gets ARSERVE_DRAIN_S
        super().handle_exit(sig, frame)  # uvicorn stops accepting and waits up to timeout_graceful_shutdown


def config(settings: Settings, host: str | None = None, port: int | None = None) -> uvicorn.Config:
    from app.main import _configure_logging, app

    _configure_logging(settings.log_level)
    if tuned := tune_malloc(settings):
        log.info("malloc: %s", ", ".join(tuned))
    fd_limit = raise_fd_limit()
    cap = connection_cap(settings, fd_limit)
    limits = Limits(max_connections=cap, header_timeout_s=settings.header_timeout_s,
                    write_stall_s=settings.stream_stall_s + CLOSE_GRACE_S + 1)
    log.info("fd limit %d: at most %d connections", fd_limit, cap)
    return uvicorn.Config(
        app,
        host=host or settings.host,
        port=settings.port if port is None else port,
        http=guarded(limits),  # uvicorn's h11 protocol, plus the guards
        loop="asyncio",
        lifespan="on",
        backlog=BACKLOG,
        limit_concurrency=cap + 1,  # a backstop on tasks: the protocol already keeps connections <= cap
        timeout_keep_alive=settings.keep_alive_s,
        timeout_graceful_shutdown=settings.drain_s + CLOSE_GRACE_S,
        proxy_headers=False,
        server_header=False,
        access_log=False,  # the app logs one line per request, with its request id (logger arserve.access)
        log_level=settings.log_level,
    )


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m app.serve", description=__doc__.splitlines()[0])
    parser.add_argument("--host", help="address to bind (default ARSERVE_HOST, 127.0.0.1)")
    parser.add_argument("--port", type=int, help="port (default ARSERVE_PORT, 8000)")
    args = parser.parse_args(argv)
    Server(config(get_settings(), args.host, args.port)).run()


if __name__ == "__main__":
    main()
