"""A Python client for arserve, on httpx and httpx-sse, sync and async.

    from app.client import ArserveClient

    with ArserveClient("http://localhost:8000") as client:
        client.logprob("nade-mnist", [[0, 1, ...]])["results"][0]["logprob"]
        client.logprob_array("nade-mnist", images)  # a numpy [B, 784] (or [B, 28, 28]) array, sent packed
        for event in client.sample("char-rnn-shakespeare", prompt="ROMEO:", max_len=200, seed=0):
            print(event.data.get("text", ""), end="", flush=True)

`sample()` yields the stream's `token` events and finally its `done` event (one per sample with n > 1, each
event's data then carrying its "sample" index); an `error` event, an HTTP error before the stream starts, or a
stream cut before its last `done` event (code `stream_cut`) raises ArserveError. Sampling controls:
temperature, top_k, top_p, min_p, n, seed, stop (a list of strings, text models), max_len, prefix or prompt,
chunk. A server with API keys (ARSERVE_API_KEYS) takes one as `ArserveClient(url, api_key="...")`, sent as
`Authorization: Bearer ...`.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from typing import Any

import httpx
import numpy as np
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


def _cut(error: Exception | None = None) -> ArserveError:
    """A stream that ended without its done event: the server (or its replica) went away mid-sample."""
    why = f" ({type(error).__name__}: {error})" if error else ""
    return ArserveError(502, "stream_cut", f"the stream ended before its done event{why}; the sample is "
                                           "incomplete: retry it (the same seed gives the same sample)")
def _packed(model: str, array, per_position: bool, prefix_len: int, backend: str | None) -> tuple[dict, bytes]:
    """An array of inputs -> POST /logprob's query and packed body (docs/scoring.md): [B, T] row-major,
    little-endian, in the smallest of uint8 / int32 / int64 that holds integer tokens; float32 for real values."""
    a = np.asarray(array)
    a = a.reshape(1, -1) if a.ndim == 1 else a.reshape(len(a), -1)  # one input, or images [B, H, W] -> [B, H*W]
    if a.dtype.kind == "f":
        dtype = "float32"
    elif a.dtype.kind in "biu":
        lo, hi = (int(a.min()), int(a.max())) if a.size else (0, 0)
        dtype = "uint8" if 0 <= lo and hi < 256 else "int32" if -(2**31) <= lo and hi < 2**31 else "int64"
    else:
        raise TypeError(f"logprob_array takes a numeric array, got dtype {a.dtype}")
    wire = {"uint8": "<u1", "int32": "<i4", "int64": "<i8", "float32": "<f4"}[dtype]
    query = {"model": model, "shape": f"{a.shape[0]},{a.shape[1]}", "dtype": dtype,
             "per_position": str(per_position).lower(), "prefix_len": prefix_len}
    if backend is not None:
        query["backend"] = backend
    return query, np.ascontiguousarray(a, dtype=wire).tobytes()


PACKED = {"content-type": "application/octet-stream"}


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

    def logprob_array(self, model: str, array, per_position: bool = False, prefix_len: int = 0,
                      backend: str | None = None) -> dict:
        """POST /logprob with the inputs as one packed array (a numpy [B, T] array, [T], or images [B, H, W]):
        no JSON to build or parse for big batches. Answers as logprob()."""
        query, body = _packed(model, array, per_position, prefix_len, backend)
        return _check(self.http.post("/logprob", params=query, content=body, headers=PACKED))

    def sample(self, model: str, **params: Any) -> Iterator[Event]:
        """Stream GET /sample: yields token events, then the done event (n of them for n samples). Params as in
        the API (seed, temperature, top_k, top_p, min_p, n, stop, max_len, prefix (list or "1,0,1"), prompt,
        chunk, backend)."""
        left = params.get("n") or 1
        with connect_sse(self.http, "GET", "/sample", params=_query(model, params)) as source:
            if source.response.status_code >= 400:
                source.response.read()
                raise _error(source.response)
            try:
                for sse in source.iter_sse():
                    event = _event(sse)
                    yield event
                    left -= event.event == "done"
                    if not left:
                        return
            except httpx.TransportError as e:
                raise _cut(e) from e
            raise _cut()

    def generate(self, model: str, **params: Any) -> dict:
        """POST /sample: the whole sample as the done object ({"model", "samples": [done, ...]} for n > 1)."""
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

    async def logprob_array(self, model: str, array, per_position: bool = False, prefix_len: int = 0,
                            backend: str | None = None) -> dict:
        query, body = _packed(model, array, per_position, prefix_len, backend)
        return _check(await self.http.post("/logprob", params=query, content=body, headers=PACKED))

    async def sample(self, model: str, **params: Any) -> AsyncIterator[Event]:
        left = params.get("n") or 1
        async with aconnect_sse(self.http, "GET", "/sample", params=_query(model, params)) as source:
            if source.response.status_code >= 400:
                await source.response.aread()
                raise _error(source.response)
            try:
                async for sse in source.aiter_sse():
                    event = _event(sse)
                    yield event
                    left -= event.event == "done"
                    if not left:
                        return
            except httpx.TransportError as e:
                raise _cut(e) from e
            raise _cut()

    async def generate(self, model: str, **params: Any) -> dict:
        return _check(await self.http.post("/sample", json={"model": model, **params}))
