"""The real datasets, read from ../shared/data (override with ARSERVE_DATA_DIR); never copied into the repo.

- binarized MNIST (Larochelle & Murray 2011 fixed binarization): 50k train / 10k valid / 10k test, 784 bits;
- Tiny Shakespeare (Karpathy's char-rnn): first 90% train, last 10% validation, 65 characters;
- Free Spoken Digit Dataset at 8 kHz: the dataset's own split (takes 0-4 are test); takes 5-9 of the
  training speakers/digits are held out as our validation split; 8-bit mu-law tokens (mu = 255);
- scikit-learn's 8x8 digits (ships inside the scikit-learn wheel), dequantized to continuous values in
  [0, 1) for RNADE: x = (v + u) / 17 with u ~ U[0, 1), a fixed seeded 1197 / 300 / 300 split.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from functools import cache
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parent.parent
MU = 255
SAMPLE_RATE = 8000


class DataUnavailable(FileNotFoundError):
    pass


def data_dir() -> Path:
    return Path(os.environ.get("ARSERVE_DATA_DIR", REPO.parent / "shared" / "data"))


def _path(rel: str) -> Path:
    p = data_dir() / rel
    if not p.is_file():
        raise DataUnavailable(f"{p} not found: set ARSERVE_DATA_DIR to the folder holding the datasets")
    return p


@dataclass(frozen=True)
class Splits:
    train: np.ndarray
    valid: np.ndarray
    test: np.ndarray | None


@cache
def mnist() -> Splits:
    """uint8 {0,1} arrays [N, 784], raster order."""
    m = np.load(_path("mnist/binarized_mnist.npz"))
    return Splits(m["train"], m["valid"], m["test"])


@cache
def shakespeare() -> tuple[str, Splits]:
    """(the 65 characters in token order, uint8 token arrays: train = first 90%, valid = last 10%)."""
    text = _path("text/tinyshakespeare.txt").read_text(encoding="utf-8")
    chars = "".join(sorted(set(text)))
    lut = {c: i for i, c in enumerate(chars)}
    ids = np.array([lut[c] for c in text], dtype=np.uint8)
    n = int(0.9 * len(ids))
    return chars, Splits(ids[:n], ids[n:], None)


def mu_law_encode(audio: np.ndarray, mu: int = MU) -> np.ndarray:
    """int16 PCM -> uint8 tokens in [0, mu]."""
    x = np.clip(audio.astype(np.float64) / 32768.0, -1.0, 1.0)
    y = np.sign(x) * np.log1p(mu * np.abs(x)) / np.log1p(mu)
    return np.floor((y + 1) / 2 * mu + 0.5).astype(np.uint8)


def mu_law_decode(tokens: np.ndarray, mu: int = MU) -> np.ndarray:
    """uint8 tokens -> float waveform in [-1, 1]."""
    y = 2 * (tokens.astype(np.float64) / mu) - 1
    return np.sign(y) * ((1 + mu) ** np.abs(y) - 1) / mu


@cache
def fsdd() -> Splits:
    """Lists of mu-law token clips (uint8 arrays) per split, plus labels via fsdd_labels()."""
    a = np.load(_path("audio/fsdd_8k.npz"))
    tokens = mu_law_encode(a["audio"])
    off, take = a["offsets"], a["index"]
    clips = [tokens[off[i] : off[i + 1]] for i in range(len(off) - 1)]
    pick = lambda mask: [c for c, m in zip(clips, mask, strict=True) if m]  # noqa: E731
    return Splits(np.array(pick(take >= 10), dtype=object), np.array(pick((take >= 5) & (take < 10)), dtype=object),
                  np.array(pick(take < 5), dtype=object))


@cache
def digits() -> Splits:
    """float32 [N, 64] dequantized 8x8 digits in [0, 1)."""
    from sklearn.datasets import load_digits

    v = load_digits().data.astype(np.float64)  # (1797, 64) values 0..16
    rng = np.random.default_rng(0)
    x = ((v + rng.random(v.shape)) / 17.0).astype(np.float32)
    order = rng.permutation(len(x))
    return Splits(x[order[600:]], x[order[300:600]], x[order[:300]])
