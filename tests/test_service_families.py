"""The service's promises, checked for every family through the in-process app (httpx ASGITransport).

- the log-probs streamed with a sample sum to what POST /logprob returns for it (prefix_len = the prefix);
- same model + seed + parameters => same sample, whatever `chunk` is and whatever else runs;
- top_k = 1 is greedy (temperature 0);
- ONNX Runtime, TorchScript and the eager model agree (1e-4).
"""

from __future__ import annotations

import asyncio
import math

import numpy as np
import pytest
import torch
from conftest import FAMILIES, prefix_params, sse_events

import models

pytestmark = pytest.mark.anyio


def _split(events: list[tuple[str, dict]]) -> tuple[list[dict], dict]:
    assert events[-1][0] == "done", events[-1]
    tokens = [d for e, d in events[:-1] if e == "token"]
    assert len(tokens) == len(events) - 1, "only token events come before done"
    return tokens, events[-1][1]


def _close(a, b, tol=1e-4):
    np.testing.assert_allclose(np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64), rtol=tol, atol=tol)


@pytest.mark.parametrize("family", FAMILIES)
async def test_streamed_logprobs_sum_to_post_logprob(client, family):
    name = f"tiny-{family}"
    params, prefix = prefix_params(family)
    events = await sse_events(client, model=name, seed=11, chunk=3, **params)
    token_events, done = _split(events)
    index = len(prefix)
    for ev in token_events:  # contiguous chunks of at most `chunk` tokens, indexed by position in x
        assert ev["index"] == index and 1 <= len(ev["tokens"]) <= 3 and len(ev["logprobs"]) == len(ev["tokens"])
        index += len(ev["tokens"])
    streamed = [t for ev in token_events for t in ev["tokens"]]
    streamed_lp = [lp for ev in token_events for lp in ev["logprobs"]]
    assert streamed == done["tokens"] and done["prefix_len"] == len(prefix)
    assert done["finish_reason"] == "complete"
    model = models.get_class(family)
    assert len(prefix) + len(streamed) == model.tiny_configs()[0].length  # runs to the model's length
    assert math.isclose(sum(streamed_lp), done["logprob"], rel_tol=1e-9)

    r = await client.post("/logprob", json={"model": name, "inputs": [prefix + streamed], "prefix_len": len(prefix),
                                            "per_position": True})
    assert r.status_code == 200, r.text
    result = r.json()["results"][0]
    assert result["num_positions"] == len(streamed)
    assert math.isclose(sum(streamed_lp), result["logprob"], rel_tol=1e-4)
    _close(streamed_lp, result["per_position"])


@pytest.mark.parametrize("family", FAMILIES)
async def test_same_seed_same_sample_whatever_the_chunk_and_the_load(client, family):
    name = f"tiny-{family}"
    params, _ = prefix_params(family)
    alone = _split(await sse_events(client, model=name, seed=5, chunk=1, **params))[1]["tokens"]
    # the same request with another chunk size, while other streams of the same model run beside it
    chunked, other, posted = await asyncio.gather(
        sse_events(client, model=name, seed=5, chunk=7, **params),
        sse_events(client, model=name, seed=6, chunk=2, **params),
        client.post("/sample", json={"model": name, "seed": 5, **params}),
    )
    assert _split(chunked)[1]["tokens"] == alone
    assert posted.status_code == 200 and posted.json()["tokens"] == alone
    assert _split(other)[1]["seed"] == 6


@pytest.mark.parametrize("family", [f for f in FAMILIES if models.get_class(f).dist != "gaussian_mixture"])
async def test_top_k_1_is_greedy(client, family):
    name = f"tiny-{family}"
    greedy = (await client.post("/sample", json={"model": name, "temperature": 0, "seed": 1})).json()
    top1 = (await client.post("/sample", json={"model": name, "top_k": 1, "seed": 2})).json()
    tiny_p = (await client.post("/sample", json={"model": name, "top_p": 1e-9, "seed": 3})).json()
    assert top1["tokens"] == greedy["tokens"] == tiny_p["tokens"]
    # greedy ignores the seed; its log-probs are still the model's own
    assert greedy["logprob"] < 0


def _inputs(model) -> list[list]:
    g = torch.Generator().manual_seed(3)
    L = model.length
    lengths = [L, max(1, L - 3)] if model.variable_length else [L, L]  # shorter rows: right-padded in a batch
    if model.token_dtype == torch.long:
        return [torch.randint(0, model.vocab_size, (n,), generator=g).tolist() for n in lengths]
    return [torch.randn(n, generator=g).tolist() for n in lengths]


@pytest.mark.parametrize("family", FAMILIES)
async def test_backends_and_eager_agree(client, family):
    name = f"tiny-{family}"
    model = models.tiny(family)
    xs = _inputs(model)
    answers = {}
    for backend in ("onnx", "torchscript"):
        r = await client.post("/logprob", json={"model": name, "inputs": xs, "per_position": True, "backend": backend})
        assert r.status_code == 200, r.text
        assert r.json()["backend"] == backend
        answers[backend] = r.json()["results"]
    with torch.no_grad():
        for i, x in enumerate(xs):
            eager = model.log_prob(torch.tensor([x], dtype=model.token_dtype))[0].double().numpy()
            for backend, results in answers.items():
                _close(results[i]["per_position"], eager)
                assert math.isclose(results[i]["logprob"], eager.sum(), rel_tol=1e-4, abs_tol=1e-4), backend
    onnx, ts = (await asyncio.gather(*(client.post("/sample", json={"model": name, "seed": 8, "backend": b})
                                       for b in ("onnx", "torchscript"))))
    onnx, ts = onnx.json(), ts.json()
    if model.token_dtype == torch.long:
        assert onnx["tokens"] == ts["tokens"]
    else:
        _close(onnx["tokens"], ts["tokens"])
    assert math.isclose(onnx["logprob"], ts["logprob"], rel_tol=1e-4)
