"""The invariants every family must hold (DESIGN.md), checked on tiny random-weight models.

Written once against the contract in models/base.py; a family passes by obeying it.
"""

from __future__ import annotations

import itertools

import numpy as np
import pytest
import torch

import models
from models.base import ARModel
from models.generate import generate_cached, generate_naive

EXPECTED = {"fvsbn", "nade", "made", "rnade", "lstm", "gru", "pixelcnn", "wavenet", "transformer", "pixelrnn",
            "attnrnn", "finite"}
CASES = [
    (family, i)
    for family in sorted(models.REGISTRY)
    for i in range(len(models.REGISTRY[family].tiny_configs()))
]
IDS = [f"{f}-{i}" for f, i in CASES]


def random_x(model: ARModel, batch: int, length: int | None = None, seed: int = 1) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    T = length or model.length
    if model.token_dtype == torch.long:
        return torch.randint(0, model.vocab_size, (batch, T), generator=g)
    return torch.randn(batch, T, generator=g)


def test_registry_is_complete():
    assert set(models.REGISTRY) == EXPECTED


def test_every_family_cites_its_paper():
    for cls in models.REGISTRY.values():
        doc = (cls.__module__ and __import__(cls.__module__, fromlist=["x"]).__doc__) or ""
        assert any(str(y) in doc for y in range(1985, 2026)), f"{cls.family}: docstring cites no paper"


@pytest.mark.parametrize("family,index", CASES, ids=IDS)
def test_causality_parallel(family, index):
    model = models.tiny(family, index)
    x = random_x(model, 2)
    with torch.no_grad():
        base_lp = model.log_prob(x)
        base_params = model.conditionals(x)
        for j in range(x.shape[1]):
            x2 = x.clone()
            if model.token_dtype == torch.long:
                x2[:, j] = (x2[:, j] + 1) % model.vocab_size
            else:
                x2[:, j] += 1.7
            lp2 = model.log_prob(x2)
            # positions before j never see x_j ...
            torch.testing.assert_close(lp2[:, :j], base_lp[:, :j], atol=1e-5, rtol=0)
            # ... and the conditional at j does not depend on x_j itself
            torch.testing.assert_close(model.conditionals(x2)[:, j], base_params[:, j], atol=1e-5, rtol=0)


@pytest.mark.parametrize("family,index", CASES, ids=IDS)
def test_conditionals_are_normalized(family, index):
    model = models.tiny(family, index)
    if model.token_dtype != torch.long:
        pytest.skip("continuous: covered by test_rnade_density_integrates_to_one")
    x = random_x(model, 1)
    V = model.vocab_size
    with torch.no_grad():
        for j in range(0, x.shape[1], max(1, x.shape[1] // 4)):
            xs = x.repeat(V, 1)
            xs[:, j] = torch.arange(V)  # every value of x_j under the same prefix
            total = torch.logsumexp(model.log_prob(xs)[:, j].double(), dim=0)
            assert abs(total.item()) < 1e-5, f"position {j}: sum_v p(x_j = v | x_<j) = {total.exp().item()}"


@pytest.mark.parametrize("family,index", CASES, ids=IDS)
def test_step_equals_parallel(family, index):
    model = models.tiny(family, index)
    x = random_x(model, 3)
    with torch.no_grad():
        expected = model.log_prob(x)
        state = model.init_state(3)
        got = []
        for t in range(x.shape[1]):
            prev = x[:, t - 1] if t > 0 else torch.zeros_like(x[:, 0])
            params, state = model.step(prev, torch.full((3,), t), state)
            got.append(models.base.params_log_prob(model.dist, params.unsqueeze(1), x[:, t : t + 1])[:, 0])
    torch.testing.assert_close(torch.stack(got, 1), expected, atol=1e-4, rtol=1e-4)


@pytest.mark.parametrize("family", sorted(models.REGISTRY))
def test_step_ignores_x_prev_at_position_0(family):
    # The contract leaves x_prev undefined at position 0: any value, even one outside the vocabulary, must give
    # the same first conditional and the same state (the steps are written for short graphs, not for guards).
    model = models.tiny(family)
    garbage = [0, model.vocab_size - 1, -7, 10**6] if model.token_dtype == torch.long else [0.0, -7.5, 1e6]
    with torch.no_grad():
        outs = [model.step(torch.full((2,), v, dtype=model.token_dtype), torch.zeros(2, dtype=torch.long),
                           model.init_state(2)) for v in garbage]
    for params, state in outs[1:]:
        torch.testing.assert_close(params, outs[0][0], atol=0, rtol=0)
        for a, b in zip(state, outs[0][1], strict=True):
            torch.testing.assert_close(a, b, atol=0, rtol=0)


@pytest.mark.parametrize("family,index", CASES, ids=IDS)
def test_rows_at_their_own_positions(family, index):
    """A state of a row that started earlier joins a fresh row's; both continue at their own positions."""
    model = models.tiny(family, index)
    T = model.length
    lag = max(1, T // 3)
    x = random_x(model, 2)
    with torch.no_grad():
        expected = model.log_prob(x)
        s_a = model.init_state(1)
        got_a = []
        for t in range(lag):  # row 0 runs alone for `lag` steps
            prev = x[:1, t - 1] if t > 0 else torch.zeros_like(x[:1, 0])
            params, s_a = model.step(prev, torch.tensor([t]), s_a)
            got_a.append(models.base.params_log_prob(model.dist, params[:, None], x[:1, t : t + 1])[0, 0])
        state = tuple(torch.cat([a, b]) for a, b in zip(s_a, model.init_state(1), strict=True))
        got_b = []
        for t in range(T - lag):  # then row 0 at t + lag, row 1 at t
            pos = torch.tensor([t + lag, t])
            prev = torch.stack([x[0, t + lag - 1], x[1, t - 1] if t > 0 else x[1, 0] * 0])
            params, state = model.step(prev, pos, state)
            tokens = torch.stack([x[0, t + lag], x[1, t]])[:, None]
            lp = models.base.params_log_prob(model.dist, params[:, None], tokens)[:, 0]
            got_a.append(lp[0])
            got_b.append(lp[1])
    torch.testing.assert_close(torch.stack(got_a), expected[0], atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(torch.stack(got_b), expected[1, : T - lag], atol=1e-4, rtol=1e-4)


def _all_sequences(model: ARModel) -> torch.Tensor | None:
    T = model.length if not model.variable_length else min(model.length, 3)
    if model.vocab_size**T > 70_000:
        T = 2 if model.variable_length else None
    if T is None:
        return None
    return torch.tensor(list(itertools.product(range(model.vocab_size), repeat=T)))


@pytest.mark.parametrize("family", sorted(models.REGISTRY))
def test_tiny_model_sums_to_one(family):
    model = models.tiny(family)
    if model.token_dtype != torch.long:
        pytest.skip("continuous: see test_rnade_density_integrates_to_one")
    xs = _all_sequences(model)
    assert xs is not None, f"{family}: the tiny model is too large to enumerate"
    with torch.no_grad():
        total = torch.logsumexp(model.log_prob(xs).double().sum(1), dim=0)
    assert abs(total.exp().item() - 1) < 1e-5


def test_rnade_density_integrates_to_one():
    if "rnade" not in models.REGISTRY:
        pytest.fail("rnade is not in the registry")
    model = models.tiny("rnade", index=1)  # the 2-D tiny config
    assert model.length == 2
    grid = torch.linspace(-12, 12, 601)
    xs = torch.cartesian_prod(grid, grid)
    with torch.no_grad():
        density = model.log_prob(xs).sum(1).exp().double()
    cell = (grid[1] - grid[0]).item() ** 2
    assert abs(density.sum().item() * cell - 1) < 2e-3


@pytest.mark.parametrize("family", sorted(models.REGISTRY))
@pytest.mark.parametrize("temperature,top_k,top_p", [(1.0, 0, 1.0), (0.8, 3, 1.0), (1.3, 0, 0.7), (0.0, 0, 1.0)])
def test_cached_equals_naive(family, temperature, top_k, top_p):
    model = models.tiny(family)
    steps = model.length
    cached = generate_cached(model, 3, steps, seed=7, temperature=temperature, top_k=top_k, top_p=top_p)
    naive = generate_naive(model, 3, steps, seed=7, temperature=temperature, top_k=top_k, top_p=top_p)
    if model.token_dtype == torch.long:
        assert torch.equal(cached, naive)
    else:
        torch.testing.assert_close(cached, naive, atol=1e-4, rtol=1e-4)


@pytest.mark.parametrize("family", sorted(models.REGISTRY))
def test_misuse_fails_loudly(family):
    model = models.tiny(family)
    too_long = random_x(model, 1, model.length + 1)
    with pytest.raises(ValueError, match="exceeds the model's length"):
        model.log_prob(too_long)
    if model.token_dtype == torch.long:
        x = random_x(model, 2)
        x[1, 2] = model.vocab_size
        with pytest.raises(ValueError, match="outside the vocabulary"):
            model.log_prob(x)
    state = model.init_state(3)
    prev = torch.zeros(2, dtype=model.token_dtype)
    with pytest.raises(ValueError, match="another batch size"):
        model.step(prev, torch.zeros(2, dtype=torch.long), state)
    with pytest.raises(ValueError, match="pos must lie"):
        model.step(torch.zeros(3, dtype=model.token_dtype), torch.full((3,), model.length), state)


def test_sampler_is_deterministic_and_respects_filters():
    from app.engine.sampling import sample_categorical

    logits = np.log(np.array([[0.5, 0.3, 0.15, 0.05]] * 2000))
    a = sample_categorical(logits, np.random.default_rng(3), 1.0, 0, 1.0)
    b = sample_categorical(logits, np.random.default_rng(3), 1.0, 0, 1.0)
    assert np.array_equal(a, b)
    assert np.allclose(np.bincount(a, minlength=4) / len(a), [0.5, 0.3, 0.15, 0.05], atol=0.04)
    assert set(sample_categorical(logits, np.random.default_rng(0), 1.0, 2, 1.0)) == {0, 1}
    assert set(sample_categorical(logits, np.random.default_rng(0), 1.0, 0, 0.79)) == {0, 1}
    assert set(sample_categorical(logits, np.random.default_rng(0), 0.0, 0, 1.0)) == {0}
