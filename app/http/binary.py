"""POST /logprob with a packed array body (docs/scoring.md): the route that takes application/octet-stream.

The JSON route and this one share the path; this one matches only requests whose Content-Type is
application/octet-stream, so the JSON route keeps its own validation and schema. The query is checked against
the limits and the model before a byte of the body is read, and the body is read up to the size the query
declares, never further.
"""

from __future__ import annotations

from fastapi.routing import APIRoute
from starlette.requests import ClientDisconnect, Request
from starlette.routing import Match
from starlette.types import Scope

from app.engine.errors import invalid

CONTENT_TYPE = "application/octet-stream"

# The packed form in POST /logprob's OpenAPI operation (the JSON route's; this route is not listed itself).
OPENAPI = {
    "requestBody": {"content": {CONTENT_TYPE: {"schema": {"type": "string", "format": "binary"}}}},
    "description": "Inputs as JSON, or as a packed array: `Content-Type: application/octet-stream`, the raw "
                   "little-endian tokens of a [rows, length] array in row-major order, with `model`, `shape` "
                   "(`rows,length`), `dtype` (uint8, int32, int64 or float32) and optionally `per_position`, "
                   "`prefix_len`, `backend` in the query. See docs/scoring.md.",
}


def content_type(scope: Scope) -> str:
    for key, value in scope.get("headers", ()):
        if key == b"content-type":
            return value.decode("latin-1").split(";", 1)[0].strip().lower()
    return ""


class OctetStreamRoute(APIRoute):
    """An APIRoute that matches only bodies sent as application/octet-stream."""

    def matches(self, scope: Scope) -> tuple[Match, Scope]:
        match, child = super().matches(scope)
        if match is not Match.NONE and content_type(scope) != CONTENT_TYPE:
            return Match.NONE, {}
        return match, child


async def read_body(request: Request, expected: int, described: str) -> bytearray:
    """Exactly `expected` bytes of body, or a 422 that says what came instead (nothing past expected is kept)."""
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) != expected:
        raise invalid("body", f"Content-Length is {declared} bytes; {described} takes {expected}")
    body = bytearray()
    try:
        async for chunk in request.stream():
            body += chunk
            if len(body) > expected:
                raise invalid("body", f"more than the {expected} bytes that {described} takes")
    except ClientDisconnect:  # the upload ended early (a client that half-closed may still read this answer)
        raise invalid("body", f"the body ended after {len(body)} of the {expected} bytes that {described} "
                              f"takes") from None
    if len(body) != expected:
        raise invalid("body", f"{len(body)} bytes, but {described} takes {expected} (truncated?)")
    return body
