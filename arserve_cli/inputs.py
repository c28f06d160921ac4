"""Files -> the JSON inputs POST /logprob takes, using what /models says about the model.

    .txt            text models: the file's characters; other models: numbers separated by spaces or commas
    .npy            one x (1-D, or the model's shape) or a batch (rows along the first axis)
    .png .jpg ...   binary-image models: grayscale, the model's height x width, a pixel >= 128 is 1 (ink)
    .wav            audio models: PCM at the model's sample rate, mono (channels averaged), mu-law encoded
"""

from __future__ import annotations

import re
import wave
from pathlib import Path
from typing import Any

import numpy as np

from arserve_cli.errors import BadInput

IMAGES = {".png", ".jpg", ".jpeg", ".bmp", ".gif", ".pgm", ".tif", ".tiff"}


def read(path: Path, model: dict, truncate: bool = False) -> list[tuple[str, Any]]:
    """(label, input) pairs from one file: one pair, or one per row of a batch in a .npy file."""
    if not path.is_file():
        raise BadInput(f"{path}: no such file")
    suffix = path.suffix.lower()
    if suffix == ".npy":
        items = _npy(path, model)
    elif suffix in IMAGES:
        items = [(str(path), _image(path, model))]
    elif suffix == ".wav":
        items = [(str(path), _wav(path, model))]
    else:
        items = [(str(path), _text(path, model))]
    if truncate:
        items = [(label, x[: model["length"]]) for label, x in items]
    return items


def _text(path: Path, model: dict) -> Any:
    try:
        content = path.read_text(encoding="utf-8")
    except UnicodeDecodeError:
        raise BadInput(f"{path}: not UTF-8 text (images, audio and arrays need a .png, .wav or .npy name)") from None
    if model["modality"] == "text":
        return content
    fields = [f for f in re.split(r"[\s,]+", content) if f]
    try:
        return [float(f) if model["token_dtype"] == "float32" else int(f) for f in fields]
    except ValueError as e:
        raise BadInput(f"{path}: {model['name']} takes numbers separated by spaces or commas ({e})") from None


def _npy(path: Path, model: dict) -> list[tuple[str, Any]]:
    try:
        a = np.load(path, allow_pickle=False)
    except (ValueError, OSError) as e:
        raise BadInput(f"{path}: not a readable .npy array ({e})") from None
    if a.dtype.kind not in "biuf":
        raise BadInput(f"{path}: holds {a.dtype} values, not numbers")
    if a.ndim <= 1 or list(a.shape) == list(model["shape"]):
        return [(str(path), a.reshape(-1).tolist())]
    return [(f"{path}[{i}]", row.reshape(-1).tolist()) for i, row in enumerate(a)]


def _image(path: Path, model: dict) -> list[int]:
    if model["modality"] != "binary_image":
        raise BadInput(f"{path}: an image, but {model['name']} is a {model['modality']} model")
    from PIL import Image, UnidentifiedImageError

    try:
        img = Image.open(path).convert("L")
    except (UnidentifiedImageError, OSError) as e:
        raise BadInput(f"{path}: not a readable image ({e})") from None
    h, w = model["vocabulary"]["height"], model["vocabulary"]["width"]
    if img.size != (w, h):
        raise BadInput(f"{path}: {img.size[0]}x{img.size[1]} pixels; {model['name']} takes {w}x{h} images "
                       f"(width x height)")
    return (np.asarray(img) >= 128).astype(int).reshape(-1).tolist()  # white ink on black, as samples are drawn


def _wav(path: Path, model: dict) -> list[int]:
    if model["modality"] != "audio":
        raise BadInput(f"{path}: audio, but {model['name']} is a {model['modality']} model")
    try:
        with wave.open(str(path), "rb") as f:
            rate, width, channels = f.getframerate(), f.getsampwidth(), f.getnchannels()
            frames = f.readframes(f.getnframes())
    except (wave.Error, EOFError, OSError) as e:
        raise BadInput(f"{path}: not a readable PCM WAV file ({e})") from None
    voc = model["vocabulary"]
    if rate != voc["sample_rate"]:
        raise BadInput(f"{path}: {rate} Hz; {model['name']} takes {voc['sample_rate']} Hz audio (resample it first)")
    kinds = {1: ("u1", 128.0, 128.0), 2: ("<i2", 0.0, 32768.0), 4: ("<i4", 0.0, 2.0**31)}
    if width not in kinds:
        raise BadInput(f"{path}: {8 * width}-bit samples; 8, 16 or 32-bit PCM is read")
    dtype, zero, scale = kinds[width]
    pcm = (np.frombuffer(frames, dtype=dtype).astype(np.float64) - zero) / scale
    x = np.clip(pcm.reshape(-1, channels).mean(axis=1), -1.0, 1.0)  # (N,) mono in [-1, 1]
    return mu_law_encode(x, voc["mu"]).tolist()


def mu_law_encode(x: np.ndarray, mu: int) -> np.ndarray:
    """Amplitudes in [-1, 1] -> tokens in [0, mu] (ITU G.711 mu-law; the rounding of models/data.py)."""
    y = np.sign(x) * np.log1p(mu * np.abs(x)) / np.log1p(mu)
    return np.floor((y + 1) / 2 * mu + 0.5).astype(np.int64)
