"""The HTTP API (DESIGN.md): thin handlers over app.http.service."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable
from typing import Annotated, Any

from fastapi import APIRouter, Depends, Query, Request
from fastapi.responses import JSONResponse, PlainTextResponse, Response
from prometheus_client import CONTENT_TYPE_LATEST

from app.engine.registry import Registry, ServedModel
from app.http import binary, service
from app.http.bodies import JSONRoute
from app.http.errors import APIError
from app.http.schemas import (
    ERROR_RESPONSES,
    LogprobArrayParams,
    LogprobRequest,
    LogprobResponse,
    ModelsResponse,
    SampleBody,
    SampleDone,
    SampleMany,
    SampleParams,
)
from app.http.sse import EventStreamResponse
from app.runtime.config import Settings
from app.runtime.metrics import Metrics

router = APIRouter(route_class=JSONRoute, responses=ERROR_RESPONSES)


async def _registry(request: Request) -> Registry:  # async: a sync dependency costs a thread-pool round trip
    return request.app.state.registry


async def _settings(request: Request) -> Settings:
    return request.app.state.settings


RegistryDep = Annotated[Registry, Depends(_registry)]
SettingsDep = Annotated[Settings, Depends(_settings)]


def _model(request: Request, registry: Registry, name: str) -> ServedModel:
    model = registry.get(name)  # 404 / 503 before anything else
    request.state.model = name  # the metrics label, set only for models that exist
    request.state.revision = model.revision  # the X-Model-Revision header (app/http/middleware.py)
    return model


@router.get("/healthz")
async def healthz() -> dict:
    return {"status": "ok"}


@router.get("/readyz")
async def readyz(registry: RegistryDep):
    skipped = registry.skipped_reasons()
    if not registry.ready:
        if not registry.loaded:
            why = "loading models"
        elif registry.models:
            why = f"{len(skipped)} model folder(s) skipped and ARSERVE_REQUIRE_ALL_MODELS is on"
        else:
            why = "no model could be loaded"
        return JSONResponse({"error": {"code": "not_ready", "message": why}, "skipped": skipped}, status_code=503)
    return {"status": "ready", "models": sorted(registry.models), "skipped": skipped}


@router.get("/metrics", response_class=PlainTextResponse)
async def metrics(request: Request) -> Response:
    m: Metrics = request.app.state.metrics
    return Response(m.render(), media_type=CONTENT_TYPE_LATEST)


@router.get("/models", response_model=ModelsResponse)
async def list_models(registry: RegistryDep) -> dict:
    registry.require_loaded()
    return {"models": [m.summary() for _, m in sorted(registry.models.items())]}


async def logprob_array(params: Annotated[LogprobArrayParams, Query()], request: Request, registry: RegistryDep,
                        settings: SettingsDep) -> JSONResponse:
    """POST /logprob with a packed array body (app/http/binary.py); registered before the JSON route."""
    model = _model(request, registry, params.model)
    nbytes = service.check_array(params, model, settings)
    body = await binary.read_body(request, nbytes, f"shape ({params.shape}) of {params.dtype}")
    return JSONResponse(await service.logprob_array(params, body, model, settings))


router.add_api_route("/logprob", logprob_array, methods=["POST"], include_in_schema=False,
                     route_class_override=binary.OctetStreamRoute)


@router.post("/logprob", response_model=LogprobResponse, response_model_exclude_unset=True,
             openapi_extra=binary.OPENAPI)
async def logprob(req: LogprobRequest, request: Request, registry: RegistryDep, settings: SettingsDep) -> dict:
    async with request.app.state.drain.request():
        return await service.logprob(req, _model(request, registry, req.model), settings)


@router.get("/sample", response_class=EventStreamResponse, status_code=200)
async def sample_stream(params: Annotated[SampleParams, Query()], request: Request, registry: RegistryDep,
                        settings: SettingsDep) -> EventStreamResponse:
    job = service.prepare_sample(params, _model(request, registry, params.model), settings)
    release = request.app.state.slots.acquire(job.model.name, request.state.client, job.n)  # 429 before streaming
    try:
        stream = job.start()
    except BaseException:
        release()
        raise
    return EventStreamResponse(service.events(job, stream, settings, request.app.state.metrics), on_close=release,
                               stall_s=settings.stream_stall_s, drain=request.app.state.drain)


@router.post("/sample", response_model=SampleDone | SampleMany, response_model_exclude_none=True)
async def sample(body: SampleBody, request: Request, registry: RegistryDep, settings: SettingsDep) -> dict:
    job = service.prepare_sample(body, _model(request, registry, body.model), settings)
    release = request.app.state.slots.acquire(job.model.name, request.state.client, job.n)
    try:
        async with request.app.state.drain.request():
            return await _unless_disconnected(request, service.sample_once(job, job.start(), settings))
    finally:
        release()


async def _unless_disconnected(request: Request, work: Awaitable[Any]) -> Any:
    """Run work, cancelled if the client goes away first (the body is read: the next message is the disconnect)."""
    async def disconnected() -> None:
        while (await request.receive())["type"] != "http.disconnect":
            pass

    task, watch = asyncio.ensure_future(work), asyncio.ensure_future(disconnected())
    try:
        await asyncio.wait({task, watch}, return_when=asyncio.FIRST_COMPLETED)
        if task.done():
            return task.result()
        raise APIError(499, "client_closed", "the client closed the connection")  # nobody reads it
    finally:
        for t in (task, watch):
            t.cancel()
        await asyncio.wait({task})  # its clean-up (the generation is dropped) runs before the slot is given back
        if not task.cancelled():
            task.exception()  # retrieved: raised above already, or nobody to tell
