"""Who may call what, and who is calling: bearer API keys, request ids, the client's address.

Pure ASGI middleware (no response buffering, streams untouched). Every route needs a key once keys are
configured, except the allow-list below: a route added later is protected by default.
"""

from __future__ import annotations

import contextvars
import hmac
import ipaddress
import json
import logging
import re
import time
import uuid

from starlette.types import ASGIApp, Message, Receive, Scope, Send

log = logging.getLogger("arserve")
access_log = logging.getLogger("arserve.access")

OPEN_PATHS = {"/healthz", "/readyz", "/", "/playground", "/favicon.ico"}  # liveness, readiness, the playground
OPEN_PREFIXES = ("/static/",)  # the playground's files
DOCS_PATHS = {"/docs", "/docs/oauth2-redirect", "/redoc", "/openapi.json"}  # open while ARSERVE_DOCS is on


def _header(scope: Scope, name: bytes) -> str | None:
    for key, value in scope["headers"]:
        if key == name:
            return value.decode("latin-1")
    return None


async def send_error(send: Send, status: int, code: str, message: str, headers: dict[str, str] | None = None):
    """A native {"error": ...} response from middleware, where no exception handler runs."""
    body = json.dumps({"error": {"code": code, "message": message}}).encode()
    raw = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]
    raw += [(k.lower().encode(), v.encode()) for k, v in (headers or {}).items()]
    await send({"type": "http.response.start", "status": status, "headers": raw})
    await send({"type": "http.response.body", "body": body})


class APIKeyMiddleware:
    """Bearer tokens (RFC 6750) on every route outside the allow-list, compared in constant time."""

    def __init__(self, app: ASGIApp, keys: list[str], metrics_open: bool, docs_open: bool):
        self.app = app
        self.keys = [k.encode() for k in keys]
        self.open = OPEN_PATHS | ({"/metrics"} if metrics_open else set()) | (DOCS_PATHS if docs_open else set())

    def is_open(self, scope: Scope) -> bool:
        path = scope["path"]
        return path in self.open or path.startswith(OPEN_PREFIXES) or scope["method"] == "OPTIONS"

    def valid(self, token: str) -> bool:
        presented = token.encode()
        # every key compared, whatever matched: the time taken says nothing about which key is close
        return sum(hmac.compare_digest(presented, key) for key in self.keys) > 0

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or not self.keys or self.is_open(scope):
            return await self.app(scope, receive, send)
        scheme, _, token = (_header(scope, b"authorization") or "").partition(" ")
        if scheme.lower() == "bearer" and token.strip() and self.valid(token.strip()):
            return await self.app(scope, receive, send)
        given = bool(token.strip())
        challenge = 'Bearer realm="arserve"' + (', error="invalid_token"' if given else "")
        message = "the API key is not valid" if given else "this route needs an API key: Authorization: Bearer <key>"
        await send_error(send, 401, "unauthorized", message, {"WWW-Authenticate": challenge})


# ----- request ids and the access log --------------------------------------------------------------------

request_id: contextvars.ContextVar[str] = contextvars.ContextVar("request_id", default="-")
_GOOD_ID = re.compile(r"[A-Za-z0-9._:-]{1,128}")


class RequestIdFilter(logging.Filter):
    """Puts the current request's id on every log record (as `request_id`)."""

    def filter(self, record: logging.LogRecord) -> bool:
        record.request_id = request_id.get()
        return True


class RequestIdMiddleware:
    """X-Request-ID on every response: the caller's own when it is sane (1-128 of [A-Za-z0-9._:-]), else a
    fresh one; it is in every log line of the request, and one access-log line per request carries it. Also
    resolves the client's address once (request.state.client), through the trusted proxies."""

    def __init__(self, app: ASGIApp, trusted_proxies: list[str]):
        self.app, self.networks = app, parse_networks(trusted_proxies)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        given = _header(scope, b"x-request-id")
        rid = given if given and _GOOD_ID.fullmatch(given) else uuid.uuid4().hex
        token = request_id.set(rid)
        state = scope.setdefault("state", {})
        state["request_id"], state["client"] = rid, client_address(scope, self.networks)
        start, status = time.perf_counter(), 0

        async def send_with_id(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
                message = {**message, "headers": [*message.get("headers", []), (b"x-request-id", rid.encode())]}
            await send(message)

        try:
            await self.app(scope, receive, send_with_id)
        finally:
            access_log.info('%s "%s %s" %d %.1fms', state["client"], scope["method"], scope["path"], status,
                            1000 * (time.perf_counter() - start))
            request_id.reset(token)


# ----- the client's address ------------------------------------------------------------------------------


def parse_networks(specs: list[str]) -> list[ipaddress.IPv4Network | ipaddress.IPv6Network]:
    return [ipaddress.ip_network(s, strict=False) for s in specs]


def _trusted(addr: str, networks) -> bool:
    try:
        ip = ipaddress.ip_address(addr)
    except ValueError:
        return False
    return any(ip in net for net in networks)


def client_address(scope: Scope, networks=()) -> str:
    """The peer's address; behind trusted proxies, the right-most X-Forwarded-For entry that is not one of them
    (the left part of the header is whatever the client wrote, so it is never believed)."""
    peer = (scope.get("client") or ("unknown", 0))[0]
    if not networks or not _trusted(peer, networks):
        return peer
    forwarded = _header(scope, b"x-forwarded-for") or ""
    for hop in reversed([h.strip() for h in forwarded.split(",") if h.strip()]):
        if not _trusted(hop, networks):
            return hop[:64]
    return peer
