"""The HTTP API (DESIGN.md): thin handlers over app.http.service."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Depends, Query, Request
from fastapi.responses import JSONResponse, Response
from prometheus_client import CONTENT_TYPE_LATEST

from app.engine.registry import Registry, ServedModel
from app.http import service
from app.http.schemas import LogprobRequest, LogprobResponse, ModelsResponse, SampleBody, SampleDone, SampleParams
from app.http.sse import EventStreamResponse
from app.runtime.config import Settings
from app.runtime.metrics import Metrics

router = APIRouter()


def _registry(request: Request) -> Registry:
    return request.app.state.registry


def _settings(request: Request) -> Settings:
    return request.app.state.settings


RegistryDep = Annotated[Registry, Depends(_registry)]
SettingsDep = Annotated[Settings, Depends(_settings)]


def _model(request: Request, registry: Registry, name: str) -> ServedModel:
    model = registry.get(name)  # 404 / 503 before anything else
    request.state.model = name  # the metrics label, set only for models that exist
    return model


@router.get("/healthz")
async def healthz() -> dict:
    return {"status": "ok"}


@router.get("/readyz")
async def readyz(registry: RegistryDep):
    if not registry.ready:
        why = "loading models" if not registry.loaded else "no model could be loaded"
        return JSONResponse({"error": {"code": "not_ready", "message": why}, "skipped": registry.skipped},
                            status_code=503)
    return {"status": "ready", "models": sorted(registry.models), "skipped": registry.skipped}


@router.get("/metrics")
async def metrics(request: Request) -> Response:
    m: Metrics = request.app.state.metrics
    return Response(m.render(), media_type=CONTENT_TYPE_LATEST)


@router.get("/models", response_model=ModelsResponse)
async def list_models(registry: RegistryDep) -> dict:
    registry.require_loaded()
    return {"models": [m.summary() for _, m in sorted(registry.models.items())]}


@router.post("/logprob", response_model=LogprobResponse, response_model_exclude_unset=True)
async def logprob(req: LogprobRequest, request: Request, registry: RegistryDep, settings: SettingsDep) -> dict:
    return await service.logprob(req, _model(request, registry, req.model), settings)


@router.get("/sample", response_class=EventStreamResponse, status_code=200)
async def sample_stream(params: Annotated[SampleParams, Query()], request: Request, registry: RegistryDep,
                        settings: SettingsDep) -> EventStreamResponse:
    job = service.prepare_sample(params, _model(request, registry, params.model), settings)
    release = request.app.state.slots.acquire(job.model.name)  # 429 before the stream starts
    try:
        stream = job.start()
    except BaseException:
        release()
        raise
    return EventStreamResponse(service.events(job, stream, settings, request.app.state.metrics), on_close=release)


@router.post("/sample", response_model=SampleDone, response_model_exclude_none=True)
async def sample(body: SampleBody, request: Request, registry: RegistryDep, settings: SettingsDep) -> dict:
    job = service.prepare_sample(body, _model(request, registry, body.model), settings)
    release = request.app.state.slots.acquire(job.model.name)
    try:
        return await service.sample_once(job, job.start(), settings)
    finally:
        release()
