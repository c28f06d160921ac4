"""A Python client for arserve, on httpx and httpx-sse, sync and async.

    from app.client import ArserveClient

    with ArserveClient("http://localhost:8000") as client:
        client.logprob("nade-mnist", [[0, 1, ...]])["results"][0]["logprob"]
        for event in client.sample("char-rnn-shakespeare", prompt="ROMEO:", max_len=200, seed=0):
            print(event.data.get("text", ""), end="", flush=True)

`sample()` yields the stream's `token` events and finally its `done` event; an `error` event, or an HTTP
error before the stream starts, raises ArserveError. A server with API keys (ARSERVE_API_KEYS) takes one as
`ArserveClient(url, api_key="...")`, sent as `Authorization: Bearer ...`.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from typing import Any

import httpx
from httpx_sse import aconnect_sse, connect_sse


class ArserveError(Exception):
    def __init__(self, status: int, code: str, message: str):
        super().__init__(f"{status} {code}: {message}")
        self.status, self.code, self.message = status, code, message


@dataclass(frozen=True)
class Event:
    event: str  # "token" or "done"
    data: dict[str, Any]


def _error(response: httpx.Response) -> ArserveError:
    try:
        err = response.json()["error"]
        return ArserveError(response.status_code, err["code"], err["message"])
    except (ValueError, KeyError, TypeError):
        return ArserveError(response.status_code, "http_error", response.text[:500])


def _check(response: httpx.Response) -> dict:
    if response.status_code >= 400:
        raise _error(response)
    return response.json()


def _headers(api_key: str | None, httpx_kwargs: dict) -> dict:
    headers = dict(httpx_kwargs.pop("headers", None) or {})
    if api_key:
        headers["Authorization"] = f"Bearer {api_key}"
    return headers


def _query(model: str, params: dict[str, Any]) -> dict[str, Any]:
    q = {"model": model, **{k: v for k, v in params.items() if v is not None}}
    if isinstance(q.get("prefix"), list | tuple):
        q["prefix"] = ",".join(str(t) for t in q["prefix"])
    return q


def _event(sse) -> Event:
    data = sse.json()
    if sse.event == "error":
        err = data["error"]
        raise ArserveError(200, err["code"], err["message"])
    return Event(sse.event, data)


class ArserveClient:
    def __init__(self, base_url: str = "http://localhost:8000", timeout: float = 60.0, api_key: str | None = None,
                 **httpx_kwargs):
        self.http = httpx.Client(base_url=base_url, timeout=timeout, headers=_headers(api_key, httpx_kwargs),
                                 **httpx_kwargs)

    def __enter__(self) -> ArserveClient:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def close(self) -> None:
        self.http.close()

    def models(self) -> list[dict]:
        return _check(self.http.get("/models"))["models"]

    def logprob(self, model: str, inputs: list, per_position: bool = False, prefix_len: int = 0,
                backend: str | None = None) -> dict:
        body = {"model": model, "inputs": inputs, "per_position": per_position, "prefix_len": prefix_len,
                "backend": backend}
        return _check(self.http.post("/logprob", json=body))

    def sample(self, model: str, **params: Any) -> Iterator[Event]:
        """Stream GET /sample: yields token events, then the done event. Params as in the API (seed,
        temperature, top_k, top_p, max_len, prefix (list or "1,0,1"), prompt, chunk, backend)."""
        with connect_sse(self.http, "GET", "/sample", params=_query(model, params)) as source:
            if source.response.status_code >= 400:
                source.response.read()
                raise _error(source.response)
            for sse in source.iter_sse():
                event = _event(sse)
                yield event
                if event.event == "done":
                    return

    def generate(self, model: str, **params: Any) -> dict:
        """POST /sample: the whole sample as the done object."""
        return _check(self.http.post("/sample", json={"model": model, **params}))


class AsyncArserveClient:
    def __init__(self, base_url: str = "http://localhost:8000", timeout: float = 60.0, api_key: str | None = None,
                 **httpx_kwargs):
        self.http = httpx.AsyncClient(base_url=base_url, timeout=timeout, headers=_headers(api_key, httpx_kwargs),
                                      **httpx_kwargs)

    async def __aenter__(self) -> AsyncArserveClient:
        return self

    async def __aexit__(self, *exc) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        await self.http.aclose()

    async def models(self) -> list[dict]:
        return _check(await self.http.get("/models"))["models"]

    async def logprob(self, model: str, inputs: list, per_position: bool = False, prefix_len: int = 0,
                      backend: str | None = None) -> dict:
        body = {"model": model, "inputs": inputs, "per_position": per_position, "prefix_len": prefix_len,
                "backend": backend}
        return _check(await self.http.post("/logprob", json=body))

    async def sample(self, model: str, **params: Any) -> AsyncIterator[Event]:
        async with aconnect_sse(self.http, "GET", "/sample", params=_query(model, params)) as source:
            if source.response.status_code >= 400:
                await source.response.aread()
                raise _error(source.response)
            async for sse in source.aiter_sse():
                event = _event(sse)
                yield event
                if event.event == "done":
                    return

    async def generate(self, model: str, **params: Any) -> dict:
        return _check(await self.http.post("/sample", json={"model": model, **params}))
