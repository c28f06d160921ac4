"""Request bodies at a bounded cost.

BodyLimitMiddleware caps the size while reading: a Content-Length over ARSERVE_MAX_BODY_BYTES is refused before
a byte of the body is read, a chunked body is counted as it arrives, and the 413 leaves at once. The routes'
JSONRequest (`APIRouter(route_class=JSONRoute)`) bounds the rest: the body must arrive within
ARSERVE_BODY_TIMEOUT_S (408), and a body holding more object fields than any request takes is refused before it
is parsed (json.loads of a million keys holds the GIL for seconds, so a thread would not help; docs/security.md).
"""

from __future__ import annotations

import asyncio
import itertools
import json
import re
from collections.abc import Callable, Coroutine
from typing import Any

from fastapi import Request, Response
from fastapi.routing import APIRoute
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from app.http.errors import APIError, HTTPAPIError, as_http
from app.http.security import send_error

MAX_FIELDS = 256  # object fields a body may hold, nested ones included; every request takes a dozen or so
_KEY = re.compile(rb'"\s*:')  # a JSON key ends so (or an escaped quote inside a string: a generous count)


class JSONRequest(Request):
    body_timeout_s: float = 30.0

    async def body(self) -> bytes:
        if not hasattr(self, "_body"):
            try:
                async with asyncio.timeout(self.body_timeout_s):
                    return await super().body()
            except TimeoutError:
                raise as_http(APIError(408, "body_timeout", f"body: not received within ARSERVE_BODY_TIMEOUT_S="
                                                            f"{self.body_timeout_s:g}s", "body")) from None
        return await super().body()

    async def json(self) -> Any:
        if not hasattr(self, "_json"):
            body = await self.body()
            if next(itertools.islice(_KEY.finditer(body), MAX_FIELDS, None), None) is not None:
                raise as_http(APIError(422, "too_many_fields", f"body: more than {MAX_FIELDS} object fields; a "
                                                               "request takes a few named fields (see /docs)", "body"))
            try:
                self._json = json.loads(body)
            except RecursionError:
                raise as_http(APIError(422, "malformed_json", "body: nested too deeply", "body")) from None
        return self._json


class JSONRoute(APIRoute):
    def get_route_handler(self) -> Callable[[Request], Coroutine[Any, Any, Response]]:
        handler = super().get_route_handler()

        async def route(request: Request) -> Response:
            req = JSONRequest(request.scope, request.receive)  # FastAPI's documented custom-Request pattern
            req.body_timeout_s = request.app.state.settings.body_timeout_s
            return await handler(req)

        return route


class BodyLimitMiddleware:
    def __init__(self, app: ASGIApp, max_bytes: int):
        self.app, self.max_bytes = app, max_bytes

    def too_large(self) -> HTTPAPIError:
        return as_http(APIError(413, "body_too_large", f"body: larger than ARSERVE_MAX_BODY_BYTES={self.max_bytes}",
                                "body", {"Connection": "close"}))

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        length = next((v for k, v in scope["headers"] if k == b"content-length"), None)
        if length is not None and (not length.strip().isdigit() or int(length) > self.max_bytes):
            err = self.too_large().api_error
            return await send_error(send, err.status, err.code, err.message, err.headers)
        received, started = 0, False

        async def counted() -> Message:
            nonlocal received
            message = await receive()
            received += len(message.get("body", b""))
            if received > self.max_bytes:
                raise self.too_large()  # an HTTPException: FastAPI's body reading lets it through to the handler
            return message

        async def watched(message: Message) -> None:
            nonlocal started
            started = started or message["type"] == "http.response.start"
            await send(message)

        try:
            await self.app(scope, counted, watched)
        except HTTPAPIError as e:  # raised where no exception handler runs
            if started or e.status_code != 413:
                raise
            err = e.api_error
            await send_error(send, err.status, err.code, err.message, err.headers)
