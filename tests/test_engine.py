"""The engine's batching: how generations are grouped into batched `step` calls never changes a sample.

The worker keeps a Batch's state batched while its members stay the same and regroups (release, then a new
Batch) when a stream joins, finishes or pauses. Here the same regrouping is driven by hand on real exported
models (a KV cache, WaveNet's rings, an RNN state) and every sample must equal the one drawn alone.
"""

from __future__ import annotations

import numpy as np
import pytest

from app.engine.generation import Batch, Generation, SampleSpec
from app.runtime.backends import load
from app.runtime.manifest import load_manifest


def make(backend, m, seed: int, max_new: int, prefix: list[int]) -> Generation:
    spec = SampleSpec(max_new=max_new, prefix=np.array(prefix, dtype=m.token_dtype), seed=seed, temperature=0.9,
                      top_k=3)
    return Generation(spec, backend.init_state(1), False, m.token_dtype)


def alone(backend, m, seed, max_new, prefix) -> tuple[list, list]:
    g = make(backend, m, seed, max_new, prefix)
    batch = Batch([g])
    while not g.done:
        batch.step(backend)
    return g.tokens, g.logprobs


@pytest.mark.parametrize("name", ["tiny-transformer", "tiny-wavenet", "tiny-lstm"])
def test_regrouped_batches_draw_what_each_draws_alone(artifacts, name):
    m = load_manifest(artifacts / name)
    backend = load("onnx", artifacts / name, m, 1)
    n = min(m.length, 10)
    plans = [(1, n - 2, [1]), (2, n - 1, []), (3, n - 5, [0, 1, 1]), (4, 3, [])]  # (seed, max_new, prefix)
    gens = [make(backend, m, *p) for p in plans]
    turn, batch, members = 0, None, None
    while not all(g.done for g in gens):
        # Who runs this turn: the unfinished ones, with generation 1 paused on every third turn and generation 3
        # joining late, so that the grouping changes often (as streams join, pause and finish in the worker).
        runnable = [g for i, g in enumerate(gens) if not g.done and not (i == 1 and turn % 3 == 2)
                    and not (i == 3 and turn < 4)]
        if runnable != members:
            if batch is not None:
                batch.release()
            batch, members = (Batch(runnable) if runnable else None), runnable
        if batch is not None:
            batch.step(backend)
        turn += 1
    for g, plan in zip(gens, plans, strict=True):
        tokens, logprobs = alone(backend, m, *plan)
        assert g.tokens == tokens
        np.testing.assert_allclose(g.logprobs, logprobs, rtol=0, atol=1e-5)
