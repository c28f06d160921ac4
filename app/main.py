"""The FastAPI application: `uvicorn app.main:app` serves every model folder under ARSERVE_MODEL_DIR.

Building the app loads nothing. The lifespan starts loading the models on a thread and returns at once, so
/healthz answers while they load and /readyz says 503 until they are in; shutdown stops the workers.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator

from fastapi import FastAPI

from app.engine.registry import Registry
from app.http import errors, playground
from app.http.middleware import MetricsMiddleware
from app.http.openai import router as openai_router
from app.http.routes import router
from app.http.service import StreamSlots
from app.runtime.config import Settings, get_settings
from app.runtime.metrics import Metrics

log = logging.getLogger("arserve")


def _configure_logging(level: str) -> None:
    log.setLevel(level.upper())
    if not log.handlers:  # uvicorn configures its own loggers only
        handler = logging.StreamHandler()
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
        log.addHandler(handler)


@contextlib.asynccontextmanager
async def lifespan(app: FastAPI) -> AsyncIterator[None]:
    registry: Registry = app.state.registry
    _configure_logging(app.state.settings.log_level)
    app.state.loading = asyncio.create_task(asyncio.to_thread(registry.load), name="arserve-load-models")
    try:
        yield
    finally:
        with contextlib.suppress(Exception):  # a failed load was logged; shut down regardless
            await app.state.loading
        registry.close()


def create_app(settings: Settings | None = None) -> FastAPI:
    settings = settings or get_settings()
    app = FastAPI(
        title="arserve",
        summary="Exact-likelihood autoregressive models: POST /logprob, streamed GET /sample.",
        version="0.1.0",
        lifespan=lifespan,
    )
    metrics = Metrics()
    app.state.settings = settings
    app.state.metrics = metrics
    app.state.registry = Registry(settings, metrics)
    app.state.slots = StreamSlots(settings, metrics)
    errors.install(app)
    app.add_middleware(MetricsMiddleware, metrics=metrics)
    app.include_router(router)
    app.include_router(openai_router)  # /v1/models, /v1/completions, /tokenize, /detokenize, /tokenizer_info
    playground.install(app)  # GET / and /playground, files under /static
    return app


app = create_app()
