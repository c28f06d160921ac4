"""The served path against the same engine in-process, and WaveNet's real-time factor.

    python -m bench.served --exported exported/ [--quick]

Both sides run app.runtime.backends' OnnxBackend, app.engine.scoring's `score` and app.engine.generation's
`Generation` + `Batch`, exactly as the server's threads do, so the gap is HTTP + JSON + SSE + the hand-off to the
model's threads. The HTTP side is a real `uvicorn` process (one for the whole run) read through app.client (httpx,
httpx-sse), so client-side parsing counts too: that is what a caller sees.

- served: POST /logprob examples/s on a batch of 16, GET /sample tokens/s and time to first token at
  batch 1 and chunk=1, each next to its in-process figure, and the overhead 1 - http/in-process in %.
- wavenet: real-time factor (generated samples per second / sample rate) of one stream and of 16 streams
  at once (the worker batches them into one step call), in-process and through HTTP at chunk=80.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from app.client import ArserveClient, AsyncArserveClient
from app.engine.generation import SampleSpec, generate
from app.engine.scoring import score
from app.runtime import backends
from app.runtime.backends import Backend
from app.runtime.manifest import Manifest, load_manifest
from bench.common import Context, Figure, median_seconds, serve

BATCH = 16  # inputs per POST /logprob
MAX_T = 256  # tokens scored / drawn by long variable-length models
QUICK_T = 64  # tokens scored and drawn by variable-length models in quick mode
WARMUP_T = 8  # tokens of the untimed warm-up generation (sessions, connection, first-call allocations)
CHUNK = 1  # tokens per SSE event: every token pays its own event
WIDE_CHUNK = 16  # ... and with 16 tokens per event, what a client that can wait ~16 tokens gets
AUDIO_CHUNK = 80  # 10 ms of 8 kHz audio per SSE event: what a player buffers anyway
SEED = 0
QUICK_REPEATS = 1  # quick is a smoke run: one timed repeat after the warm-up
STREAMS = 16
AUDIO_T = {False: (8000, 2000), True: (400, 100)}  # quick -> samples of the single stream, of each of 16


@dataclass
class Served:
    """One exported model, with its own in-process backend."""

    manifest: Manifest
    backend: Backend

    @classmethod
    def load(cls, folder: Path, threads: int) -> Served:
        m = load_manifest(folder)
        return cls(m, backends.load("onnx", folder, m, threads))


def valid_batch(m: Manifest, T: int, rng: np.random.Generator) -> np.ndarray:
    """[BATCH, T] inputs POST /logprob accepts (random tokens, or standard normal values for RNADE)."""
    if m.token_dtype == "float32":
        return rng.standard_normal((BATCH, T)).astype(np.float32)
    return rng.integers(0, m.vocab_size, (BATCH, T), dtype=np.int64)


def draw_inprocess(s: Served, n: int, streams: int = 1) -> tuple[float, float]:
    """Seconds to draw n tokens in each of `streams` generations stepped together, and to the first token."""
    m = s.manifest
    t0 = time.perf_counter()
    specs = [SampleSpec(n, np.zeros(0, m.token_dtype), SEED + i) for i in range(streams)]
    # the worker's slot buffers, stepped the same way
    gens = generate(s.backend, specs, m.distribution == "gaussian_mixture", m.token_dtype)
    return time.perf_counter() - t0, gens[0].first_token - t0


def draw_http(client: ArserveClient, m: Manifest, n: int, chunk: int) -> tuple[float, float]:
    """Seconds of the whole GET /sample SSE stream of n tokens, and from the request to the first token event.
    Fixed-length models only draw whole samples: n is their length (or the warm-up asks and gets more)."""
    max_len, n = (n, n) if m.variable_length else (None, m.length)
    t0 = time.perf_counter()
    first = None
    for event in client.sample(m.name, seed=SEED, max_len=max_len, chunk=chunk):
        if event.event == "token":
            first = first or time.perf_counter()
        elif event.data["num_tokens"] != n:  # the done event
            raise RuntimeError(f"{m.name}: asked for {n} tokens, got {event.data['num_tokens']}")
    return time.perf_counter() - t0, first - t0


def draw_http_concurrent(url: str, m: Manifest, n: int, streams: int, chunk: int) -> tuple[float]:
    """Wall seconds for `streams` concurrent GET /sample streams of n tokens each (distinct seeds)."""

    async def one(client: AsyncArserveClient, seed: int) -> None:
        async for _ in client.sample(m.name, seed=seed, max_len=n, chunk=chunk):
            pass

    async def all_streams() -> float:
        async with AsyncArserveClient(url, timeout=600) as client:
            t0 = time.perf_counter()
            await asyncio.gather(*(one(client, SEED + i) for i in range(streams)))
            return time.perf_counter() - t0

    return (asyncio.run(all_streams()),)


def medians(draw: Callable[[int], tuple[float, ...]], n: int, repeats: int) -> tuple[float, ...]:
    """Median of each timing draw(n) returns over `repeats` runs, after one short untimed run."""
    draw(min(n, WARMUP_T))
    runs = [draw(n) for _ in range(repeats)]
    return tuple(statistics.median(column) for column in zip(*runs, strict=True))


def overhead(http: float, inproc: float) -> float:
    return 100 * (1 - http / inproc)


@dataclass
class Session:
    """What both sections share: the models loaded in this process, the server and a client of it."""

    ctx: Context
    models: list[Served]
    url: str
    client: ArserveClient

    @property
    def repeats(self) -> int:
        return min(self.ctx.repeats, QUICK_REPEATS) if self.ctx.quick else self.ctx.repeats

    def config(self, m: Manifest, **more) -> dict:
        return {"model": m.name, "backend": "onnx", "repeats": self.repeats, "threads": self.ctx.threads, **more}


def run_served(session: Session) -> list[Figure]:
    return [f for s in session.models for f in served_figures(s, session)]


def served_figures(s: Served, session: Session) -> list[Figure]:
    m, client, repeats, quick = s.manifest, session.client, session.repeats, session.ctx.quick
    T = min(m.length, QUICK_T if quick else MAX_T) if m.variable_length else m.length
    x = valid_batch(m, T, np.random.default_rng(SEED))
    xs, as_json = list(x), x.tolist()
    cfg = session.config(m, batch=BATCH, tokens=T)
    inproc = BATCH / median_seconds(lambda: score(s.backend, xs, 0), repeats)
    http = BATCH / median_seconds(lambda: client.logprob(m.name, as_json), repeats)
    figs = [Figure("served", f"{m.name} /logprob in-process", inproc, "examples/s", cfg),
            Figure("served", f"{m.name} /logprob http", http, "examples/s", cfg),
            Figure("served", f"{m.name} /logprob overhead", overhead(http, inproc), "%", cfg)]

    cfg = session.config(m, batch=1, tokens=T, chunk=CHUNK, seed=SEED)
    inproc_s, inproc_first = medians(lambda k: draw_inprocess(s, k), T, repeats)
    http_s, http_first = medians(lambda k: draw_http(client, m, k, CHUNK), T, repeats)
    chunked_s = medians(lambda k: draw_http(client, m, k, WIDE_CHUNK), T, repeats)[0]
    return figs + [
        Figure("served", f"{m.name} /sample in-process", T / inproc_s, "tokens/s", cfg),
        Figure("served", f"{m.name} /sample http", T / http_s, "tokens/s", cfg),
        Figure("served", f"{m.name} /sample overhead", overhead(T / http_s, T / inproc_s), "%", cfg),
        Figure("served", f"{m.name} /sample http chunk={WIDE_CHUNK}", T / chunked_s, "tokens/s",
               {**cfg, "chunk": WIDE_CHUNK}),
        Figure("served", f"{m.name} /sample ttft in-process", 1000 * inproc_first, "ms", cfg),
        Figure("served", f"{m.name} /sample ttft http", 1000 * http_first, "ms", cfg),
    ]


def run_wavenet(session: Session) -> list[Figure]:
    return [f for s in session.models if s.manifest.family == "wavenet" for f in wavenet_figures(s, session)]


def wavenet_figures(s: Served, session: Session) -> list[Figure]:
    m, repeats = s.manifest, session.repeats
    rate = m.vocabulary.sample_rate
    single, each = (min(n, m.length) for n in AUDIO_T[session.ctx.quick])
    one = session.config(m, streams=1, tokens=single, chunk=AUDIO_CHUNK, sample_rate=rate)
    many = session.config(m, streams=STREAMS, tokens=each, chunk=AUDIO_CHUNK, sample_rate=rate)
    inproc_1 = medians(lambda k: draw_inprocess(s, k), single, repeats)[0]
    http_1 = medians(lambda k: draw_http(session.client, m, k, AUDIO_CHUNK), single, repeats)[0]
    inproc_n = medians(lambda k: draw_inprocess(s, k, STREAMS), each, repeats)[0]
    http_n = medians(lambda k: draw_http_concurrent(session.url, m, k, STREAMS, AUDIO_CHUNK), each, repeats)[0]
    rtf = "real-time factor"
    return [
        Figure("wavenet", f"{m.name} 1 stream in-process", single / inproc_1 / rate, rtf, one),
        Figure("wavenet", f"{m.name} 1 stream http", single / http_1 / rate, rtf, one),
        Figure("wavenet", f"{m.name} {STREAMS} streams in-process (one batched step)",
               STREAMS * each / inproc_n / rate, rtf, many),
        Figure("wavenet", f"{m.name} {STREAMS} streams http", STREAMS * each / http_n / rate, rtf, many),
    ]


def run(ctx: Context) -> list[Figure]:
    """Both sections against one server; the in-process backends use the server's thread count."""
    models = [Served.load(folder, ctx.threads) for folder in ctx.models()]
    # one client drives every stream: the per-client cap (docs/security.md) must not count them as an attack
    with (serve(ctx.exported, ctx.threads, ARSERVE_MAX_STREAMS_PER_CLIENT="32") as url,
          ArserveClient(url, timeout=600) as client):
        session = Session(ctx, models, url, client)
        return run_served(session) + run_wavenet(session)


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--exported", type=Path, default=Path("exported"))
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--repeats", type=int, default=5)
    args = ap.parse_args(argv)
    ctx = Context(args.exported, args.quick, args.threads, args.repeats)
    t0 = time.perf_counter()
    for f in run(ctx):
        print(f"{f.section:8} {f.name:52} {f.value:10.2f} {f.unit:17} {f.config}")
    print(f"{time.perf_counter() - t0:.1f} s")


if __name__ == "__main__":
    main()
