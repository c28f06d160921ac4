"""The load benchmark's client: one process of asyncio HTTP clients (httpx, httpx-sse), apart from the server.

    python -m bench.load_client < spec.json > records.json

bench.load starts one per measured level, so that the clients' event loop never shares a process (or its GIL)
with the uvicorn server it measures, nor with bench.load's own torch. The spec says what to send:

  {"kind": "sample", "url": ..., "model": ..., "concurrency": 16, "requests": 32, "request_rate": null,
   "params": {"max_len": 255, "chunk": 1, "top_k": 40}, "seed": 0, "warmup": 1}
  {"kind": "logprob", "url": ..., "model": ..., "concurrency": 16, "requests": 256, "batch": 1,
   "inputs": {"vocab_size": 2, "length": 784, "dtype": "int64"}, "encoding": "json", "seed": 0, "warmup": 1}

Requests go out as in vLLM's serving benchmark: at most `concurrency` in flight, and, given a request_rate
(requests/s), each released after an exponential gap (a Poisson process); without one, as fast as slots free.
What comes back is one record per request (times in seconds from the run's start), which bench.load reduces.
"""

from __future__ import annotations

import asyncio
import json
import sys
import time
from collections.abc import Callable

import httpx
import numpy as np
from httpx_sse import aconnect_sse

# ----- POST /logprob bodies: pluggable, so a binary encoding can be measured beside JSON -------------------


def json_body(model: str, x: np.ndarray) -> tuple[bytes, dict[str, str]]:
    body = {"model": model, "inputs": x.tolist()}
    return json.dumps(body, separators=(",", ":")).encode(), {"content-type": "application/json"}


# name -> fn(model, inputs [B, T]) -> (body bytes, headers). A binary POST /logprob input registers here.
ENCODINGS: dict[str, Callable[[str, np.ndarray], tuple[bytes, dict[str, str]]]] = {"json": json_body}


def random_inputs(rng: np.random.Generator, batch: int, vocab_size: int, length: int, dtype: str) -> np.ndarray:
    """[batch, length] inputs POST /logprob accepts: random tokens, or standard normal values (RNADE)."""
    if dtype == "float32":
        return rng.standard_normal((batch, length)).astype(np.float32)
    return rng.integers(0, vocab_size, (batch, length), dtype=np.int64)


# ----- request pacing ------------------------------------------------------------------------------------


def arrival_gaps(n: int, rate: float | None, seed: int) -> list[float]:
    """Seconds to wait before releasing each request: exponential gaps at `rate` per second, or none."""
    if not rate:
        return [0.0] * n
    return np.random.default_rng(seed).exponential(1 / rate, n).tolist()


async def paced(n: int, concurrency: int, rate: float | None, seed: int, one) -> float:
    """Run one(i) for i < n, at most `concurrency` at once, released at the Poisson times; the wall seconds."""
    slots = asyncio.Semaphore(concurrency)

    async def guarded(i: int) -> None:
        async with slots:
            await one(i)

    t0 = time.perf_counter()
    tasks = []
    for i, gap in enumerate(arrival_gaps(n, rate, seed)):
        if gap:
            await asyncio.sleep(gap)
        tasks.append(asyncio.create_task(guarded(i)))
    await asyncio.gather(*tasks)
    return time.perf_counter() - t0


# ----- GET /sample ----------------------------------------------------------------------------------------


TOGETHER_S = 0.0005  # HTTP chunks of a stream parsed closer together than this came in one delivery


def read_events(blocks: list[bytes]) -> tuple[int, bool]:
    """Tokens in the complete SSE events `blocks` and whether one was the done event; an error event raises."""
    tokens, done = 0, False
    for block in blocks:
        fields = dict(line.split(": ", 1) for line in block.decode().split("\n") if line and line[0] != ":")
        if fields.get("event") == "token":
            tokens += len(json.loads(fields["data"])["tokens"])
        elif fields.get("event") == "done":
            done = True
        elif fields.get("event") == "error":
            raise RuntimeError(f"error event: {fields.get('data', '')[:200]}")
    return tokens, done


async def one_stream(http: httpx.AsyncClient, query: dict, t0: float) -> dict:
    """One GET /sample stream: when it started, got its first token and ended, and each delivery of token events
    (its time and tokens). A delivery, not an event, is the unit: events that reach the caller together show one
    gap, not one gap and some zeros. HTTP chunks parsed less than TOGETHER_S apart are one delivery: they were
    waiting in the socket together (httpx hands out one chunk at a time, however many one recv brought)."""
    start = time.perf_counter()
    reads, error, done, first = [], None, False, None  # reads: (seconds since t0, tokens), one per delivery
    try:
        async with aconnect_sse(http, "GET", "/sample", params=query) as source:
            if source.response.status_code != 200:
                await source.response.aread()
                raise RuntimeError(f"HTTP {source.response.status_code}: {source.response.text[:200]}")
            buffer = b""
            async for chunk in source.response.aiter_bytes():
                now = time.perf_counter() - t0
                *blocks, buffer = (buffer + chunk).split(b"\n\n")
                tokens, done = read_events(blocks)
                if tokens and reads and now - reads[-1][0] < TOGETHER_S:
                    reads[-1] = (now, reads[-1][1] + tokens)
                elif tokens:
                    reads.append((now, tokens))
                    first = first or now
                if done:
                    break
        if not done:
            raise RuntimeError("the stream ended without a done event")
    except Exception as e:  # an error event, an HTTP error, a dropped connection: counted, not fatal
        error = f"{type(e).__name__}: {e}"[:300]
    return {"start": start - t0, "first": first, "end": time.perf_counter() - t0, "events": reads, "error": error}


async def run_sample(spec: dict) -> dict:
    query = {"model": spec["model"], **spec["params"]}
    seed = spec["seed"]
    limits = httpx.Limits(max_connections=spec["concurrency"] + 4, max_keepalive_connections=spec["concurrency"] + 4)
    async with httpx.AsyncClient(base_url=spec["url"], timeout=spec.get("timeout", 600), limits=limits) as http:
        short = {**query, "max_len": min(query["max_len"], 8)} if query.get("max_len") else query
        for w in range(spec.get("warmup", 0)):  # sessions, connections, first-call allocations: untimed
            await one_stream(http, {**short, "seed": seed - 1 - w}, time.perf_counter())
        records: list[dict] = [{}] * spec["requests"]
        t0 = time.perf_counter()

        async def one(i: int) -> None:
            records[i] = await one_stream(http, {**query, "seed": seed + i}, t0)

        duration = await paced(spec["requests"], spec["concurrency"], spec.get("request_rate"), seed, one)
    return {"duration": duration, "records": records}


# ----- POST /logprob --------------------------------------------------------------------------------------


async def run_logprob(spec: dict) -> dict:
    model, batch, seed = spec["model"], spec["batch"], spec["seed"]
    shape = spec["inputs"]
    encode = ENCODINGS[spec.get("encoding", "json")]
    rng = np.random.default_rng(seed)
    # Bodies are encoded before the clock starts (a few distinct ones, reused): the client's own encoding
    # work would otherwise take CPU from the server it measures on a small machine.
    bodies = [encode(model, random_inputs(rng, batch, shape["vocab_size"], shape["length"], shape["dtype"]))
              for _ in range(min(spec["requests"], 8))]
    limits = httpx.Limits(max_connections=spec["concurrency"] + 4, max_keepalive_connections=spec["concurrency"] + 4)
    async with httpx.AsyncClient(base_url=spec["url"], timeout=spec.get("timeout", 600), limits=limits) as http:

        async def post(i: int, t0: float) -> dict:
            content, headers = bodies[i % len(bodies)]
            start = time.perf_counter()
            error = None
            try:
                r = await http.post("/logprob", content=content, headers=headers)
                if r.status_code != 200:
                    error = f"HTTP {r.status_code}: {r.text[:200]}"
                elif len(r.json()["results"]) != batch:
                    error = f"expected {batch} results"
            except Exception as e:
                error = f"{type(e).__name__}: {e}"[:300]
            return {"start": start - t0, "end": time.perf_counter() - t0, "examples": batch, "error": error}

        for w in range(spec.get("warmup", 0)):
            await post(w, time.perf_counter())
        records: list[dict] = [{}] * spec["requests"]
        t0 = time.perf_counter()

        async def one(i: int) -> None:
            records[i] = await post(i, t0)

        duration = await paced(spec["requests"], spec["concurrency"], spec.get("request_rate"), seed, one)
    return {"duration": duration, "records": records}


def main() -> None:
    spec = json.load(sys.stdin)
    run = {"sample": run_sample, "logprob": run_logprob}[spec["kind"]]
    json.dump(asyncio.run(run(spec)), sys.stdout)


if __name__ == "__main__":
    main()
