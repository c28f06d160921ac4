"""OpenAI-compatible completions for the text models, and vLLM's tokenizer routes (docs/openai.md).

`POST /v1/completions` runs on the engine like GET /sample: one generation per prompt and sample (n), started
together so the worker batches them, each with a seed derived from the request's. Log-probs are the model's
own (untempered): an echoed prompt's come from the same scoring pass as POST /logprob (so they are its numbers),
drawn tokens' from the step that drew them, and the top alternatives from that step's distribution. Errors on
these routes take OpenAI's shape (app/http/errors.py).

Character models have no BOS token; each advertises a *start token* instead (the newline where the vocabulary
has one, else its first character): the character a text is conditioned on when it has no context, as
lm-evaluation-harness does with a BOS token.
"""

from __future__ import annotations

import asyncio
import json
import secrets
import time
from collections.abc import AsyncIterator
from datetime import datetime

import numpy as np
from fastapi import APIRouter, Request
from starlette.responses import JSONResponse

from app.engine import codecs
from app.engine.errors import invalid, too_large
from app.engine.generation import SampleSpec
from app.engine.registry import Registry, ServedModel
from app.http import service
from app.http.bodies import JSONRoute
from app.http.errors import APIError
from app.http.openai_schemas import (
    OPENAI_ERROR_RESPONSES,
    CompletionRequest,
    DetokenizeRequest,
    TokenizeRequest,
)
from app.http.routes import RegistryDep, SettingsDep
from app.http.samples import Progress, Samples, close, derived_seed
from app.http.schemas import MAX_STOPS
from app.http.sse import EventStreamResponse
from app.runtime.config import Settings
from app.runtime.manifest import Manifest

# One event of a streamed completion, as OpenAPI 3.1 describes an event-stream item: data-only events (the
# default event name), each a JSON chunk, or the literal [DONE] at the end.
STREAM_EVENT = {"type": "object", "required": ["data"],
                "properties": {"event": {"type": "string", "enum": ["message", "error"]}, "data": {"type": "string"}}}

router = APIRouter(route_class=JSONRoute, responses=OPENAI_ERROR_RESPONSES)  # bounded bodies, errors documented

DEFAULT_MAX_TOKENS = 16  # OpenAI's default when max_tokens is not sent


# ----- models -------------------------------------------------------------------------------------------


def start_token(m: Manifest) -> str:
    chars = m.vocabulary.chars
    return "\n" if "\n" in chars else chars[0]


def _created(m: Manifest) -> int:
    try:
        return int(datetime.fromisoformat(m.export["created_utc"]).timestamp())
    except (KeyError, TypeError, ValueError):
        return 0


def text_models(registry: Registry) -> list[ServedModel]:
    registry.require_loaded()
    return [model for _, model in sorted(registry.models.items()) if model.manifest.modality == "text"]


def text_model(request: Request, registry: Registry, name: str) -> ServedModel:
    registry.require_loaded()
    model = registry.models.get(name)
    if model is None:
        served = [m.name for m in text_models(registry)]
        raise APIError(404, "model_not_found", f"model: no text model named {name!r}; served: {served}", "model")
    if model.manifest.modality != "text":
        raise APIError(404, "model_not_supported", f"model: {name} is a {model.manifest.modality} model; /v1 serves "
                                                   f"text models only (use GET /sample or POST /logprob)", "model")
    request.state.model = name  # the metrics label
    request.state.revision = model.revision  # the X-Model-Revision header (app/http/middleware.py)
    return model


@router.get("/v1/models")
async def list_models(registry: RegistryDep) -> dict:
    data = [{"id": model.name, "object": "model", "created": _created(model.manifest), "owned_by": "arserve",
             "max_model_len": model.manifest.length} for model in text_models(registry)]
    return {"object": "list", "data": data}


# ----- tokenizer (vLLM's shapes) --------------------------------------------------------------------------


def tokenizer_model(request: Request, registry: Registry, name: str | None) -> tuple[Manifest, int]:
    """The text model whose tokenizer answers, and the context length to report. Without a name: the one text
    model served, or any of them when they all share one vocabulary and start token (then the shortest context)."""
    if name is not None:
        m = text_model(request, registry, name).manifest
        return m, m.length
    served = [model.manifest for model in text_models(registry)]
    if not served:
        raise APIError(404, "model_not_found", "model: this server serves no text model", "model")
    if len({(m.vocabulary.chars, start_token(m)) for m in served}) > 1:
        raise invalid("model", f"the text models served have different vocabularies; name one of "
                               f"{[m.name for m in served]}")
    return served[0], min(m.length for m in served)


@router.post("/tokenize")
async def tokenize(req: TokenizeRequest, request: Request, registry: RegistryDep) -> dict:
    m, context = tokenizer_model(request, registry, req.model)
    text = (start_token(m) if req.add_special_tokens else "") + req.prompt
    tokens = codecs.encode_text(text, m, "prompt").tolist()
    out = {"count": len(tokens), "max_model_len": context, "tokens": tokens, "token_strs": None}
    if req.return_token_strs:
        out["token_strs"] = list(text)
    return out


@router.post("/detokenize")
async def detokenize(req: DetokenizeRequest, request: Request, registry: RegistryDep) -> dict:
    m, _ = tokenizer_model(request, registry, req.model)
    tokens = codecs.to_tokens(req.tokens, m, "tokens") if req.tokens else []
    return {"prompt": codecs.decode_text(list(tokens), m)}


@router.get("/tokenizer_info")
async def tokenizer_info(request: Request, registry: RegistryDep, model: str | None = None) -> dict:
    m, context = tokenizer_model(request, registry, model)
    start = start_token(m)
    return {
        "tokenizer_class": "CharacterTokenizer",
        "model": model,
        "vocab_size": m.vocab_size,
        "vocab": {c: i for i, c in enumerate(m.vocabulary.chars)},
        "bos_token": start,  # the start token: what a text without context is conditioned on
        "bos_token_id": m.vocabulary.chars.index(start),
        "eos_token": None,  # character models never end a text by themselves
        "pad_token": None,
        "unk_token": None,
        "add_bos_token": False,
        "model_max_length": context,
        "max_model_len": context,
    }


# ----- completions --------------------------------------------------------------------------------------


def parse_prompts(prompt, m: Manifest, settings: Settings) -> list[np.ndarray]:
    if isinstance(prompt, str) or (prompt and isinstance(prompt[0], int)):
        prompt = [prompt]
    if not prompt:
        raise invalid("prompt", "no prompt given")
    if len(prompt) > settings.max_batch:
        raise too_large("prompt", f"{len(prompt)} prompts exceed the server's limit ARSERVE_MAX_BATCH="
                                  f"{settings.max_batch}")
    out = []
    for i, p in enumerate(prompt):
        field = "prompt" if len(prompt) == 1 else f"prompt[{i}]"
        if len(p) > settings.max_length:
            raise too_large(field, f"{len(p)} tokens exceed the server's limit ARSERVE_MAX_LENGTH="
                                   f"{settings.max_length}")
        tokens = codecs.encode_text(p, m, field) if isinstance(p, str) else codecs.to_tokens(p, m, field)
        if len(tokens) > m.length:
            raise invalid(field, f"{len(tokens)} tokens exceed the context of {m.name} ({m.length} tokens)")
        out.append(tokens)
    return out


def max_new_tokens(req: CompletionRequest, prompts: list[np.ndarray], m: Manifest, settings: Settings) -> int:
    longest = max(len(p) for p in prompts)
    room = m.length - longest
    if "max_tokens" not in req.model_fields_set:
        return min(DEFAULT_MAX_TOKENS, room)
    if req.max_tokens is None:
        return min(room, settings.max_length)
    if req.max_tokens > settings.max_length:
        raise too_large("max_tokens", f"{req.max_tokens} exceeds the server's limit ARSERVE_MAX_LENGTH="
                                      f"{settings.max_length}")
    if longest + req.max_tokens > m.length:
        raise invalid("max_tokens", f"a prompt of {longest} tokens plus max_tokens={req.max_tokens} exceeds the "
                                    f"context of {m.name} ({m.length} tokens)")
    return req.max_tokens


def stop_strings(req: CompletionRequest, m: Manifest) -> list[str]:
    stops = [req.stop] if isinstance(req.stop, str) else list(req.stop or [])
    if len(stops) > MAX_STOPS:
        raise invalid("stop", f"{len(stops)} stop strings; at most {MAX_STOPS}")
    for i, s in enumerate(stops):
        codecs.encode_text(s, m, f"stop[{i}]" if not isinstance(req.stop, str) else "stop")
    return [s for s in stops if s]


class Completion:
    """One /v1/completions request: its choices (prompt i, sample j at index i * n + j), read from the worker
    into OpenAI's choice objects, piece by piece."""

    def __init__(self, req: CompletionRequest, model: ServedModel, prompts: list[np.ndarray], max_new: int,
                 stops: list[str], backend: str):
        self.req, self.model, self.m, self.prompts = req, model, model.manifest, prompts
        self.max_new, self.stops, self.backend = max_new, stops, backend
        self.chars = self.m.vocabulary.chars
        self.n = req.n
        self.k = req.logprobs  # None: no log-probs at all
        self.seed = req.seed if req.seed is not None else secrets.randbelow(2**31)
        self.id = f"cmpl-{secrets.token_hex(12)}"
        self.created = int(time.time())
        self.echo_logprobs: list[list[float | None]] = [[] for _ in prompts]
        self.progress = [Progress(stops) for _ in range(len(prompts) * self.n)]
        self.offset = [0] * len(self.progress)  # characters of each choice's text sent so far
        self.opened = [False] * len(self.progress)
        self.closed = [False] * len(self.progress)
        self.samples: Samples | None = None

    # the work ---------------------------------------------------------------------------------------

    @property
    def needs_steps(self) -> bool:
        """Generation runs to draw tokens, or to read the distributions an echoed prompt's alternatives need."""
        wants_top = self.req.echo and bool(self.k) and any(len(p) > 1 for p in self.prompts)
        return self.max_new > 0 or wants_top

    async def score_prompts(self, settings: Settings) -> None:
        """The echoed prompts' log-probs, from the scoring pass POST /logprob makes (the first is null)."""
        scored = [i for i, p in enumerate(self.prompts) if len(p)]
        if not (self.req.echo and self.k is not None and scored):
            return
        xs = [self.prompts[i] for i in scored]
        try:  # the scoring worker POST /logprob uses: the same numbers, batched with its requests
            scores = await self.model.scorer.score(self.backend, xs, 0, True, settings.request_timeout_s)
        except TimeoutError:
            raise service._timeout(settings) from None
        for i, s in zip(scored, scores, strict=True):
            self.echo_logprobs[i] = [None, *s.per_position[1:]]

    def start(self) -> Samples:
        streams = []
        for prompt in self.prompts:
            for j in range(self.n):
                spec = SampleSpec(max_new=self.max_new, prefix=prompt, seed=derived_seed(self.seed, j),
                                  temperature=_or(self.req.temperature, 1.0), top_k=max(0, self.req.top_k or 0),
                                  top_p=_or(self.req.top_p, 1.0), min_p=_or(self.req.min_p, 0.0),
                                  top_logprobs=self.k or 0)
                streams.append(service.open_stream(self.model, self.backend, spec))
        self.samples = Samples(streams)
        return self.samples

    # reading -------------------------------------------------------------------------------------------

    def read(self, c: int, item: tuple) -> list[dict]:
        """One worker item of choice c -> the choice pieces now due (OpenAI choice objects)."""
        p = self.progress[c]
        if self.closed[c]:  # tokens drawn past a stop string, before the cancel landed
            return []
        out = [] if self.opened[c] or not self.req.echo else [self._echo(c)]
        self.opened[c] = True
        if item[0] == "tokens":
            _, index, tokens, logprobs = item
            p.extend(index, tokens, logprobs, self.chars)
            if not p.stopped:
                piece = self._piece(c, p.take())
                return out + ([piece] if piece["text"] else [])
            self.samples.cancel(c)
        p.end("length")
        self.closed[c] = True
        piece = self._piece(c, p.take(flush=True))
        piece["finish_reason"] = p.finish_reason
        return [*out, piece]

    def _choice(self, c: int, text: str, logprobs: dict | None) -> dict:
        return {"index": c, "text": text, "logprobs": logprobs, "finish_reason": None}

    def _echo(self, c: int) -> dict:
        prompt = self.prompts[c // self.n]
        text = codecs.decode_text(prompt.tolist(), self.m)
        if self.k is None:
            return self._choice(c, text, None)
        lps = self.echo_logprobs[c // self.n]
        top = [None] * min(1, len(prompt)) + [self._top(c, pos, int(prompt[pos]), lps[pos])
                                              for pos in range(1, len(prompt))]
        return self._choice(c, text, self._logprobs(c, prompt.tolist(), lps, top))

    def _piece(self, c: int, r: range) -> dict:
        p = self.progress[c]
        tokens = p.tokens[r.start : r.stop]
        text = codecs.decode_text(tokens, self.m)
        if self.k is None:
            return self._choice(c, text, None)
        lps = p.logprobs[r.start : r.stop]
        top = [self._top(c, p.positions[i], p.tokens[i], p.logprobs[i]) for i in r]
        return self._choice(c, text, self._logprobs(c, tokens, lps, top))

    def _top(self, c: int, pos: int, token: int, logprob: float) -> dict[str, float]:
        """The k most likely tokens at a position, and the chosen one (with its own log-prob) always."""
        out = {}
        if self.k:
            ids, lps = self.samples.streams[c].gen.top[pos]
            out = {self.chars[t]: lp for t, lp in zip(ids, lps, strict=True)}
        out[self.chars[token]] = logprob
        return out

    def _logprobs(self, c: int, tokens: list[int], lps: list, top: list) -> dict:
        offsets = list(range(self.offset[c], self.offset[c] + len(tokens)))  # one character per token
        self.offset[c] += len(tokens)
        return {"tokens": [self.chars[t] for t in tokens], "token_logprobs": list(lps), "top_logprobs": top,
                "text_offset": offsets}

    def finish_without_steps(self) -> list[dict]:
        """max_tokens=0 and nothing to step: the choices are the echoed prompts (or empty)."""
        out = []
        for c in range(len(self.progress)):
            piece = self._echo(c) if self.req.echo else self._choice(c, "", None)
            piece["finish_reason"] = "length"
            out.append(piece)
        return out

    # the answer ------------------------------------------------------------------------------------------

    def usage(self) -> dict:
        prompt = sum(len(p) for p in self.prompts)
        completion = sum(len(p.tokens) for p in self.progress)
        return {"prompt_tokens": prompt, "completion_tokens": completion, "total_tokens": prompt + completion}

    def envelope(self, choices: list[dict]) -> dict:
        return {"id": self.id, "object": "text_completion", "created": self.created, "model": self.m.name,
                "choices": choices}

    def merged(self, pieces: list[dict]) -> list[dict]:
        """The pieces of each choice joined into whole choices, in index order."""
        choices = [self._choice(c, "", None) for c in range(len(self.progress))]
        for piece in pieces:
            choice = choices[piece["index"]]
            choice["text"] += piece["text"]
            choice["finish_reason"] = piece["finish_reason"] or choice["finish_reason"]
            if piece["logprobs"] is not None:
                if choice["logprobs"] is None:
                    choice["logprobs"] = {"tokens": [], "token_logprobs": [], "top_logprobs": [], "text_offset": []}
                for key, values in piece["logprobs"].items():
                    choice["logprobs"][key] += values
        for c, choice in enumerate(choices):
            choice["seed"] = derived_seed(self.seed, c % self.n)
        return choices


def _or(value, default):
    return default if value is None else value


def prepare(req: CompletionRequest, model: ServedModel, settings: Settings) -> Completion:
    m = model.manifest
    service.check_n(req.n, "n", settings)
    prompts = parse_prompts(req.prompt, m, settings)
    max_new = max_new_tokens(req, prompts, m, settings)
    if max_new > 0 and any(len(p) >= m.length for p in prompts):
        raise invalid("prompt", f"a prompt of {m.length} tokens fills the context of {m.name}; nothing can follow")
    return Completion(req, model, prompts, max_new, stop_strings(req, m), model.pick_backend(None))


@router.post("/v1/completions", responses={200: {
    "description": "the completion as JSON, or with `stream: true` data-only server-sent events ending in [DONE]",
    "content": {"text/event-stream": {"schema": STREAM_EVENT}}}})
async def completions(req: CompletionRequest, request: Request, registry: RegistryDep, settings: SettingsDep):
    completion = prepare(req, text_model(request, registry, req.model), settings)
    await completion.score_prompts(settings)
    if not completion.needs_steps:
        pieces = completion.finish_without_steps()
        if req.stream:
            return EventStreamResponse(_replay(completion, pieces), on_close=lambda: None,
                                       stall_s=settings.stream_stall_s, drain=request.app.state.drain)
        return completion.envelope(completion.merged(pieces)) | {"usage": completion.usage()}
    rows = len(completion.progress)
    release = request.app.state.slots.acquire(completion.m.name, request.state.client, rows)  # 429 before starting
    try:
        samples = completion.start()
    except BaseException:
        release()
        raise
    if req.stream:
        return EventStreamResponse(_stream(completion, samples, settings), on_close=release,
                                   stall_s=settings.stream_stall_s, drain=request.app.state.drain)
    try:
        pieces = await _collect(completion, samples, settings)
    finally:
        release()
    return JSONResponse(completion.envelope(completion.merged(pieces)) | {"usage": completion.usage()})


async def _collect(completion: Completion, samples: Samples, settings: Settings) -> list[dict]:
    pieces = []
    try:
        async with asyncio.timeout(settings.request_timeout_s):
            while not all(completion.closed):
                c, item = await samples.get()
                if item[0] == "error":
                    raise APIError(503 if item[1] == "shutting_down" else 500, item[1], item[2])
                pieces += completion.read(c, item)
    except TimeoutError:
        raise service._timeout(settings) from None
    finally:
        await close(samples)
    return pieces


def _data(obj) -> bytes:
    return f"data: {json.dumps(obj, separators=(',', ':'))}\n\n".encode()


def _chunks(completion: Completion, pieces: list[dict]) -> bytes:
    usage = {"usage": None} if _include_usage(completion.req) else {}
    return b"".join(_data(completion.envelope([piece]) | usage) for piece in pieces)


def _include_usage(req: CompletionRequest) -> bool:
    return bool(req.stream_options and req.stream_options.include_usage)


def _end(completion: Completion) -> bytes:
    out = b""
    if _include_usage(completion.req):
        out += _data(completion.envelope([]) | {"usage": completion.usage()})
    return out + b"data: [DONE]\n\n"


async def _replay(completion: Completion, pieces: list[dict]) -> AsyncIterator[bytes]:
    yield _chunks(completion, pieces) + _end(completion)


async def _stream(completion: Completion, samples: Samples, settings: Settings) -> AsyncIterator[bytes]:
    """Data-only SSE, as OpenAI streams: one chunk per choice piece, the usage if asked, then [DONE]."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + settings.stream_timeout_s
    try:
        while not all(completion.closed):
            items = await samples.next(settings.keepalive_s, deadline, settings.stream_timeout_s)
            if items is None:
                yield b": keep-alive\n\n"
                continue
            pieces = []
            for c, item in items:
                if item[0] == "error":
                    error = {"message": item[2], "type": "server_error", "param": None, "code": item[1]}
                    yield _chunks(completion, pieces) + _data({"error": error}) + b"data: [DONE]\n\n"
                    return
                pieces += completion.read(c, item)
            if pieces:
                yield _chunks(completion, pieces)
        yield _end(completion)
    finally:
        await close(samples)
