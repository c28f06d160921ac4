"""ASGI middleware: every request counted and timed in the app's Prometheus metrics; every answer about a model
carries its revision in the X-Model-Revision header."""

from __future__ import annotations

import time

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from app.runtime.metrics import Metrics

ENDPOINTS = {"/models", "/logprob", "/sample", "/healthz", "/readyz", "/metrics"}


class MetricsMiddleware:
    """Counts every request and times it, labelled by endpoint and by the model the route resolved."""

    def __init__(self, app: ASGIApp, metrics: Metrics):
        self.app, self.metrics = app, metrics

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        start, status = time.perf_counter(), 500

        async def send_status(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
                revision = scope.get("state", {}).get("revision")  # set by the route that resolved the model
                if revision:
                    message = {**message, "headers": [*message.get("headers", []),
                                                      (b"x-model-revision", revision.encode())]}
            await send(message)

        try:
            await self.app(scope, receive, send_status)
        finally:
            path = scope["path"]
            endpoint = path if path in ENDPOINTS else "other"  # unknown paths must not grow the label set
            model = scope.get("state", {}).get("model", "")
            self.metrics.requests.labels(endpoint, model, str(status)).inc()
            self.metrics.latency.labels(endpoint, model).observe(time.perf_counter() - start)
