"""The FastAPI application: `uvicorn app.main:app` serves every model folder under ARSERVE_MODEL_DIR.

Building the app loads nothing. The lifespan starts loading the models on a thread and returns at once, so
/healthz answers while they load and /readyz says 503 until they are in; shutdown stops the workers.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import logging
from collections.abc import AsyncIterator, Callable

from fastapi import FastAPI
from fastapi.middleware.cors import CORSMiddleware

from app.engine.registry import Registry
from app.http import errors, playground
from app.http.bodies import BodyLimitMiddleware
from app.http.drain import Drain, DrainMiddleware
from app.http.fastpath import LogprobFastPath
from app.http.middleware import MetricsMiddleware
from app.http.openai import router as openai_router
from app.http.routes import router
from app.http.schemas import event_stream_schema
from app.http.security import APIKeyMiddleware, RequestIdFilter, RequestIdMiddleware
from app.http.service import StreamSlots
from app.runtime.config import Settings, get_settings
from app.runtime.metrics import Metrics

log = logging.getLogger("arserve")


def _configure_logging(level: str) -> None:
    log.setLevel(level.upper())
    if not log.handlers:  # uvicorn configures its own loggers only
        handler = logging.StreamHandler()
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s [%(request_id)s]: %(message)s"))
        handler.addFilter(RequestIdFilter())
        log.addHandler(handler)


@contextlib.asynccontextmanager
async def lifespan(app: FastAPI) -> AsyncIterator[None]:
    registry: Registry = app.state.registry
    _configure_logging(app.state.settings.log_level)
    app.state.drain.loop = asyncio.get_running_loop()
    app.state.loading = asyncio.create_task(asyncio.to_thread(registry.load), name="arserve-load-models")
    trim = asyncio.create_task(trim_malloc(app.state.settings.malloc_trim_s), name="arserve-malloc-trim")
    try:
        yield
    finally:
        trim.cancel()
        with contextlib.suppress(Exception):  # a failed load was logged; shut down regardless
            await app.state.loading
        registry.close()


def glibc() -> ctypes.CDLL | None:
    try:
        libc = ctypes.CDLL("libc.so.6")
    except OSError:  # not glibc (musl, macOS): its allocator has no arenas to bound or trim
        return None
    return libc if hasattr(libc, "malloc_trim") else None


async def trim_malloc(every_s: float) -> None:
    """glibc keeps what a thread frees in that thread's arena for reuse: under mixed load (requests of every
    shape, on a dozen threads) the arenas' free pages come and go by tens of MB. malloc_trim(0) hands every
    arena's free pages back to the OS; run every ARSERVE_MALLOC_TRIM_S on a thread (it takes each arena's lock
    for a few ms at most), it keeps RSS flat (docs/security.md, "Memory")."""
    libc = glibc()
    if libc is None or every_s <= 0:
        return
    while True:
        await asyncio.sleep(every_s)
        await asyncio.to_thread(libc.malloc_trim, 0)


def create_app(settings: Settings | None = None) -> FastAPI:
    settings = settings or get_settings()
    app = FastAPI(
        title="arserve",
        summary="Exact-likelihood autoregressive models: POST /logprob, streamed GET /sample.",
        version="0.1.0",
        lifespan=lifespan,
        **({} if settings.docs else {"docs_url": None, "redoc_url": None, "openapi_url": None}),
    )
    metrics = Metrics()
    app.state.settings = settings
    app.state.metrics = metrics
    app.state.registry = Registry(settings, metrics)
    app.state.slots = StreamSlots(settings, metrics)
    app.state.drain = Drain(settings.drain_s)
    errors.install(app)
    # Outermost last: request id > metrics > CORS > drain (503) > body cap (413) > API keys > /logprob's fast lane
    # > the routes
    keys = settings.api_key_list()
    if settings.api_keys_file is not None and not keys:
        log.warning("ARSERVE_API_KEYS_FILE %s holds no key: every route is open", settings.api_keys_file)
    app.add_middleware(LogprobFastPath, fastapi=app)  # plainly valid JSON bodies skip FastAPI's machinery
    app.add_middleware(APIKeyMiddleware, keys=keys, metrics_open=not settings.metrics_require_key,
                       docs_open=settings.docs)
    app.add_middleware(BodyLimitMiddleware, max_bytes=settings.max_body_bytes)
    app.add_middleware(DrainMiddleware, drain=app.state.drain)
    if settings.cors_origins:
        app.add_middleware(CORSMiddleware, allow_origins=settings.cors_origin_list(), allow_methods=["GET", "POST"],
                           allow_headers=["Authorization", "Content-Type", "X-Request-ID"],
                           expose_headers=["X-Request-ID", "Retry-After"])
    app.add_middleware(MetricsMiddleware, metrics=metrics)
    app.add_middleware(RequestIdMiddleware, trusted_proxies=settings.trusted_proxy_list())
    app.include_router(router)
    app.include_router(openai_router)  # /v1/models, /v1/completions, /tokenize, /detokenize, /tokenizer_info
    playground.install(app)  # GET / and /playground, files under /static
    app.openapi = _errors_as_json(app.openapi)
    return app


def _errors_as_json(build: Callable[[], dict]) -> Callable[[], dict]:
    """FastAPI documents a route's extra responses in the route's media type; GET /sample's errors are JSON,
    not text/event-stream. And its events are documented one by one (event_stream_schema)."""

    def openapi() -> dict:
        spec = build()
        stream = spec.get("paths", {}).get("/sample", {}).get("get", {}).get("responses", {}).get("200", {})
        if "text/event-stream" in stream.get("content", {}):
            stream["content"]["text/event-stream"] = {"schema": event_stream_schema()}
        for operation in (op for methods in spec.get("paths", {}).values() for op in methods.values()):
            for status, response in operation.get("responses", {}).items():
                content = response.get("content", {})
                if (status.startswith("4") or status.startswith("5")) and "text/event-stream" in content:
                    content["application/json"] = content.pop("text/event-stream")
        return spec

    return openapi


app = create_app()
