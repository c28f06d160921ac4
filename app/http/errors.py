"""Every error leaves the service as {"error": {"code", "message"}} (plus "field" where one is to blame).

The caller's mistakes are 4xx and name the field and position; a 500 means a bug in the server, never bad
input. The engine raises its own errors (app/engine/errors.py); this
module maps them, and the HTTP layer's own APIError, to responses, once.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Sequence
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from app.engine.errors import Busy, EngineError, InvalidInput, LimitExceeded, ModelNotFound, Unavailable

log = logging.getLogger("arserve")


class APIError(Exception):
    def __init__(self, status: int, code: str, message: str, field: str | None = None,
                 headers: dict[str, str] | None = None):
        super().__init__(message)
        self.status, self.code, self.message, self.field, self.headers = status, code, message, field, headers

    def body(self) -> dict[str, Any]:
        err = {"code": self.code, "message": self.message}
        if self.field is not None:
            err["field"] = self.field
        return {"error": err}


# The engine's errors, by kind; everything else below the routes raises APIError directly.
STATUS: dict[type[EngineError], int] = {InvalidInput: 422, LimitExceeded: 413, ModelNotFound: 404, Busy: 429,
                                        Unavailable: 503}


MAX_MESSAGE = 500  # characters; a longer engine message can only be quoting input (a backstop to errors.quote)


def from_engine(exc: EngineError) -> APIError:
    headers = {"Retry-After": str(exc.retry_after_s)} if exc.retry_after_s is not None else None
    message = exc.message if len(exc.message) <= MAX_MESSAGE else exc.message[: MAX_MESSAGE - 3] + "..."
    return APIError(STATUS.get(type(exc), 422), exc.code, message, exc.field, headers)


def field_name(loc: Sequence[Any]) -> str:
    """('body', 'inputs', 0, 3) -> 'inputs[0][3]'; the 'body'/'query' root says nothing to the caller."""
    parts = list(loc[1:] if loc and loc[0] in ("body", "query", "path") else loc)
    out = ""
    for p in parts:
        out += f"[{p}]" if isinstance(p, int) else (f".{p}" if out else str(p))
    return out or "body"


MAX_LISTED = 5  # problems named in one message; the rest are counted
MAX_QUOTED = 40  # characters of the caller's input quoted back at most


def short(value: Any) -> str:
    """repr(value), cut to MAX_QUOTED characters: an error never echoes a big input."""
    text = repr(value[: MAX_QUOTED + 1] if isinstance(value, str | bytes) else value)
    return text if len(text) <= MAX_QUOTED else text[: MAX_QUOTED - 3] + "..."


def _listed(items: list[str]) -> str:
    more = f" and {len(items) - MAX_LISTED} more" if len(items) > MAX_LISTED else ""
    return ", ".join(items[:MAX_LISTED]) + more


def _validation_error(exc: RequestValidationError) -> APIError:
    errors = exc.errors()
    for e in errors:
        if e.get("type") == "json_invalid":
            where = e["loc"][-1] if isinstance(e["loc"][-1], int) else "?"
            reason = (e.get("ctx") or {}).get("error", "invalid JSON")
            return APIError(422, "malformed_json", f"body: not valid JSON ({reason} at character {where})", "body")
    first = errors[0] if errors else {"loc": (), "msg": "invalid request"}
    field = field_name(first["loc"])[:MAX_QUOTED]
    extra = [field_name(e["loc"])[:MAX_QUOTED] for e in errors if e.get("type") == "extra_forbidden"]
    parts = []
    if len(extra) > 1:  # unknown fields: one line, however many
        parts.append(f"unknown fields {_listed(extra)}: not permitted")
    for e in errors:
        if len(extra) > 1 and e.get("type") == "extra_forbidden":
            continue
        got = f" (got {short(e['input'])})" if "input" in e and not isinstance(e["input"], dict | list) else ""
        parts.append(f"{field_name(e['loc'])[:MAX_QUOTED]}: {e['msg'][:200]}{got}")
    more = f"; and {len(parts) - MAX_LISTED} more problems" if len(parts) > MAX_LISTED else ""
    return APIError(422, "invalid_request", "; ".join(parts[:MAX_LISTED]) + more, field)


class HTTPAPIError(StarletteHTTPException):
    """An APIError that must pass FastAPI's body reading, which turns any other exception into a bare 400."""

    def __init__(self, err: APIError):
        super().__init__(err.status, err.message, err.headers)
        self.api_error = err


def as_http(err: APIError) -> HTTPAPIError:
    return HTTPAPIError(err)


# Routes of the OpenAI-compatible surface answer errors in OpenAI's shape, {"error": {"message", "type", "param",
# "code"}}, with 400 for every invalid value (OpenAI's status; its clients raise BadRequestError on it).
OPENAI_PATHS = ("/v1/", "/tokenize", "/detokenize", "/tokenizer_info")
OPENAI_TYPES = {401: "authentication_error", 403: "permission_error", 429: "rate_limit_error"}


def openai_error(err: APIError) -> tuple[int, dict[str, Any]]:
    status = 400 if err.status in (413, 422) else err.status
    kind = OPENAI_TYPES.get(status, "invalid_request_error" if status < 500 else "server_error")
    param = re.match(r"\w*", err.field).group() if err.field else None  # the parameter: "prompt" of "prompt[1]"
    return status, {"error": {"message": err.message, "type": kind, "param": param or None, "code": err.code}}


def _json(err: APIError, request: Request | None = None) -> JSONResponse:
    if request is not None and request.url.path.startswith(OPENAI_PATHS):
        status, body = openai_error(err)
        return JSONResponse(body, status_code=status, headers=err.headers)
    return JSONResponse(err.body(), status_code=err.status, headers=err.headers)


def install(app: FastAPI) -> None:
    @app.exception_handler(APIError)
    async def _api_error(request: Request, exc: APIError) -> JSONResponse:
        return _json(exc, request)

    @app.exception_handler(EngineError)
    async def _engine_error(request: Request, exc: EngineError) -> JSONResponse:
        return _json(from_engine(exc), request)

    @app.exception_handler(RequestValidationError)
    async def _invalid(request: Request, exc: RequestValidationError) -> JSONResponse:
        return _json(_validation_error(exc), request)

    @app.exception_handler(StarletteHTTPException)
    async def _http(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        if isinstance(exc, HTTPAPIError):
            return _json(exc.api_error)
        code = {404: "not_found", 405: "method_not_allowed"}.get(exc.status_code, "http_error")
        return _json(APIError(exc.status_code, code, str(exc.detail)[:200], headers=exc.headers), request)

    @app.exception_handler(Exception)
    async def _bug(request: Request, exc: Exception) -> JSONResponse:
        log.exception("unhandled error on %s %s", request.method, request.url.path)
        return _json(APIError(500, "internal_error", "internal server error (logged)"), request)
