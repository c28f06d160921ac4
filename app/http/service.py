"""Between the routes and the engine: checks a request against the model and the limits, runs it on the
model's worker, and shapes the answer (JSON bodies and SSE events). Knows the API, not HTTP plumbing."""

from __future__ import annotations

import asyncio
import math
import secrets
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field, replace

import numpy as np

from app.engine import codecs
from app.engine.errors import EngineError, busy, invalid, too_large, unavailable
from app.engine.generation import Generation, SampleSpec
from app.engine.registry import ServedModel
from app.engine.scoring import Score
from app.engine.worker import Stream
from app.http import sse
from app.http.errors import APIError
from app.http.samples import Progress, Samples, close, derived_seed
from app.http.schemas import LogprobArrayParams, LogprobRequest, SampleParams
from app.runtime.config import BackendName, Settings
from app.runtime.metrics import Metrics, StreamTimer

# ----- POST /logprob ----------------------------------------------------------------------------------


def parse_inputs(req: LogprobRequest, model: ServedModel, settings: Settings) -> list[np.ndarray]:
    if len(req.inputs) > settings.max_batch:
        raise too_large("inputs", f"{len(req.inputs)} inputs exceed the server's limit ARSERVE_MAX_BATCH="
                                  f"{settings.max_batch}")
    # The work budget before parsing anything (exact for flat lists and strings), and again once parsed.
    check_budget(len(req.inputs), sum(len(raw) for raw in req.inputs if isinstance(raw, list | str)), model, settings)
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
    check_budget(len(xs), sum(len(x) for x in xs), model, settings)
    return xs


def _over_length(field: str, n: int, settings: Settings):
    raise too_large(field, f"{n} tokens exceed the server's limit ARSERVE_MAX_LENGTH={settings.max_length}")


def check_budget(inputs: int, positions: int, model: ServedModel, settings: Settings, field: str = "inputs") -> None:
    """The work budget of one request: positions scored (inputs x tokens), per model."""
    limit = settings.scored_positions_for(model.name)
    if positions > limit:
        setting = (f'ARSERVE_MODEL_MAX_SCORED_POSITIONS["{model.name}"]' if model.name in
                   settings.model_max_scored_positions else "ARSERVE_MAX_SCORED_POSITIONS")
        raise too_large(field, f"{inputs} inputs hold {positions} tokens in all, over the work budget of "
                                  f"{limit} scored positions per request for {model.name} ({setting}={limit}); "
                                  f"split them into several requests")


async def logprob(req: LogprobRequest, model: ServedModel, settings: Settings) -> dict:
    backend = model.pick_backend(req.backend)
    xs = parse_inputs(req, model, settings)
    return await _score(model, backend, xs, req.prefix_len, req.per_position, settings)


def check_array(p: LogprobArrayParams, model: ServedModel, settings: Settings) -> int:
    """A packed array's query against the limits and the model, before its body is read: the bytes it needs."""
    model.pick_backend(p.backend)
    rows, length = p.dims()
    if rows > settings.max_batch:
        raise too_large("shape", f"{rows} rows exceed the server's limit ARSERVE_MAX_BATCH={settings.max_batch}")
    if length > settings.max_length:
        _over_length("shape", length, settings)
    check_budget(rows, rows * length, model, settings, "shape")
    nbytes = codecs.check_array(rows, length, p.dtype, model.manifest)
    if p.prefix_len >= length:
        raise invalid("prefix_len", f"{p.prefix_len} leaves nothing to score in rows of {length} tokens")
    return nbytes


async def logprob_array(p: LogprobArrayParams, body: bytes, model: ServedModel, settings: Settings) -> dict:
    """POST /logprob with a packed array whose query passed check_array and whose body has the right size."""
    x = codecs.parse_array(body, *p.dims(), p.dtype, model.manifest)  # (B, T)
    return await _score(model, model.pick_backend(p.backend), x, p.prefix_len, p.per_position, settings)


async def _score(model: ServedModel, backend: BackendName, xs: list[np.ndarray] | np.ndarray, prefix_len: int,
                 per_position: bool, settings: Settings) -> dict:
    try:
        scores = await model.scorer.score(backend, xs, prefix_len, per_position, settings.request_timeout_s)
    except TimeoutError:
        raise _timeout(settings) from None
    return {"model": model.name, "revision": model.revision, "backend": backend,
            "results": [_result(s, per_position) for s in scores]}


def _result(s: Score, per_position: bool) -> dict:
    r = {"logprob": s.logprob, "bits_per_dim": s.bits_per_dim, "num_positions": s.num_positions}
    if per_position:
        r["per_position"] = s.per_position
    return r


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
    n: int = 1  # samples, each with its own seed derived from spec.seed (samples.derived_seed)
    stop: tuple[str, ...] = ()  # text models: a sample ends before the first of these strings
    received: float = field(default_factory=time.perf_counter)  # when the request was taken in (the metrics' t0)

    def specs(self) -> list[SampleSpec]:
        return [replace(self.spec, seed=derived_seed(self.spec.seed, i)) for i in range(self.n)]

    def start(self) -> Samples:
        """Open the n generations at once, so the worker batches them from their first step."""
        return Samples([self.open(spec) for spec in self.specs()])

    def open(self, spec: SampleSpec) -> Stream:
        return open_stream(self.model, self.backend, spec)


def open_stream(model: ServedModel, backend: str, spec: SampleSpec) -> Stream:
    """One generation on the model's worker (its state is a row of the worker's slot buffers)."""
    m = model.manifest
    mixture = m.distribution == "gaussian_mixture"
    return model.worker.open(backend, Generation(spec, mixture, m.token_dtype))


def prepare_sample(p: SampleParams, model: ServedModel, settings: Settings) -> SampleJob:
    m = model.manifest
    backend = model.pick_backend(p.backend)
    if p.chunk > settings.max_chunk:
        raise too_large("chunk", f"{p.chunk} exceeds the server's limit ARSERVE_MAX_CHUNK={settings.max_chunk}")
    if p.max_len is not None and p.max_len > settings.max_length:
        raise too_large("max_len", f"{p.max_len} exceeds the server's limit ARSERVE_MAX_LENGTH={settings.max_length}")
    check_n(p.n, "n", settings)
    if m.distribution == "gaussian_mixture":
        for name, off in (("top_k", 0), ("top_p", 1.0), ("min_p", 0.0)):
            if getattr(p, name) != off:
                raise invalid(name, f"{m.name} draws continuous values from a mixture; only temperature applies")
    if p.stop and m.modality != "text":
        raise invalid("stop", f"stop strings apply to text models; {m.name} is a {m.modality} model")
    prefix = codecs.parse_prefix(p.prefix, p.prompt, m)
    for i, s in enumerate(p.stop or []):
        codecs.encode_text(s, m, f"stop[{i}]")  # a stop string the model cannot write is a typo
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
    spec = SampleSpec(max_new=n, prefix=prefix, seed=seed, temperature=p.temperature, top_k=p.top_k, top_p=p.top_p,
                      min_p=p.min_p, chunk=p.chunk)
    return SampleJob(model, backend, spec, p.chunk, p.n, tuple(p.stop or ()))


def check_n(n: int, field: str, settings: Settings) -> None:
    if n > settings.max_n:
        raise too_large(field, f"{n} samples exceed the server's limit ARSERVE_MAX_N={settings.max_n}")


class StreamSlots:
    """Admission control: at most max_concurrent_streams generations at once, server-wide, and at most
    max_streams_per_client from one client address; the rest get 429. A request for n samples takes n slots."""

    def __init__(self, settings: Settings, metrics: Metrics):
        self.limit, self.retry_after, self.metrics = settings.max_concurrent_streams, settings.retry_after_s, metrics
        self.per_client = settings.max_streams_per_client
        self.active = 0  # touched only on the event loop
        self.by_client: dict[str, int] = {}

    def acquire(self, model: str, client: str, n: int = 1) -> Callable[[], None]:
        if n > self.limit:
            raise too_large("n", f"{n} samples at once exceed the server's limit ARSERVE_MAX_CONCURRENT_STREAMS="
                                 f"{self.limit}")
        if self.active + n > self.limit:
            raise busy(f"{self.active} sample streams are running, the server's limit "
                       f"(ARSERVE_MAX_CONCURRENT_STREAMS={self.limit}); retry later", self.retry_after)
        if self.by_client.get(client, 0) + n > self.per_client:
            raise busy(f"{self.by_client.get(client, 0)} sample streams of this client are running, the per-client "
                       f"limit (ARSERVE_MAX_STREAMS_PER_CLIENT={self.per_client}); retry later", self.retry_after,
                       "too_many_client_streams")
        self.active += n
        self.by_client[client] = self.by_client.get(client, 0) + n
        gauge = self.metrics.active_streams.labels(model)
        gauge.inc(n)
        released = False

        def release() -> None:
            nonlocal released
            if not released:
                released = True
                self.active -= n
                self.by_client[client] -= n
                if not self.by_client[client]:
                    del self.by_client[client]
                gauge.dec(n)

        return release


class Reader:
    """Turns the worker's items for a job's n samples into the API's token and done objects."""

    def __init__(self, job: SampleJob, samples: Samples):
        self.job, self.samples = job, samples
        self.m = job.model.manifest
        self.progress = [Progress(list(job.stop)) for _ in range(job.n)]
        self.done: list[dict | None] = [None] * job.n

    @property
    def finished(self) -> bool:
        return all(d is not None for d in self.done)

    def read(self, i: int, item: tuple) -> list[tuple[str, dict]]:
        """One worker item of sample i -> the (event, data) pairs now due, in order."""
        p = self.progress[i]
        if item[0] == "error":
            return [("error", {"error": {"code": item[1], "message": item[2]}})]
        if self.done[i] is not None:  # tokens drawn past a stop string, before the cancel landed
            return []
        if item[0] == "tokens":
            _, index, tokens, logprobs = item
            p.extend(index, tokens, logprobs, self.m.vocabulary.chars if self.job.stop else None)
            if not p.stopped:
                return self._tokens(i, p.take(self.job.chunk))
            self.samples.cancel(i)  # the rest of this sample will never be sent
        gen = self.samples.streams[i].gen
        full = len(self.job.spec.prefix) + len(p.tokens) == self.m.length
        p.end("complete" if full else "length")
        out = self._tokens(i, p.take(self.job.chunk, flush=True))
        self.done[i] = self._done(i, p, gen)
        return [*out, ("done", self.done[i])]

    def _tokens(self, i: int, r: range) -> list[tuple[str, dict]]:
        p, out = self.progress[i], []
        for a in range(r.start, r.stop, self.job.chunk):
            b = min(a + self.job.chunk, r.stop)
            data = {"index": p.positions[a], "tokens": p.tokens[a:b], "logprobs": p.logprobs[a:b]}
            if self.m.modality == "text":
                data["text"] = codecs.decode_text(p.tokens[a:b], self.m)
            if self.job.n > 1:
                data["sample"] = i
            out.append(("token", data))
        return out

    def _done(self, i: int, p: Progress, gen: Generation) -> dict:
        m, spec = self.m, self.job.spec
        full = np.concatenate([spec.prefix, np.asarray(p.tokens, dtype=m.token_dtype)])
        out = {
            "model": m.name,
            "revision": self.job.model.revision,
            "backend": self.job.backend,
            "tokens": list(p.tokens),
            "logprob": math.fsum(p.logprobs),
            "num_tokens": len(p.tokens),
            "prefix_len": len(spec.prefix),
            "finish_reason": p.finish_reason,
            "seed": derived_seed(spec.seed, i),
            "timings": gen.timings(),
            **codecs.render(full, p.tokens, m),
        }
        if self.job.n > 1:
            out["sample"] = i
        return out


async def events(job: SampleJob, samples: Samples, settings: Settings, metrics: Metrics) -> AsyncIterator[bytes]:
    """The SSE body of GET /sample: token events of `chunk` tokens, then done (one per sample), or error.

    Whatever the worker has already delivered is written out together, as several events in one send: the
    events are the same as one at a time, but a fast model does not pay a socket write per token."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + settings.stream_timeout_s
    reader = Reader(job, samples)
    timer = StreamTimer(metrics, job.model.name, job.received)
    try:
        while True:
            items = await samples.next(settings.keepalive_s, deadline, settings.stream_timeout_s)
            if items is None:
                yield sse.comment("keep-alive")
                continue
            out = []
            for i, item in items:
                for name, data in reader.read(i, item):
                    out.append(sse.event(name, data))
                    if name == "token":
                        _timed(timer, samples, len(data["tokens"]))
                    if name == "error":
                        yield b"".join(out)
                        return
            if out:
                yield b"".join(out)
            if reader.finished:
                return
    finally:
        await close(samples)  # the client went away, or we are done: the worker drops the generations


def _timed(timer: StreamTimer, samples: Samples, tokens: int) -> None:
    """One token event sent (of any of the request's n samples): the histograms bench.load's figures mirror."""
    first = samples.streams[0]
    if timer.last is None and first.gen is not None:  # the first token event: the stream was admitted by now
        timer.admitted(first.gen.created)
    timer.token_event(tokens)


async def sample_once(job: SampleJob, samples: Samples, settings: Settings) -> dict:
    """POST /sample: run the whole generation, answer the done object ({"samples": [...]} for n > 1)."""
    reader = Reader(job, samples)
    try:
        async with asyncio.timeout(settings.request_timeout_s):
            while not reader.finished:
                i, item = await samples.get()
                if item[0] == "error":
                    raise APIError(503 if item[1] == "shutting_down" else 500, item[1], item[2])
                reader.read(i, item)
    except TimeoutError:
        raise _timeout(settings) from None
    finally:
        await close(samples)
    if job.n == 1:
        return reader.done[0]
    return {"model": job.model.name, "samples": reader.done}
