"""The native API's sampling controls: min_p, n samples per request (batched rows, derived seeds, each one
reproducible alone, n stream slots) and stop strings for text models (never streamed, the sample cut there).

In-process app: tiny-lstm is a text model over "abcde" (length 12), long-lstm one over "abcde" with length
65536; the real server of conftest allows 2 streams at once.
"""

from __future__ import annotations

import httpx
import pytest
from conftest import sse_events

pytestmark = pytest.mark.anyio


async def post(client, **body) -> dict:
    r = await client.post("/sample", json=body)
    assert r.status_code == 200, r.text
    return r.json()


async def test_n_samples_stream_with_their_index_and_each_reproduces_alone(client):
    events = await sse_events(client, model="long-lstm", seed=5, max_len=40, n=3, chunk=7)
    done = sorted((d for e, d in events if e == "done"), key=lambda d: d["sample"])
    assert [d["sample"] for d in done] == [0, 1, 2] and len({tuple(d["tokens"]) for d in done}) == 3
    for d in done:
        tokens = [t for e, x in events if e == "token" and x["sample"] == d["sample"] for t in x["tokens"]]
        assert tokens == d["tokens"] and len(tokens) == 40
        alone = await post(client, model="long-lstm", seed=d["seed"], max_len=40)
        assert alone["tokens"] == d["tokens"] and "sample" not in alone
    assert done[0]["seed"] == 5  # the first sample keeps the request's seed: n=1 and the first of n agree
    posted = await post(client, model="long-lstm", seed=5, max_len=40, n=3)
    assert [s["tokens"] for s in posted["samples"]] == [d["tokens"] for d in done]


async def test_stop_strings_cut_the_sample_and_never_stream(client):
    free = await post(client, model="long-lstm", seed=9, max_len=200)
    text = free["text"]
    stop = next(text[i : i + 3] for i in range(10, 150) if text.find(text[i : i + 3]) == i)  # first seen at i
    cut = text.find(stop)
    events = await sse_events(client, model="long-lstm", seed=9, max_len=200, stop=[stop],
                              chunk=1)
    done = events[-1][1]
    assert events[-1][0] == "done" and done["finish_reason"] == "stop"
    assert done["text"] == text[:cut] == "".join(d["text"] for e, d in events if e == "token")
    assert done["tokens"] == free["tokens"][:cut] and done["num_tokens"] == cut
    assert done["logprob"] == pytest.approx(sum(d["logprobs"][0] for e, d in events if e == "token"))
    posted = await post(client, model="long-lstm", seed=9, max_len=200, stop=[stop])
    assert posted["text"] == text[:cut] and posted["finish_reason"] == "stop"


async def test_min_p_one_is_greedy(client):
    greedy = await post(client, model="long-lstm", seed=1, max_len=30, temperature=0)
    assert (await post(client, model="long-lstm", seed=2, max_len=30, min_p=1.0))["tokens"] == greedy["tokens"]


@pytest.mark.parametrize(("body", "status", "words"), [
    ({"model": "tiny-nade", "stop": ["1"]}, 422, ["stop", "text models"]),
    ({"model": "tiny-lstm", "stop": ["a", "b", "c", "d", "e"]}, 422, ["stop", "at most 4"]),
    ({"model": "tiny-lstm", "stop": ["xy"]}, 422, ["stop[0]", "'x'"]),
    ({"model": "tiny-lstm", "stop": [""]}, 422, ["stop"]),
    ({"model": "tiny-lstm", "n": 0}, 422, ["n"]),
    ({"model": "tiny-lstm", "n": 17}, 413, ["n", "ARSERVE_MAX_N=16"]),
    ({"model": "tiny-lstm", "min_p": 1.5}, 422, ["min_p"]),
    ({"model": "tiny-rnade", "min_p": 0.1}, 422, ["min_p", "mixture"]),
])
async def test_bad_controls(client, body, status, words):
    r = await client.post("/sample", json=body)
    assert r.status_code == status, r.text
    message = r.json()["error"]["message"]
    assert all(w in message for w in words), message


def test_n_rows_count_against_the_stream_limit(server):
    """The real server allows 2 streams at once: n=3 can never run; n=2 beside a running stream must wait."""
    r = httpx.post(f"{server}/sample", json={"model": "tiny-lstm", "n": 3}, timeout=30)
    assert r.status_code == 413 and "ARSERVE_MAX_CONCURRENT_STREAMS=2" in r.json()["error"]["message"]
    with httpx.Client(base_url=server, timeout=30) as c, c.stream("GET", "/sample", params={"model": "long-lstm"}):
        busy = c.post("/sample", json={"model": "tiny-lstm", "n": 2})
        assert busy.status_code == 429, busy.text
    assert httpx.post(f"{server}/sample", json={"model": "tiny-lstm", "n": 2}, timeout=30).status_code == 200


def test_client_reads_every_sample(server):
    from app.client import ArserveClient

    with ArserveClient(server) as c:
        events = list(c.sample("tiny-lstm", n=2, seed=3, stop=["ab"]))
        assert sorted(e.data["sample"] for e in events if e.event == "done") == [0, 1]
        assert len(c.generate("tiny-lstm", n=2, seed=3)["samples"]) == 2
