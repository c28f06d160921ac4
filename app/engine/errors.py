"""The engine's own errors: what went wrong with a request, in the engine's words.

The engine knows nothing of HTTP; app/http/errors.py maps each kind to a status code and the JSON shape.
Messages start with the field (and position) to blame, so that the caller can fix the request.
"""

from __future__ import annotations

from collections.abc import Sequence


class EngineError(Exception):
    """A request the engine will not serve. `code` is stable for clients; `message` is for people."""

    def __init__(self, code: str, message: str, field: str | None = None, retry_after_s: int | None = None):
        super().__init__(message)
        self.code, self.message, self.field, self.retry_after_s = code, message, field, retry_after_s


class InvalidInput(EngineError):
    """The input does not fit the model (shape, vocabulary, range)."""


class LimitExceeded(EngineError):
    """Over a limit the operator configured (batch size, length, work budget)."""


class ModelNotFound(EngineError):
    """No served model has that name."""


class Busy(EngineError):
    """Try again later: too many streams right now."""


class Unavailable(EngineError):
    """The server cannot do it now: still loading, shutting down, a backend that failed, a timeout."""


def quote(value, limit: int = 40) -> str:
    """repr(value) cut to `limit` characters: an error message never echoes a big input back."""
    text = repr(value[: limit + 1] if isinstance(value, str | bytes) else value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def invalid(field: str, message: str) -> InvalidInput:
    return InvalidInput("invalid_input", f"{field}: {message}", field)


def too_large(field: str, message: str) -> LimitExceeded:
    return LimitExceeded("limit_exceeded", f"{field}: {message}", field)


def model_not_found(name: str, known: Sequence[str]) -> ModelNotFound:
    return ModelNotFound("model_not_found", f"model: no model named {name!r}; loaded: {sorted(known)}", "model")


def busy(message: str, retry_after_s: int, code: str = "too_many_streams") -> Busy:
    return Busy(code, message, retry_after_s=retry_after_s)


def unavailable(code: str, message: str, retry_after_s: int | None = None, field: str | None = None) -> Unavailable:
    return Unavailable(code, message, field, retry_after_s)
