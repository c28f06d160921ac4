"""Bodies of the OpenAI-compatible routes (/v1/...) and of vLLM's tokenizer routes.

Unlike the native API, unknown fields are ignored, as OpenAI and vLLM do (clients send fields such as `user`
or `presence_penalty` that have no meaning here); invalid values of the fields we read are still errors.
"""

from __future__ import annotations

from typing import Annotated

from pydantic import BaseModel, ConfigDict, Field

from app.http.schemas import MAX_STOPS


class _Open(BaseModel):
    model_config = ConfigDict(extra="ignore")


class StreamOptions(_Open):
    include_usage: bool = False  # a last chunk with the usage and no choices


TokenIds = Annotated[list[int], Field(min_length=1)]


class CompletionRequest(_Open):
    model: str = Field(min_length=1, max_length=64)
    prompt: str | list[str] | TokenIds | list[TokenIds] = Field(
        description="a string, strings, token ids or lists of token ids (one completion per prompt and n)")
    max_tokens: int | None = Field(16, ge=0, description="tokens to draw; null = up to the model's context")
    temperature: float | None = Field(1.0, ge=0, le=100, allow_inf_nan=False)
    top_p: float | None = Field(1.0, gt=0, le=1, allow_inf_nan=False)
    top_k: int | None = Field(None, ge=-1, description="vLLM's extension: keep the k most likely; -1 or 0 = off")
    min_p: float | None = Field(None, ge=0, le=1, allow_inf_nan=False, description="vLLM's extension")
    n: int = Field(1, ge=1)
    seed: int | None = Field(None, ge=0, le=2**63 - 1)
    stop: str | list[str] | None = Field(None, description=f"up to {MAX_STOPS} strings that end a completion")
    logprobs: int | None = Field(None, ge=0, le=5, description="log-probs of the chosen and the k most likely tokens")
    echo: bool = False
    stream: bool = False
    stream_options: StreamOptions | None = None


class TokenizeRequest(_Open):
    model: str | None = Field(None, min_length=1, max_length=64)
    prompt: str
    add_special_tokens: bool = Field(True, description="prepend the model's start token (as a BOS token)")
    return_token_strs: bool = False


class DetokenizeRequest(_Open):
    model: str | None = Field(None, min_length=1, max_length=64)
    tokens: list[int]


class OpenAIErrorDetail(BaseModel):
    message: str
    type: str = Field(description="invalid_request_error, authentication_error, rate_limit_error or server_error")
    param: str | None = Field(None, description="the request parameter to blame, if one is")
    code: str | None = Field(None, description="arserve's error code (as in the native API)")


class OpenAIErrorResponse(BaseModel):
    """Every error of the OpenAI-compatible routes, in OpenAI's shape."""

    error: OpenAIErrorDetail


OPENAI_ERROR_RESPONSES: dict[int | str, dict] = {
    "4XX": {"model": OpenAIErrorResponse, "description": "an invalid value (400), no key (401), unknown model "
                                                         "(404), busy (429)"},
    503: {"model": OpenAIErrorResponse, "description": "not ready, busy or shutting down (Retry-After)"},
}
