"""The engine's batching: how generations share a Batch's slot buffers never changes a sample.

A Batch keeps its members' states in rows of buffers that grow with use; the worker moves the runnable members
to the front rows, steps them, and lets members join, pause and leave at any turn. Here the same moves are
driven by hand on real exported models of every family, through both backends, and every sample must be
what a plain single-row loop draws (backend.step on its own state, `sample_row`: the engine before slot
buffers): the same tokens, the same log-probs.
"""

from __future__ import annotations

import numpy as np
import pytest
from conftest import FAMILIES

from app.engine.generation import KEEP_IDLE_BYTES, Batch, Generation, SampleSpec
from app.engine.sampling import mixture_log_density, sample_mixture, sample_row, token_log_softmax, top_logprobs
from app.runtime.backends import load
from app.runtime.manifest import load_manifest


def make(m, seed: int, max_new: int, prefix: list, temperature: float = 0.9, top_k: int = 3, min_p: float = 0.0,
         top_logprobs: int = 0) -> Generation:
    mixture = m.distribution == "gaussian_mixture"
    spec = SampleSpec(max_new=max_new, prefix=np.array(prefix, dtype=m.token_dtype), seed=seed,
                      temperature=temperature, top_k=0 if mixture else top_k, min_p=min_p, top_logprobs=top_logprobs)
    return Generation(spec, mixture, m.token_dtype)


def single_row(backend, m, gen: Generation, top: list | None = None) -> tuple[list, list]:
    """The reference: one row, its own state, one backend.step and one draw per position (and the k most likely
    tokens of every position into `top`, if given)."""
    spec, rng = gen.spec, np.random.default_rng(gen.spec.seed)
    state, x = backend.init_state(1), np.zeros(1, dtype=m.token_dtype)
    tokens, logprobs = [], []
    for pos in range(gen.end):
        params, state = backend.step(x, np.array([pos]), state)
        params = np.asarray(params, dtype=np.float64)
        if top is not None:
            top.append(top_logprobs(params[0], spec.top_logprobs))
        if pos < len(spec.prefix):
            x = spec.prefix[pos : pos + 1]
            continue
        if gen.mixture:
            value = sample_mixture(params, rng, spec.temperature)
            token, lp = value[0].item(), float(mixture_log_density(params, value.astype(np.float64))[0])
        else:
            token = sample_row(params[0], rng, spec.temperature, spec.top_k, spec.top_p, spec.min_p)
            lp = token_log_softmax(params[0], token)
        tokens.append(token)
        logprobs.append(lp)
        x = np.array([token], dtype=m.token_dtype)
    return tokens, logprobs


def prefix_of(m, n: int) -> list:
    return [0.25 * i for i in range(n)] if m.token_dtype == "float32" else [i % m.vocab_size for i in range(n)]


@pytest.mark.parametrize("backend_name", ["onnx", "torchscript"])
@pytest.mark.parametrize("family", FAMILIES)
def test_members_joining_pausing_and_leaving_draw_what_each_draws_alone(artifacts, family, backend_name):
    m = load_manifest(artifacts / f"tiny-{family}")
    backend = load(backend_name, artifacts / f"tiny-{family}", m, 1)
    n = min(m.length, 10)
    gens = [make(m, 1, n - 2, prefix_of(m, 1)), make(m, 2, n - 1, []), make(m, 3, n - 5, prefix_of(m, 3), 0.0),
            make(m, 4, 3, [], 1.0, 0), make(m, 5, n - 1, prefix_of(m, 2))]
    joins = {0: [0, 1, 2], 2: [4], 4: [3]}  # turn -> members joining then: late joiners land in grown buffers
    batch, turn, finished = Batch(backend, max_rows=4), 0, []
    while len(finished) < 4:
        for i in joins.get(turn, []):
            batch.join(gens[i])
        if turn == 3:
            batch.leave(gens[4])  # a client that goes away mid-generation
        # Generation 1 pauses every third turn (a slow reader), so the runnable rows move every few turns.
        paused = gens[1] if turn % 3 == 2 else None
        k = batch.front(lambda g, paused=paused: g is not paused)
        done, _ = batch.step(k) if k else ([], 0)
        for g in done:
            batch.leave(g)
            finished.append(g)
        assert batch.capacity <= 4
        turn += 1
    # Once idle it holds nothing, or (KEEP_IDLE_BYTES) buffers small enough to keep for the next stream, which
    # must then draw what it draws alone: nothing of the rows' last states leaks into it.
    assert len(batch) == 0 and (batch.capacity == 0 and not batch.state or 0 < batch.state_bytes() <= KEEP_IDLE_BYTES)
    gens.append(make(m, 6, n - 3, prefix_of(m, 2)))
    batch.join(gens[-1])
    while len(batch):
        for g in batch.step(len(batch))[0]:
            batch.leave(g)
    for i, g in [*enumerate(gens[:4]), (5, gens[5])]:
        tokens, logprobs = single_row(backend, m, g)
        assert g.tokens == tokens, f"generation {i}"
        assert g.logprobs == pytest.approx(logprobs, abs=1e-6, rel=0), f"generation {i}"


@pytest.mark.parametrize("family", ["transformer", "lstm"])
def test_min_p_and_top_logprobs_rows_batched_or_alone(artifacts, family):
    """min_p is one more draw setting (rows group by it); rows with top_logprobs record their k most likely tokens
    at every position, prefix included (Generation.top[pos]), in a batch of several rows or a lone row."""
    m = load_manifest(artifacts / f"tiny-{family}")
    backend = load("onnx", artifacts / f"tiny-{family}", m, 1)
    n = min(m.length, 12)
    gens = [make(m, 11, n - 3, prefix_of(m, 3), 1.0, 0, min_p=0.3, top_logprobs=2),
            make(m, 12, n - 1, [], 0.8, 0, min_p=0.05),
            make(m, 13, n - 2, prefix_of(m, 2), 1.0, 0, top_logprobs=3)]
    batch = Batch(backend, max_rows=3)
    for g in gens:
        batch.join(g)
    while len(batch):  # the longest runs its last turns alone (Batch's single-row path)
        done, _ = batch.step(len(batch))
        for g in done:
            batch.leave(g)
    for i, g in enumerate(gens):
        top: list = []
        tokens, logprobs = single_row(backend, m, g, top if g.spec.top_logprobs else None)
        assert g.tokens == tokens and g.logprobs == pytest.approx(logprobs, abs=1e-6, rel=0), f"generation {i}"
        assert len(g.top) == (g.end if g.spec.top_logprobs else 0)
        for (ids, lps), (want_ids, want_lps) in zip(g.top, top, strict=True):
            assert ids == want_ids and lps == pytest.approx(want_lps, abs=1e-6, rel=0)


def test_an_emptied_batch_keeps_only_small_buffers(artifacts, monkeypatch):
    """Up to KEEP_IDLE_BYTES of state (and the runtime's binding over it) stay for the next stream; more is let go."""
    from app.engine import generation

    m = load_manifest(artifacts / "tiny-transformer")
    backend = load("onnx", artifacts / "tiny-transformer", m, 1)
    for keep, kept in ((1 << 30, True), (0, False)):
        monkeypatch.setattr(generation, "KEEP_IDLE_BYTES", keep)
        batch, gens = Batch(backend, max_rows=4), [make(m, i, 3, []) for i in range(3)]
        for g in gens:
            batch.join(g)
        while len(batch):
            for g in batch.step(len(batch))[0]:
                batch.leave(g)
        assert (batch.capacity == 4 and len(batch.state) == len(m.state)) == kept
        assert (backend.bound_step.binding is not None) == kept


def test_tokens_are_handed_over_once_in_order(artifacts):
    m = load_manifest(artifacts / "tiny-transformer")
    backend = load("onnx", artifacts / "tiny-transformer", m, 1)
    gen = make(m, 9, m.length - 2, [1, 2])
    batch = Batch(backend, max_rows=2)
    batch.join(gen)
    seen: list[tuple[int, list]] = []
    for turn in range(gen.end):
        batch.step(1)
        if turn % 3 == 1:
            seen += [(i, t) for _, i, t, _ in batch.take_new()]
    last = batch.leave(gen)
    seen.append((last[1], last[2]))
    assert batch.capacity == 1 and backend.bound_step.binding is not None  # small: kept for the next stream
    flat = [t for _, ts in seen for t in ts]
    assert seen[0][0] == 2 and flat == gen.tokens and len(flat) == m.length - 2
    assert [i for i, _ in seen] == list(np.cumsum([2] + [len(t) for _, t in seen[:-1]]))
