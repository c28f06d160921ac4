"""Request and response bodies. Static bounds are Field constraints (a 422 naming the field); bounds that
depend on the model or on the server's settings are checked by the routes against the manifest."""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from app.runtime.config import BackendName

FinishReason = Literal["complete", "length", "stop"]
MAX_STOPS = 4  # stop strings per request, as OpenAI allows


class _Request(BaseModel):
    # A misspelt parameter ("temprature") is an error, not a silently ignored default.
    model_config = ConfigDict(extra="forbid")


class LogprobRequest(_Request):
    model: str = Field(min_length=1, max_length=64)
    inputs: list[Any] = Field(min_length=1, description="token lists; text models also strings; images 2-D 0/1")
    per_position: bool = False
    prefix_len: int = Field(0, ge=0, description="score only the continuation x_>=prefix_len")
    backend: BackendName | None = None


class LogprobArrayParams(_Request):
    """POST /logprob's query when the body is a packed array (application/octet-stream, docs/scoring.md)."""

    model: str = Field(min_length=1, max_length=64)
    shape: str = Field(pattern=r"^\s*\d{1,12}\s*,\s*\d{1,12}\s*$", description="rows,length of the array, e.g. 16,784")
    dtype: Literal["uint8", "int32", "int64", "float32"] = Field(description="little-endian element type")
    per_position: bool = False
    prefix_len: int = Field(0, ge=0, description="score only the continuation x_>=prefix_len")
    backend: BackendName | None = None

    def dims(self) -> tuple[int, int]:
        rows, length = (int(d) for d in self.shape.split(","))
        return rows, length


class SampleParams(_Request):
    """GET /sample's query parameters; POST /sample takes the same as JSON."""

    model: str = Field(min_length=1, max_length=64)
    temperature: float = Field(1.0, ge=0, le=100, allow_inf_nan=False, description="0 = greedy argmax")
    top_k: int = Field(0, ge=0, description="keep the k most likely tokens; 0 = off")
    top_p: float = Field(1.0, gt=0, le=1, allow_inf_nan=False, description="nucleus mass; 1 = off")
    min_p: float = Field(0.0, ge=0, le=1, allow_inf_nan=False,
                         description="drop tokens less likely than min_p x the most likely one; 0 = off")
    n: int = Field(1, ge=1, description="samples to draw, each with its own seed derived from `seed`")
    stop: list[Annotated[str, Field(min_length=1, max_length=256)]] | None = Field(
        None, max_length=MAX_STOPS, description="text models: end a sample before the first of these strings")
    seed: int | None = Field(None, ge=0, le=2**63 - 1, description="omitted: chosen at random and reported")
    max_len: int | None = Field(None, ge=1, description="most tokens to generate after the prefix")
    prefix: str | None = Field(None, description="comma-separated tokens fed before sampling")
    prompt: str | None = Field(None, description="text models: text fed before sampling")
    chunk: int = Field(1, ge=1, description="tokens per token event")
    backend: BackendName | None = None


class SampleBody(SampleParams):
    prefix: str | list[Any] | None = Field(None, description="tokens (a list, or comma-separated)")


class LogprobResult(BaseModel):
    logprob: float | None = Field(description="total log-probability (log-density for continuous data), nats")
    bits_per_dim: float | None
    num_positions: int
    per_position: list[float | None] | None = None


class LogprobResponse(BaseModel):
    model: str
    revision: str = Field(description="short hash of the model's manifest and files (also the X-Model-Revision header)")
    backend: BackendName
    results: list[LogprobResult]


class SampleDone(BaseModel):
    model: str
    revision: str = Field(description="short hash of the model's manifest and files")
    backend: BackendName
    tokens: list[int | float] = Field(description="the generated tokens (the prefix excluded)")
    logprob: float = Field(description="sum of the generated tokens' log-probs under the untempered model")
    num_tokens: int
    prefix_len: int
    finish_reason: FinishReason
    seed: int
    timings: dict[str, float]
    text: str | None = None
    png: str | None = None
    wav: str | None = None
    sample: int | None = Field(None, description="which of the n samples (only when n > 1)")


class SampleMany(BaseModel):
    model: str
    samples: list[SampleDone] = Field(description="POST /sample with n > 1: every sample's done object, in order")


class ModelsResponse(BaseModel):
    models: list[dict[str, Any]]


class ErrorDetail(BaseModel):
    code: str = Field(description="stable, for programs: invalid_input, limit_exceeded, unauthorized, ...")
    message: str = Field(description="for people: names the field (and position) to blame")
    field: str | None = None


class ErrorResponse(BaseModel):
    """Every 4xx and 503 answer (readiness adds `skipped`)."""

    model_config = ConfigDict(extra="allow")
    error: ErrorDetail


ERROR_RESPONSES: dict[int | str, dict[str, Any]] = {
    "4XX": {"model": ErrorResponse, "description": "the caller's mistake, or over a limit"},
    503: {"model": ErrorResponse, "description": "not ready, busy or shutting down (Retry-After)"},
}


class TokenEvent(BaseModel):
    """The data of a GET /sample `token` event."""

    index: int = Field(description="position (after the prefix) of the first token of this event")
    tokens: list[int | float]
    logprobs: list[float | None]
    text: str | None = None


def event_stream_schema() -> dict[str, Any]:
    """One Server-Sent Event of GET /sample as OpenAPI 3.1 describes an event-stream item: its name, and its data
    as JSON of the matching shape (token: TokenEvent, done: SampleDone, error: ErrorResponse)."""
    token = TokenEvent.model_json_schema()
    shapes = [token, {"$ref": "#/components/schemas/SampleDone"}, {"$ref": "#/components/schemas/ErrorResponse"}]
    return {
        "type": "object",
        "required": ["event", "data"],
        "properties": {
            "event": {"type": "string", "enum": ["token", "done", "error"]},
            "data": {"type": "string", "contentMediaType": "application/json", "contentSchema": {"anyOf": shapes}},
        },
    }
