"""JSON request bodies at a bounded cost.

The size cap itself is FastAPI's (`FastAPI(max_body_size=...)`: Content-Length checked first, chunked bodies
counted while they arrive, 413 before the rest is read). This module bounds the rest: the body must arrive
within ARSERVE_BODY_TIMEOUT_S (408), and a body that holds more object fields than any request takes is refused
before it is parsed (json.loads of a million keys holds the GIL for seconds, so a thread would not help; see
docs/security.md). The routes use it through `router = APIRouter(route_class=JSONRoute)`.
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

from app.http.errors import APIError, as_http

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
