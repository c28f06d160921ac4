"""The one place where user data meets tokens: chars, pixels, mu-law audio and vectors, both ways.

Parsing checks everything the model would choke on (type, length, vocabulary, finiteness) and raises an
InvalidInput error (a 422) that names the field and the position, so the backends only ever see well-formed arrays.
"""

from __future__ import annotations

import base64
import io
import wave
from typing import Any

import numpy as np
from PIL import Image

from app.engine.errors import invalid, quote
from app.runtime.manifest import Manifest

# ----- parsing: JSON -> token arrays ---------------------------------------------------------------------


def parse_x(x: Any, m: Manifest, field: str) -> np.ndarray:
    """One input of POST /logprob -> [T] tokens (int64, or float32 for continuous models)."""
    if isinstance(x, str):
        if m.modality != "text":
            raise invalid(field, f"a string is only accepted by text models; {m.name} takes a list of tokens")
        tokens = encode_text(x, m, field)
    elif isinstance(x, list):
        tokens = to_tokens(_flatten_image(x, m, field), m, field)
    else:
        kind = "a list of tokens or a string" if m.modality == "text" else "a list of tokens"
        raise invalid(field, f"expected {kind}, got {type(x).__name__}")
    T = len(tokens)
    if T == 0:
        raise invalid(field, "empty input; send at least one token")
    if not m.variable_length and T != m.length:
        raise invalid(field, f"{m.family} model {m.name} needs exactly {m.length} values {_shape(m)}, got {T}")
    if T > m.length:
        raise invalid(field, f"{T} tokens exceed the model's length {m.length}")
    return tokens


def parse_prefix(prefix: str | list | None, prompt: str | None, m: Manifest) -> np.ndarray:
    """GET ?prefix=1,0,1 (or a JSON list) or ?prompt=text -> the [k] tokens that condition a sample."""
    if prefix is not None and prompt is not None:
        raise invalid("prompt", "give either prefix (tokens) or prompt (text), not both")
    if prompt is not None:
        if m.modality != "text":
            raise invalid("prompt", f"only text models take a prompt; {m.name} takes prefix (tokens)")
        tokens = encode_text(prompt, m, "prompt")
    elif isinstance(prefix, str):
        items = [s.strip() for s in prefix.split(",")] if prefix.strip() else []
        tokens = to_tokens([_number(s, f"prefix[{i}]") for i, s in enumerate(items)], m, "prefix")
    else:
        tokens = to_tokens(prefix or [], m, "prefix")
    field = "prompt" if prompt is not None else "prefix"
    if len(tokens) >= m.length:
        raise invalid(field, f"{len(tokens)} tokens leave nothing to generate (model length {m.length})")
    return tokens


def to_tokens(values: list, m: Manifest, field: str) -> np.ndarray:
    """A flat list of JSON numbers -> tokens, naming the first bad position."""
    try:
        arr = np.asarray(values) if values else np.zeros(0)
    except (ValueError, TypeError, OverflowError):  # ragged nesting
        arr = None
    if arr is None or arr.ndim != 1 or arr.dtype.kind not in "biuf":  # JSON true/false read as 1/0, as pydantic does
        _first_non_number(values, field)
    if m.token_dtype == "float32":
        with np.errstate(over="ignore"):  # values beyond float32 become inf, refused just below
            out = arr.astype(np.float32)
        bad = ~np.isfinite(out)
        if bad.any():
            i = int(bad.argmax())
            raise invalid(f"{field}[{i}]", f"value {quote(values[i])} is not a finite float32")
        return out
    if arr.dtype.kind == "f":
        frac = ~np.isfinite(arr) | (arr != np.round(arr))
        if frac.any():
            i = int(frac.argmax())
            raise invalid(f"{field}[{i}]", f"token {quote(values[i])} is not an integer")
    V = m.vocab_size
    bad = (arr < 0) | (arr >= V)
    if bad.any():
        i = int(bad.argmax())
        raise invalid(f"{field}[{i}]", f"token {quote(values[i])} is outside the vocabulary [0, {V})")
    return arr.astype(np.int64)


def _first_non_number(values: list, field: str) -> None:
    for i, v in enumerate(values):
        if not isinstance(v, int | float):
            raise invalid(f"{field}[{i}]", f"expected a number, got {quote(v)}")
        if isinstance(v, int) and abs(v) >= 2**63:
            raise invalid(f"{field}[{i}]", f"token {quote(v)} is out of range")
    raise invalid(field, "expected a flat list of numbers")


def _number(s: str, field: str) -> int | float:
    try:
        return int(s)
    except ValueError:
        try:
            return float(s)
        except ValueError:
            raise invalid(field, f"{quote(s)} is not a number") from None


def _flatten_image(x: list, m: Manifest, field: str) -> list:
    """Images may come as 2-D [height][width] lists; everything else (and flat images) passes through."""
    if not x or not isinstance(x[0], list):
        return x
    if m.modality != "binary_image" or len(m.shape) != 2:
        raise invalid(f"{field}[0]", f"expected a flat list of tokens for {m.modality} model {m.name}")
    h, w = m.shape
    if len(x) != h:
        raise invalid(field, f"a 2-D image needs {h} rows of {w} pixels, got {len(x)} rows")
    flat = []
    for r, row in enumerate(x):
        if not isinstance(row, list) or len(row) != w:
            got = f"{len(row)} values" if isinstance(row, list) else quote(row)
            raise invalid(f"{field}[{r}]", f"row {r} must hold {w} pixels, got {got}")
        flat.extend(row)
    return flat


def _shape(m: Manifest) -> str:
    return f"(shape {m.shape})" if len(m.shape) > 1 else ""


# ----- text -------------------------------------------------------------------------------------------


def encode_text(s: str, m: Manifest, field: str) -> np.ndarray:
    index = {c: i for i, c in enumerate(m.vocabulary.chars)}
    unknown = sorted(set(s) - index.keys())
    if unknown:
        i = min(s.index(c) for c in unknown)
        names = ", ".join(f"{c!r} (U+{ord(c):04X})" for c in unknown[:20]) + (" ..." if len(unknown) > 20 else "")
        raise invalid(field, f"unknown character {s[i]!r} (U+{ord(s[i]):04X}) at position {i}; characters outside "
                             f"the vocabulary: {names}; model {m.name} knows {m.vocabulary.chars!r}")
    return np.array([index[c] for c in s], dtype=np.int64)


def decode_text(tokens: list[int], m: Manifest) -> str:
    chars = m.vocabulary.chars
    return "".join(chars[t] for t in tokens)


# ----- images and audio: data URLs for the done event -------------------------------------------------


def png_data_url(tokens: np.ndarray, m: Manifest) -> str:
    h, w = (m.shape if len(m.shape) == 2 else (m.vocabulary.height, m.vocabulary.width))
    pixels = (np.asarray(tokens, dtype=np.uint8).reshape(h, w) * 255).astype(np.uint8)  # (H, W), 1 = white ink
    buf = io.BytesIO()
    Image.fromarray(pixels, mode="L").save(buf, format="PNG")
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode()


def mu_law_decode(tokens: np.ndarray, mu: int) -> np.ndarray:
    """Tokens in [0, mu] -> amplitudes in [-1, 1] (ITU G.711 mu-law expansion)."""
    y = 2.0 * np.asarray(tokens, dtype=np.float64) / mu - 1.0
    return np.sign(y) * ((1.0 + mu) ** np.abs(y) - 1.0) / mu


def wav_data_url(tokens: np.ndarray, m: Manifest) -> str:
    pcm = np.clip(np.round(mu_law_decode(tokens, m.vocabulary.mu) * 32767), -32768, 32767).astype("<i2")
    buf = io.BytesIO()
    with wave.open(buf, "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)  # 16-bit PCM
        w.setframerate(m.vocabulary.sample_rate)
        w.writeframes(pcm.tobytes())
    return "data:audio/wav;base64," + base64.b64encode(buf.getvalue()).decode()


# ----- tokens -> JSON ---------------------------------------------------------------------------------


def tokens_json(tokens: np.ndarray | list) -> list:
    """int64 tokens as ints, continuous values as floats (float32 round-trips through the double repr)."""
    return np.asarray(tokens).tolist()


def render(full: np.ndarray, generated: list, m: Manifest) -> dict[str, str]:
    """The modality-specific part of the done event: text of the continuation, or the whole x as a file."""
    if m.modality == "text":
        return {"text": decode_text(generated, m)}
    if m.modality == "binary_image" and len(full) == m.length:
        return {"png": png_data_url(full, m)}
    if m.modality == "audio":
        return {"wav": wav_data_url(full, m)}
    return {}


# ----- packed arrays: POST /logprob with an application/octet-stream body (docs/scoring.md) ---------------

ARRAY_DTYPES = {"uint8": "<u1", "int32": "<i4", "int64": "<i8", "float32": "<f4"}  # name -> little-endian


def check_array(rows: int, length: int, dtype: str, m: Manifest) -> int:
    """A packed array's declared shape and dtype against the model, before its bytes are read: their count."""
    if rows < 1 or length < 1:
        raise invalid("shape", f"({rows}, {length}): send at least one row of at least one token")
    if (m.token_dtype == "float32") != (dtype == "float32"):
        ints = "integer tokens: send uint8, int32 or int64"
        takes = "continuous values: send float32" if m.token_dtype == "float32" else ints
        raise invalid("dtype", f"{dtype} does not fit {m.name}, which takes {takes}")
    if not m.variable_length and length != m.length:
        raise invalid("shape", f"{m.family} model {m.name} needs rows of exactly {m.length} values {_shape(m)}, "
                               f"got {length}")
    if length > m.length:
        raise invalid("shape", f"rows of {length} tokens exceed the model's length {m.length}")
    return rows * length * np.dtype(ARRAY_DTYPES[dtype]).itemsize


def parse_array(body: bytes | bytearray, rows: int, length: int, dtype: str, m: Manifest) -> np.ndarray:
    """The bytes of a checked packed array -> [rows, length] tokens (int64, or float32), naming the first bad one."""
    arr = np.frombuffer(body, dtype=ARRAY_DTYPES[dtype]).reshape(rows, length)  # (B, T), read-only view
    if m.token_dtype == "float32":
        bad = ~np.isfinite(arr)
        if bad.any():
            r, t = np.unravel_index(int(bad.argmax()), bad.shape)
            raise invalid(f"inputs[{r}][{t}]", f"value {float(arr[r, t])} is not a finite float32")
        return arr.astype(np.float32)  # a writable copy
    bad = arr >= m.vocab_size
    if dtype != "uint8":
        bad |= arr < 0
    if bad.any():
        r, t = np.unravel_index(int(bad.argmax()), bad.shape)
        raise invalid(f"inputs[{r}][{t}]", f"token {int(arr[r, t])} is outside the vocabulary [0, {m.vocab_size})")
    return arr.astype(np.int64)
