"""Sampling: one pure function of (parameters, rng, temperature, top_k, top_p, min_p), in numpy.

Filters apply in this order: temperature scales the logits, then top_k keeps the k most likely tokens, then
top_p keeps the smallest set reaching that mass (of what top_k left), then min_p drops every token less likely
than min_p times the most likely one. Each filter only zeroes probabilities; the draw renormalizes.

Shared by the service, the exporter's parity check and the model tests, so that the same seed gives the
same tokens everywhere. Every draw takes exactly one uniform per row (two for mixtures), so a sample
depends only on the seed and the parameters, never on how the work was batched or chunked.
"""

from __future__ import annotations

import math
from itertools import accumulate

import numpy as np

# Up to this many tokens, an unfiltered draw is done on Python floats: each numpy call costs ~1 µs, more than
# the arithmetic on a few values (a binary pixel's draw: ~9.6 -> ~3.9 µs). The same IEEE operations in the same
# order as `sample_rows`, so the same tokens (tests/test_sampling.py).
SMALL_VOCAB = 16


def sample_categorical(
    logits: np.ndarray, rng: np.random.Generator, temperature: float = 1.0, top_k: int = 0, top_p: float = 1.0,
    min_p: float = 0.0,
) -> np.ndarray:
    """logits [B, V] -> tokens [B] (int64), all rows from one Generator (one uniform per row, in row order)."""
    logits = np.asarray(logits, dtype=np.float64)
    return sample_rows(logits, rng.random(logits.shape[0]), temperature, top_k, top_p, min_p)


def sample_rows(logits: np.ndarray, u: np.ndarray, temperature: float = 1.0, top_k: int = 0, top_p: float = 1.0,
                min_p: float = 0.0) -> np.ndarray:
    """logits [B, V] and one uniform per row [B] -> tokens [B] (int64): `sample_row`'s draw for many rows at
    once (rows that share their settings; each row's uniform may come from its own Generator). The same
    arithmetic row by row, so the same tokens (tests/test_sampling.py holds the two to it)."""
    z = np.asarray(logits, dtype=np.float64)
    if temperature == 0 or top_k == 1:
        return z.argmax(axis=-1).astype(np.int64)
    if temperature != 1:
        z = z / temperature
    p = np.exp(z - z.max(axis=-1, keepdims=True))  # (B, V) unnormalized probabilities
    V = p.shape[1]
    if 1 < top_k < V:
        kth = -np.partition(-p, top_k - 1, axis=-1)[:, top_k - 1 : top_k]  # (B, 1) the k-th largest
        p = np.where(p >= kth, p, 0.0)
    if top_p < 1.0:
        desc = -np.sort(-p, axis=-1)  # (B, V) most likely first
        mass = desc / desc.sum(axis=-1, keepdims=True)
        kept = ((np.cumsum(mass, axis=-1) - mass) < top_p).sum(axis=-1)  # smallest set reaching top_p (>= 1)
        p = np.where(p >= np.take_along_axis(desc, kept[:, None] - 1, axis=-1), p, 0.0)
    p = min_p_filter(p, min_p)
    cdf = np.cumsum(p, axis=-1)
    idx = (cdf < (u * cdf[:, -1])[:, None]).sum(axis=-1)
    return np.minimum(idx, V - 1).astype(np.int64)


def sample_row(logits: np.ndarray, rng: np.random.Generator, temperature: float = 1.0, top_k: int = 0,
               top_p: float = 1.0, min_p: float = 0.0) -> int:
    """logits [V] -> one token. temperature 0 is greedy; top_k 0, top_p 1 and min_p 0 are off.

    The draw is the inverse CDF of one uniform, in vocabulary order; top-k and top-p only zero out tokens
    (ties at a threshold are kept), so no sort is needed unless a filter asks for one. This runs once per
    generated token, so it is written for a single row: a handful of numpy calls on a [V] vector.
    """
    u = rng.random()  # drawn even when greedy, so that the stream of draws never shifts
    return draw_row(logits, u, temperature, top_k, top_p, min_p)


def draw_row(logits: np.ndarray, u: float, temperature: float = 1.0, top_k: int = 0, top_p: float = 1.0,
             min_p: float = 0.0) -> int:
    """`sample_row` with its uniform given (the engine draws each row's uniforms ahead, in blocks)."""
    z = np.asarray(logits, dtype=np.float64)
    if temperature == 0 or top_k == 1:
        return int(z.argmax())
    if z.shape[0] <= SMALL_VOCAB and top_k == 0 and top_p >= 1.0 and min_p == 0:
        return _draw_small(z.tolist(), u, temperature)
    if temperature != 1:
        z = z / temperature
    p = np.exp(z - z.max())  # (V,) unnormalized probabilities
    V = p.shape[0]
    if 1 < top_k < V:
        kth = -np.partition(-p, top_k - 1)[top_k - 1]  # the k-th largest
        p = np.where(p >= kth, p, 0.0)
    if top_p < 1.0:
        desc = -np.sort(-p)  # most likely first
        mass = desc / desc.sum()
        kept = int(((np.cumsum(mass) - mass) < top_p).sum())  # smallest set reaching top_p (>= 1)
        p = np.where(p >= desc[kept - 1], p, 0.0)
    p = min_p_filter(p, min_p)
    cdf = np.cumsum(p)
    return min(int(cdf.searchsorted(u * cdf[-1])), V - 1)  # = the number of cdf entries below u * total


def min_p_filter(p: np.ndarray, min_p: float) -> np.ndarray:
    """Unnormalized probabilities [..., V] -> the same with every token below min_p x the row's largest zeroed
    (min-p sampling, Nguyen et al. 2024: the cut follows the model's confidence). min_p 0 is off."""
    if min_p <= 0:
        return p
    return np.where(p >= min_p * p.max(axis=-1, keepdims=True), p, 0.0)


def top_logprobs(logits: np.ndarray, k: int) -> tuple[list[int], list[float]]:
    """The k most likely tokens of one row [V] and their log-probs under the untempered model, most likely
    first (ties: the lower token first)."""
    lp = log_softmax(logits)
    top = np.argsort(-lp, kind="stable")[:k]
    return top.tolist(), lp[top].tolist()


def _draw_small(z: list[float], u: float, temperature: float) -> int:
    """`sample_row` without filters, on a short list of Python floats."""
    if temperature != 1:
        z = [v / temperature for v in z]
    m = max(z)
    cdf = list(accumulate(math.exp(v - m) for v in z))  # left to right, as np.cumsum adds
    target = u * cdf[-1]
    return min(sum(c < target for c in cdf), len(z) - 1)


def sample_mixture(params: np.ndarray, rng: np.random.Generator, temperature: float = 1.0) -> np.ndarray:
    """Gaussian-mixture parameters [B, 3K] (logits, means, log stds) -> values [B] (float32).

    temperature scales the standard deviations; 0 returns the mean of the most likely component. Takes B
    uniforms (the components), then B normals from rng.
    """
    u = rng.random(np.shape(params)[0])
    return mixture_values(params, u, rng.standard_normal(len(u)), temperature)


def mixture_values(params: np.ndarray, u: np.ndarray, noise: np.ndarray, temperature: float = 1.0) -> np.ndarray:
    """`sample_mixture` with its uniforms [B] and normals [B] given (the engine draws them ahead)."""
    params = np.asarray(params, dtype=np.float64)
    logit_w, mu, log_sigma = np.split(params, 3, axis=-1)
    comp = sample_rows(logit_w, u, 1.0 if temperature > 0 else 0.0)
    rows = np.arange(params.shape[0])
    value = mu[rows, comp] + temperature * np.exp(log_sigma[rows, comp]) * noise
    return value.astype(np.float32)


def bernoulli_bounds(u: np.ndarray, temperature: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Uniforms u [N] and temperatures [N] (0 = greedy) -> float32 bounds (lo, hi) [N] on a Bernoulli logit l
    (logits [0, l]) such that l >= hi surely draws 1 and l <= lo surely draws 0 in `draw_row` / `sample_rows`.

    In exact arithmetic the draw is 1 iff l / T > tau = log((1 - u) / u). numpy's float64 rounding (and an exp
    that may differ in its last bit) moves the decision by at most ~1e-15 / min(u, 1 - u) around tau; the
    bounds leave a margin a thousand times that, rounded outwards to float32, and the multi-token graph hands a
    logit between them back to the one-token path (models/multistep.py)."""
    u = np.asarray(u, dtype=np.float64)
    t = np.broadcast_to(np.asarray(temperature, dtype=np.float64), u.shape)
    with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
        tau = np.log((1 - u) / u)  # +inf at u = 0 (never 1)
        slack = 1e-12 / np.minimum(u, 1 - u) + 1e-12 * np.abs(tau)
        center = t * tau
        width = t * slack + 1e-12 * np.abs(center)
        lo, hi = _round32(center - width, -np.inf), _round32(center + width, np.inf)
    never = u == 0  # the draw is "u x total > p(0)": never true
    lo, hi = np.where(never, np.float32(np.inf), lo), np.where(never, np.float32(np.inf), hi)
    greedy = t == 0  # argmax of [0, l]: 1 iff l > 0
    lo = np.where(greedy, np.float32(0), lo)
    hi = np.where(greedy, np.nextafter(np.float32(0), np.float32(1)), hi)
    return lo.astype(np.float32), hi.astype(np.float32)


def _round32(x: np.ndarray, direction: float) -> np.ndarray:
    """float64 -> the nearest float32 on the side of direction (so that a bound only widens)."""
    y = x.astype(np.float32)
    wrong = y < x if direction > 0 else y > x
    return np.where(wrong, np.nextafter(y, np.float32(direction)), y)


def token_log_softmax(logits: np.ndarray, token: int) -> float:
    """log softmax(logits [V])[token], for one row: the per-token log-prob reported with every draw."""
    z = np.asarray(logits, dtype=np.float64)
    m = z.max()
    return float(z[token] - m - np.log(np.exp(z - m).sum()))


def log_softmax(logits: np.ndarray) -> np.ndarray:
    z = np.asarray(logits, dtype=np.float64)
    z = z - z.max(axis=-1, keepdims=True)
    return z - np.log(np.exp(z).sum(axis=-1, keepdims=True))


def mixture_log_density(params: np.ndarray, x: np.ndarray) -> np.ndarray:
    """log density of x [B] under the mixtures [B, 3K]."""
    params = np.asarray(params, dtype=np.float64)
    logit_w, mu, log_sigma = np.split(params, 3, axis=-1)
    z = (np.asarray(x, dtype=np.float64)[:, None] - mu) * np.exp(-log_sigma)
    comp = log_softmax(logit_w) - 0.5 * z * z - log_sigma - 0.5 * np.log(2 * np.pi)
    m = comp.max(axis=-1, keepdims=True)
    return (m + np.log(np.exp(comp - m).sum(axis=-1, keepdims=True)))[:, 0]
