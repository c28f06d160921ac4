"""POST /logprob's fast lane: a plainly valid JSON request scored without FastAPI's request machinery.

A POST /logprob of 16 single-example clients spent most of the server's CPU in the framework, not in the model:
routing through every route's matcher, solving dependencies, validating the body with pydantic and again the
answer with the response model (bench/results/load.md, docs/benchmarks-load.md has the profile). This ASGI
middleware sits inside the others (request id, metrics, drain, body cap, API keys: they all still apply) and
answers `POST /logprob` with `Content-Type: application/json` itself when the body is one LogprobRequest takes
as it stands: an object of known fields with values of exactly the declared types and in range. Every other
body (a typo, a string where a number goes, malformed JSON, too many fields, ...) continues to the FastAPI route
with the bytes already read, so every 4xx keeps the route's wording; the lane's own errors (limits, unknown
model, bad tokens) come from the same service calls through the app's own exception handlers.

The answer is the bytes FastAPI would send: orjson writes floats exactly as pydantic-core does (tested).
"""

from __future__ import annotations

import itertools
import re
import typing
import urllib.parse
from dataclasses import dataclass

import orjson
from fastapi import FastAPI
from starlette.exceptions import HTTPException
from starlette.responses import JSONResponse, Response
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from app.http import binary, service
from app.http.bodies import _KEY, MAX_FIELDS, JSONRequest
from app.http.routes import _model
from app.http.schemas import LogprobArrayParams, LogprobRequest
from app.runtime.config import BackendName

FIELDS = frozenset(LogprobRequest.model_fields)
BACKENDS = (None, *typing.get_args(BackendName))
MAX_MODEL_NAME = 64  # LogprobRequest.model's max_length
_LONG_NUMBER = re.compile(rb"\d{19}")  # 19 digits in a row: maybe an integer past 2**63


def plain_request(data: typing.Any) -> LogprobRequest | None:
    """`data` as a LogprobRequest if pydantic would take it unchanged (strict types, in range), else None: the
    FastAPI route then validates it and words the errors."""
    if type(data) is not dict or not data.keys() <= FIELDS:
        return None
    model, inputs = data.get("model"), data.get("inputs")
    per_position, prefix_len = data.get("per_position", False), data.get("prefix_len", 0)
    if (type(model) is str and 1 <= len(model) <= MAX_MODEL_NAME and type(inputs) is list and inputs
            and type(per_position) is bool and type(prefix_len) is int and prefix_len >= 0
            and data.get("backend") in BACKENDS):
        return LogprobRequest.model_construct(**data)
    return None


class LogprobFastPath:
    def __init__(self, app: ASGIApp, fastapi: FastAPI):
        self.app, self.fastapi = app, fastapi

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["path"] != "/logprob" or scope["method"] != "POST":
            return await self.app(scope, receive, send)
        kind = _content_type(scope)
        if kind == b"application/json":
            lane = self._json
        elif binary.content_type(scope) == binary.CONTENT_TYPE:
            lane = self._packed
        else:
            return await self.app(scope, receive, send)
        request = JSONRequest(scope, receive)
        try:
            response = await lane(request)
        except Exception as exc:
            handler = _handler(exc, self.fastapi)
            if handler is None:  # a bug: the outer ServerErrorMiddleware logs it and answers 500, as for the route
                raise
            response = await handler(request, exc)
        if isinstance(response, Route):  # not plainly valid: the route validates it and words its errors
            return await self.app(scope, response.receive, send)
        await response(scope, receive, send)

    async def _json(self, request: JSONRequest) -> Response | Route:
        state = self.fastapi.state
        request.body_timeout_s = state.settings.body_timeout_s
        body = await _read(request)
        req = parse_json(body)
        if req is None:
            return Route(_replay(body, request.receive))
        async with state.drain.request():
            result = await service.logprob(req, _model(request, state.registry, req.model), state.settings)
        return Response(orjson.dumps(result), media_type="application/json")  # as FastAPI's response model writes it

    async def _packed(self, request: JSONRequest) -> Response | Route:
        """As routes.logprob_array, with the query checked by hand."""
        params = parse_query(request.scope["query_string"])
        if params is None:
            return Route(request.receive)
        state = self.fastapi.state
        model = _model(request, state.registry, params.model)
        nbytes = service.check_array(params, model, state.settings)
        body = await binary.read_body(request, nbytes, f"shape ({params.shape}) of {params.dtype}")
        return JSONResponse(await service.logprob_array(params, body, model, state.settings))


@dataclass(frozen=True)
class Route:
    """The request goes on to the FastAPI route, reading its body through `receive`."""

    receive: Receive


def _content_type(scope: Scope) -> bytes | None:
    for key, value in scope["headers"]:
        if key == b"content-type":
            return value
    return None


def parse_json(body: bytes) -> LogprobRequest | None:
    if next(itertools.islice(_KEY.finditer(body), MAX_FIELDS, None), None) is not None:
        return None
    if _LONG_NUMBER.search(body):  # orjson reads integers past 64 bits as floats; json.loads keeps them exact
        return None
    try:
        data = orjson.loads(body)
    except orjson.JSONDecodeError:  # json.loads may read what orjson refuses (NaN); the route decides
        return None
    return plain_request(data)


ARRAY_FIELDS = frozenset(LogprobArrayParams.model_fields)
DTYPES = frozenset(typing.get_args(LogprobArrayParams.model_fields["dtype"].annotation))
_SPACE = r"[ \t\n\r\f\v]*"  # ASCII whitespace: Python's \s also takes \x1c-\x1f, pydantic's does not
_SHAPE = re.compile(f"{_SPACE}[0-9]{{1,12}}{_SPACE},{_SPACE}[0-9]{{1,12}}{_SPACE}")  # LogprobArrayParams.shape
BOOLS = {"true": True, "false": False}


def parse_query(query_string: bytes) -> LogprobArrayParams | None:
    """The packed form's query as LogprobArrayParams if pydantic would take it unchanged; else None."""
    try:
        pairs = urllib.parse.parse_qsl(query_string.decode("ascii"), keep_blank_values=True, strict_parsing=True)
    except (UnicodeDecodeError, ValueError):
        return None
    q = dict(pairs)
    if len(q) != len(pairs) or not q.keys() <= ARRAY_FIELDS or not all(v.isascii() for v in q.values()):
        return None
    model, shape, dtype = q.get("model", ""), q.get("shape", ""), q.get("dtype")
    per_position, prefix_len = q.get("per_position", "false"), q.get("prefix_len", "0")
    if (1 <= len(model) <= MAX_MODEL_NAME and _SHAPE.fullmatch(shape) and dtype in DTYPES and per_position in BOOLS
            and prefix_len.isdigit() and len(prefix_len) <= 18 and q.get("backend") in BACKENDS):
        return LogprobArrayParams.model_construct(model=model, shape=shape, dtype=dtype,
                                                  per_position=BOOLS[per_position], prefix_len=int(prefix_len),
                                                  backend=q.get("backend"))
    return None


async def _read(request: JSONRequest) -> bytes:
    """The body, failing as FastAPI's body reading does: its own HTTP errors (408, 413) as they are, anything
    else (the client went away) as a 400."""
    try:
        return await request.body()
    except HTTPException:
        raise
    except Exception as e:
        raise HTTPException(400, "There was an error parsing the body") from e


def _handler(exc: Exception, app: FastAPI):
    """The app's handler for exc's class, as Starlette's ExceptionMiddleware finds it; None where only the
    catch-all `Exception` handler applies (that one runs in the outermost middleware)."""
    for cls in type(exc).__mro__:
        if cls is not Exception and cls in app.exception_handlers:
            return app.exception_handlers[cls]
    return None


def _replay(body: bytes, receive: Receive) -> Receive:
    """A receive that hands out the body already read, then whatever the connection sends next."""
    sent = False

    async def replayed() -> Message:
        nonlocal sent
        if not sent:
            sent = True
            return {"type": "http.request", "body": body, "more_body": False}
        return await receive()

    return replayed
