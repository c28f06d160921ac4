"""Server-Sent Events framing (https://html.spec.whatwg.org/multipage/server-sent-events.html), by hand."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Callable
from typing import Any

from starlette.responses import StreamingResponse
from starlette.types import Receive, Scope, Send

HEADERS = {"Cache-Control": "no-cache", "X-Accel-Buffering": "no"}  # no proxy buffering of the stream


def event(name: str, data: Any) -> bytes:
    # json.dumps never emits a newline, so the data fits one `data:` line
    return f"event: {name}\ndata: {json.dumps(data, separators=(',', ':'))}\n\n".encode()


def comment(text: str) -> bytes:
    return f": {text}\n\n".encode()


class EventStreamResponse(StreamingResponse):
    """A text/event-stream response whose clean-up always runs: when the stream ends, fails, or the client
    goes away (Starlette then cancels the sender, possibly before the generator's own `finally` ran)."""

    media_type = "text/event-stream"

    def __init__(self, content: AsyncIterator[bytes], on_close: Callable[[], None]):
        super().__init__(content, headers=HEADERS)
        self.on_close = on_close

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        try:
            await super().__call__(scope, receive, send)
        finally:
            try:
                await self.body_iterator.aclose()
            finally:
                self.on_close()
