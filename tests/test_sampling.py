"""The sampler's two forms agree exactly: `sample_row` (one row, the engine's per-stream path) and
`sample_rows` (many rows at once, the engine's batched path), so batching never changes a token."""

from __future__ import annotations

import numpy as np
import pytest

from app.engine.sampling import (
    log_softmax,
    min_p_filter,
    sample_categorical,
    sample_row,
    sample_rows,
    token_log_softmax,
)


@pytest.mark.parametrize("temperature", [0.0, 0.5, 1.0, 1.7])
@pytest.mark.parametrize("top_k", [0, 1, 2, 5, 300])
@pytest.mark.parametrize("top_p", [1.0, 0.9, 0.3, 1e-6])
def test_row_and_rows_draw_the_same_tokens(temperature, top_k, top_p):
    g = np.random.default_rng(int(temperature * 10) + top_k * 100 + int(top_p * 1000))
    for V in (2, 3, 65, 256):
        logits = (g.standard_normal((40, V)) * g.choice([0.1, 1.0, 5.0], size=(40, 1))).astype(np.float32)
        logits[::5, 1] = logits[::5, 0]  # ties at a threshold
        seeds = g.integers(1 << 30, size=40)
        rows = [sample_row(logits[i], np.random.default_rng(s), temperature, top_k, top_p) for i, s in enumerate(seeds)]
        u = np.array([np.random.default_rng(s).random() for s in seeds])
        assert sample_rows(logits, u, temperature, top_k, top_p).tolist() == rows
        lp = log_softmax(logits)[np.arange(40), rows]
        np.testing.assert_allclose([token_log_softmax(logits[i], t) for i, t in enumerate(rows)], lp, atol=1e-12)


def test_one_uniform_per_row_and_the_same_stream_for_any_batching():
    logits = np.random.default_rng(0).standard_normal((6, 9))
    a, b = np.random.default_rng(7), np.random.default_rng(7)
    batched = sample_categorical(logits, a, 0.8, 4, 0.95)
    one_by_one = [sample_row(row, b, 0.8, 4, 0.95) for row in logits]
    assert batched.tolist() == one_by_one
    assert a.random() == b.random()  # both consumed exactly 6 uniforms, greedy or not
    sample_categorical(logits, a, 0.0)
    for row in logits:
        sample_row(row, b, 0.0)
    assert a.random() == b.random()


@pytest.mark.parametrize("temperature", [0.3, 1.0, 2.5])
def test_small_vocabulary_path_draws_what_numpy_draws(temperature):
    # sample_row draws from short unfiltered rows on Python floats; sample_rows always uses numpy.
    g = np.random.default_rng(11)
    for V in (2, 3, 16, 17):
        logits = (g.standard_normal((2000, V)) * g.choice([0.01, 1.0, 30.0], size=(2000, 1))).astype(np.float32)
        logits[::7, -1] = logits[::7, 0]  # ties
        logits[::11, 0] = -np.inf  # a token ruled out
        seeds = g.integers(1 << 30, size=2000)
        rows = [sample_row(logits[i], np.random.default_rng(s), temperature) for i, s in enumerate(seeds)]
        u = np.array([np.random.default_rng(s).random() for s in seeds])
        assert sample_rows(logits, u, temperature).tolist() == rows


@pytest.mark.parametrize("min_p", [0.0, 0.05, 0.5, 1.0])
@pytest.mark.parametrize(("top_k", "top_p"), [(0, 1.0), (5, 1.0), (0, 0.8)])
def test_min_p_row_and_rows_agree_and_keep_only_likely_tokens(min_p, top_k, top_p):
    g = np.random.default_rng(int(min_p * 100) + top_k)
    logits = g.standard_normal((300, 65)) * 3
    seeds = g.integers(1 << 30, size=300)
    rows = [sample_row(logits[i], np.random.default_rng(s), 1.0, top_k, top_p, min_p) for i, s in enumerate(seeds)]
    u = np.array([np.random.default_rng(s).random() for s in seeds])
    assert sample_rows(logits, u, 1.0, top_k, top_p, min_p).tolist() == rows
    p = np.exp(log_softmax(logits))
    chosen = p[np.arange(300), rows]
    assert (chosen >= min_p * p.max(axis=-1) - 1e-12).all()  # never a token under min_p x the most likely
    if min_p == 1.0:
        assert rows == logits.argmax(axis=-1).tolist()


def test_min_p_filter_is_relative_to_the_most_likely():
    p = np.array([[1.0, 0.5, 0.09, 0.1], [0.2, 0.2, 0.01, 0.0]])
    assert min_p_filter(p, 0.1).tolist() == [[1.0, 0.5, 0.0, 0.1], [0.2, 0.2, 0.0, 0.0]]
    assert min_p_filter(p, 0.0) is p
