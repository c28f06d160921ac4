"""Between the routes and the engine: checks a request against the model and the limits, runs it on the
model's worker, and shapes the answer (JSON bodies and SSE events). Knows the API, not HTTP plumbing."""

from __future__ import annotations

import asyncio
import math
import secrets
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass

import numpy as np

from app.engine import codecs
from app.engine.errors import EngineError, busy, invalid, too_large, unavailable
from app.engine.generation import Generation, SampleSpec, score
from app.engine.registry import ServedModel
from app.engine.worker import Stream
from app.http import sse
from app.http.errors import APIError
from app.http.schemas import LogprobRequest, SampleParams
from app.runtime.config import Settings
from app.runtime.metrics import Metrics

# ----- POST /logprob ----------------------------------------------------------------------------------


def parse_inputs(req: LogprobRequest, model: ServedModel, settings: Settings) -> list[np.ndarray]:
    if len(req.inputs) > settings.max_batch:
        raise too_large("inputs", f"{len(req.inputs)} inputs exceed the server's limit ARSERVE_MAX_BATCH="
                                  f"{settings.max_batch}")
    xs = []
    for i, raw in enumerate(req.inputs):
        field = f"inputs[{i}]"
        if isinstance(raw, list | str) and len(raw) > settings.max_length:  # before parsing a huge input
            _over_length(field, len(raw), settings)
        x = codecs.parse_x(raw, model.manifest, field)
        if len(x) > settings.max_length:
            _over_length(field, len(x), settings)
        if req.prefix_len >= len(x):
            raise invalid("prefix_len", f"{req.prefix_len} leaves nothing to score in {field} ({len(x)} tokens)")
        xs.append(x)
    return xs


def _over_length(field: str, n: int, settings: Settings):
    raise too_large(field, f"{n} tokens exceed the server's limit ARSERVE_MAX_LENGTH={settings.max_length}")


async def logprob(req: LogprobRequest, model: ServedModel, settings: Settings) -> dict:
    backend = model.pick_backend(req.backend)
    xs = parse_inputs(req, model, settings)
    try:
        scores = await model.worker.call(lambda b: score(b, xs, req.prefix_len, req.per_position), backend,
                                         settings.request_timeout_s)
    except TimeoutError:
        raise _timeout(settings) from None
    results = []
    for s in scores:
        r = {"logprob": s.logprob, "bits_per_dim": s.bits_per_dim, "num_positions": s.num_positions}
        if req.per_position:
            r["per_position"] = s.per_position
        results.append(r)
    return {"model": model.name, "backend": backend, "results": results}


def _timeout(settings: Settings) -> EngineError:
    return unavailable("timeout", f"the model did not answer within ARSERVE_REQUEST_TIMEOUT_S="
                                  f"{settings.request_timeout_s:g}s", settings.retry_after_s)


# ----- sampling ----------------------------------------------------------------------------------------


@dataclass(frozen=True)
class SampleJob:
    model: ServedModel
    backend: str
    spec: SampleSpec
    chunk: int

    def start(self) -> Stream:
        m = self.model.manifest
        mixture = m.distribution == "gaussian_mixture"
        return self.model.worker.open(self.backend, Generation(self.spec, mixture, m.token_dtype))


def prepare_sample(p: SampleParams, model: ServedModel, settings: Settings) -> SampleJob:
    m = model.manifest
    backend = model.pick_backend(p.backend)
    if p.chunk > settings.max_chunk:
        raise too_large("chunk", f"{p.chunk} exceeds the server's limit ARSERVE_MAX_CHUNK={settings.max_chunk}")
    if p.max_len is not None and p.max_len > settings.max_length:
        raise too_large("max_len", f"{p.max_len} exceeds the server's limit ARSERVE_MAX_LENGTH={settings.max_length}")
    if m.distribution == "gaussian_mixture":
        for name, off in (("top_k", 0), ("top_p", 1.0)):
            if getattr(p, name) != off:
                raise invalid(name, f"{m.name} draws continuous values from a mixture; only temperature applies")
    prefix = codecs.parse_prefix(p.prefix, p.prompt, m)
    room = m.length - len(prefix)
    if m.variable_length:
        n = min(p.max_len or room, room, settings.max_length)
    else:  # an image or a vector is only whole at its full length
        n = room
        if p.max_len is not None and p.max_len < room:
            raise invalid("max_len", f"{m.family} model {m.name} draws whole samples: {room} tokens after a prefix "
                                     f"of {len(prefix)}, more than max_len={p.max_len}")
        if n > settings.max_length:
            raise too_large("max_len", f"this model's samples hold {n} tokens, over ARSERVE_MAX_LENGTH="
                                       f"{settings.max_length}")
    seed = p.seed if p.seed is not None else secrets.randbelow(2**31)
    spec = SampleSpec(max_new=n, prefix=prefix, seed=seed, temperature=p.temperature, top_k=p.top_k, top_p=p.top_p)
    return SampleJob(model, backend, spec, p.chunk)


class StreamSlots:
    """Admission control: at most max_concurrent_streams generations at once, server-wide; the rest get 429."""

    def __init__(self, settings: Settings, metrics: Metrics):
        self.limit, self.retry_after, self.metrics = settings.max_concurrent_streams, settings.retry_after_s, metrics
        self.active = 0  # touched only on the event loop

    def acquire(self, model: str) -> Callable[[], None]:
        if self.active >= self.limit:
            raise busy(f"{self.active} sample streams are running, the server's limit "
                       f"(ARSERVE_MAX_CONCURRENT_STREAMS={self.limit}); retry later", self.retry_after)
        self.active += 1
        gauge = self.metrics.active_streams.labels(model)
        gauge.inc()
        released = False

        def release() -> None:
            nonlocal released
            if not released:
                released = True
                self.active -= 1
                gauge.dec()

        return release


def token_event(job: SampleJob, index: int, tokens: list, logprobs: list[float]) -> dict:
    data = {"index": index, "tokens": tokens, "logprobs": logprobs}
    if job.model.manifest.modality == "text":
        data["text"] = codecs.decode_text(tokens, job.model.manifest)
    return data


def done_event(job: SampleJob, gen: Generation) -> dict:
    m = job.model.manifest
    full = np.concatenate([job.spec.prefix, np.asarray(gen.tokens, dtype=m.token_dtype)])
    return {
        "model": m.name,
        "backend": job.backend,
        "tokens": gen.tokens,
        "logprob": math.fsum(gen.logprobs),
        "num_tokens": len(gen.tokens),
        "prefix_len": len(job.spec.prefix),
        "finish_reason": "complete" if len(full) == m.length else "length",
        "seed": job.spec.seed,
        "timings": gen.timings(),
        **codecs.render(full, gen.tokens, m),
    }


async def events(job: SampleJob, stream: Stream, settings: Settings) -> AsyncIterator[bytes]:
    """The SSE body of GET /sample: token events of `chunk` tokens, then done (or error).

    Whatever the worker has already delivered is written out together, as several events in one send: the
    events are the same as one at a time, but a fast model does not pay a socket write per token."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + settings.stream_timeout_s
    index, tokens, logprobs = 0, [], []  # drawn, not yet sent: position of the first, tokens, log-probs
    try:
        while True:
            try:
                items = stream.drain() or [
                    await asyncio.wait_for(stream.get(), min(settings.keepalive_s, deadline - loop.time()))]
            except TimeoutError:
                if loop.time() < deadline:
                    yield sse.comment("keep-alive")
                    continue
                limit = f"ARSERVE_STREAM_TIMEOUT_S={settings.stream_timeout_s:g}s"
                items = [("error", "timeout", f"the stream ran past {limit}")]
            out = []
            for item in items:
                if item[0] == "tokens":  # the worker hands over whatever it drew; events carry `chunk` tokens
                    if not tokens:
                        index = item[1]
                    tokens += item[2]
                    logprobs += item[3]
                    while len(tokens) >= job.chunk:
                        n = job.chunk
                        out.append(sse.event("token", token_event(job, index, tokens[:n], logprobs[:n])))
                        index, tokens, logprobs = index + n, tokens[n:], logprobs[n:]
                    continue
                if tokens:
                    out.append(sse.event("token", token_event(job, index, tokens, logprobs)))
                    tokens, logprobs = [], []
                if item[0] == "done":
                    out.append(sse.event("done", done_event(job, item[1])))
                elif item[0] == "error":
                    out.append(sse.event("error", {"error": {"code": item[1], "message": item[2]}}))
                else:
                    continue
                yield b"".join(out)
                return
            if out:
                yield b"".join(out)
    finally:
        stream.cancel()  # the client went away, or we are done: the worker drops the generation


async def sample_once(job: SampleJob, stream: Stream, settings: Settings) -> dict:
    """POST /sample: run the whole generation, answer the done object."""
    try:
        async with asyncio.timeout(settings.request_timeout_s):
            while True:
                item = await stream.get()
                if item[0] == "done":
                    return done_event(job, item[1])
                if item[0] == "error":
                    raise APIError(503 if item[1] == "shutting_down" else 500, item[1], item[2])
    except TimeoutError:
        raise _timeout(settings) from None
    finally:
        stream.cancel()
