"""The OpenAI-compatible surface against a real uvicorn process, through the official `openai` client.

The server serves the shipped character Transformer (context 256) beside an image and an audio model, which
/v1 must not list and must refuse. Every log-prob is checked against POST /logprob, the native API.
"""

from __future__ import annotations

import math

import httpx
import openai
import pytest
from conftest import ROOT

MODEL = "transformer-shakespeare"
PROMPT = "ROMEO:\nWhat light"


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    from bench.common import serve

    folder = tmp_path_factory.mktemp("served")
    for name in (MODEL, "nade-mnist", "wavenet-fsdd"):
        (folder / name).symlink_to(ROOT / "exported" / name)
    with serve(folder, threads=1, ARSERVE_MAX_N="4", ARSERVE_MAX_CONCURRENT_STREAMS="8",
               ARSERVE_MAX_BATCH="128") as url:
        yield url


@pytest.fixture(scope="module")
def client(server):
    with openai.OpenAI(base_url=f"{server}/v1", api_key="unused", max_retries=0) as c:
        yield c


def native_logprobs(server: str, text: str) -> list[float]:
    r = httpx.post(f"{server}/logprob", json={"model": MODEL, "inputs": [text], "per_position": True}, timeout=60)
    r.raise_for_status()
    return r.json()["results"][0]["per_position"]


def test_models_lists_text_models_only(client):
    models = client.models.list().data
    assert [m.id for m in models] == [MODEL]
    assert models[0].object == "model" and models[0].owned_by == "arserve" and models[0].created > 0


def test_completion_and_usage(client):
    r = client.completions.create(model=MODEL, prompt=PROMPT, max_tokens=20, seed=1)
    choice = r.choices[0]
    assert r.object == "text_completion" and r.model == MODEL
    assert len(choice.text) == 20 and choice.finish_reason == "length" and choice.logprobs is None
    assert (r.usage.prompt_tokens, r.usage.completion_tokens, r.usage.total_tokens) == (len(PROMPT), 20,
                                                                                        len(PROMPT) + 20)
    again = client.completions.create(model=MODEL, prompt=PROMPT, max_tokens=20, seed=1)
    assert again.choices[0].text == choice.text  # same seed, same text


def test_streaming_matches_the_whole_answer(client):
    whole = client.completions.create(model=MODEL, prompt=PROMPT, max_tokens=30, seed=2, logprobs=2)
    chunks = list(client.completions.create(model=MODEL, prompt=PROMPT, max_tokens=30, seed=2, logprobs=2,
                                            stream=True, stream_options={"include_usage": True}))
    assert chunks[-1].choices == [] and chunks[-1].usage.completion_tokens == 30
    pieces = [c.choices[0] for c in chunks[:-1]]
    assert "".join(p.text for p in pieces) == whole.choices[0].text
    assert [p.finish_reason for p in pieces][-1] == "length" and {p.finish_reason for p in pieces[:-1]} <= {None}
    assert sum((p.logprobs.token_logprobs for p in pieces), []) == whole.choices[0].logprobs.token_logprobs
    assert sum((p.logprobs.text_offset for p in pieces), []) == whole.choices[0].logprobs.text_offset


@pytest.mark.parametrize("max_tokens", [0, 1])
def test_echo_logprobs_equal_native_logprob(client, server, max_tokens):
    r = client.completions.create(model=MODEL, prompt=PROMPT, max_tokens=max_tokens, echo=True, logprobs=1,
                                  temperature=0)
    lp = r.choices[0].logprobs
    text = r.choices[0].text
    assert text[: len(PROMPT)] == PROMPT and len(text) == len(PROMPT) + max_tokens
    assert lp.token_logprobs[0] is None and lp.top_logprobs[0] is None  # the first prompt token, as OpenAI
    assert lp.tokens == list(text) and lp.text_offset == list(range(len(text)))
    native = native_logprobs(server, text)
    assert len(lp.token_logprobs) == len(native)
    for ours, theirs in zip(lp.token_logprobs[1:], native[1:], strict=True):
        assert ours == pytest.approx(theirs, abs=1e-4)
    for token, ours, top in zip(lp.tokens[1:], lp.token_logprobs[1:], lp.top_logprobs[1:], strict=True):
        assert top[token] == ours and len(top) <= 2


def test_top_logprobs_are_the_true_top_k(client, server):
    """At each drawn position, the 5 alternatives are the 5 most likely tokens of the model's distribution,
    which POST /logprob gives by scoring the context followed by every character of the vocabulary."""
    r = client.completions.create(model=MODEL, prompt=PROMPT, max_tokens=3, logprobs=5, seed=3)
    lp = r.choices[0].logprobs
    vocab = httpx.get(f"{server}/tokenizer_info").json()["vocab"]
    context = PROMPT
    for token, top in zip(lp.tokens, lp.top_logprobs, strict=True):
        body = {"model": MODEL, "inputs": [context + c for c in vocab], "prefix_len": len(context)}
        scores = httpx.post(f"{server}/logprob", json=body, timeout=60).json()["results"]
        dist = sorted(((s["logprob"], c) for s, c in zip(scores, vocab, strict=True)), reverse=True)
        assert math.fsum(math.exp(v) for v, _ in dist) == pytest.approx(1, abs=1e-4)
        expected = {c: v for v, c in dist[:5]}
        assert set(top) - {token} == set(expected) - {token} or set(top) == set(expected)
        for c in expected:
            assert top[c] == pytest.approx(expected[c], abs=1e-4)
        context += token


def test_n_gives_different_individually_reproducible_samples(client):
    r = client.completions.create(model=MODEL, prompt=PROMPT, max_tokens=24, n=3, seed=11)
    texts = [c.text for c in sorted(r.choices, key=lambda c: c.index)]
    assert len(set(texts)) == 3
    for choice in r.choices:
        alone = client.completions.create(model=MODEL, prompt=PROMPT, max_tokens=24, seed=choice.seed)
        assert alone.choices[0].text == choice.text
    assert client.completions.create(model=MODEL, prompt=PROMPT, max_tokens=24, seed=11).choices[0].text == texts[0]


def test_stop_strings_end_the_text_and_never_stream(client):
    """Greedy text of a Shakespeare model reaches 'the' soon: stop on it, streamed and not."""
    free = client.completions.create(model=MODEL, prompt=PROMPT, max_tokens=200, temperature=0).choices[0].text
    stops = ["the", "\n\n"]
    cut = min(i for i in (free.find(s) for s in stops) if i >= 0)
    assert 0 < cut < 190, free
    r = client.completions.create(model=MODEL, prompt=PROMPT, max_tokens=200, temperature=0, stop=stops)
    assert r.choices[0].text == free[:cut] and r.choices[0].finish_reason == "stop"
    assert r.usage.completion_tokens == cut
    chunks = list(client.completions.create(model=MODEL, prompt=PROMPT, max_tokens=200, temperature=0, stop=stops,
                                            stream=True))
    texts = [c.choices[0].text for c in chunks]
    assert "".join(texts) == free[:cut] and chunks[-1].choices[0].finish_reason == "stop"
    for i in range(len(texts)):  # no chunk, nor any run of chunks, shows a stop string or its beginning past cut
        assert not any(s in "".join(texts[: i + 1]) for s in stops)


def test_prompt_forms(client):
    ids = httpx.post(f"{client.base_url}".replace("/v1/", "/tokenize"), json={"prompt": "ROMEO",
                                                                                "add_special_tokens": False}).json()
    by_text = client.completions.create(model=MODEL, prompt=["ROMEO", "JULIET"], max_tokens=5, seed=4)
    by_ids = client.completions.create(model=MODEL, prompt=ids["tokens"], max_tokens=5, seed=4)
    assert [c.index for c in by_text.choices] == [0, 1]
    assert by_ids.choices[0].text == by_text.choices[0].text
    assert by_text.usage.prompt_tokens == len("ROMEO") + len("JULIET")
    empty = client.completions.create(model=MODEL, prompt="", max_tokens=3, echo=True, logprobs=1, seed=4)
    lp = empty.choices[0].logprobs  # nothing to echo: the first drawn token has its log-prob (position 0's)
    assert len(lp.tokens) == len(lp.token_logprobs) == len(lp.top_logprobs) == 3 and None not in lp.token_logprobs


def test_tokenizer_routes(server):
    info = httpx.get(f"{server}/tokenizer_info").json()
    assert info["bos_token"] == "\n" and info["eos_token"] is None and info["max_model_len"] == 256
    tok = httpx.post(f"{server}/tokenize", json={"prompt": "Hi"}).json()  # add_special_tokens: the start token
    assert tok["tokens"][0] == info["bos_token_id"] and tok["count"] == 3 and tok["max_model_len"] == 256
    assert httpx.post(f"{server}/detokenize", json={"tokens": tok["tokens"]}).json() == {"prompt": "\nHi"}
    bad = httpx.post(f"{server}/tokenize", json={"model": MODEL, "prompt": "caf\u00e9 #1"})
    assert bad.status_code == 400
    named = bad.json()["error"]["message"].split("knows")[0]  # every character outside the vocabulary, named
    assert all(f"{c!r}" in named for c in "\u00e9#1") and "'c'" not in named
    assert httpx.get(f"{server}/tokenizer_info", params={"model": "nade-mnist"}).status_code == 404


# (request, status, code, param)
BAD = [
    ({"model": "nope", "prompt": "a"}, 404, "model_not_found", "model"),
    ({"model": "nade-mnist", "prompt": "a"}, 404, "model_not_supported", "model"),
    ({"model": "wavenet-fsdd", "prompt": "a"}, 404, "model_not_supported", "model"),
    ({"model": MODEL, "prompt": "a", "logprobs": 6}, 400, "invalid_request", "logprobs"),
    ({"model": MODEL, "prompt": "a", "n": 5}, 400, "limit_exceeded", "n"),
    ({"model": MODEL, "prompt": "a", "max_tokens": -1}, 400, "invalid_request", "max_tokens"),
    ({"model": MODEL, "prompt": "a", "stop": ["a", "b", "c", "d", "e"]}, 400, "invalid_input", "stop"),
    ({"model": MODEL, "prompt": "caf\u00e9"}, 400, "invalid_input", "prompt"),
    ({"model": MODEL, "prompt": "a" * 200, "max_tokens": 57}, 400, "invalid_input", "max_tokens"),
    ({"model": MODEL, "prompt": [3, 65]}, 400, "invalid_input", "prompt"),
    ({"model": MODEL, "prompt": "a", "temperature": -1}, 400, "invalid_request", "temperature"),
    ({"model": MODEL}, 400, "invalid_request", "prompt"),
]


@pytest.mark.parametrize(("body", "status", "code", "param"), BAD)
def test_bad_requests_get_openai_errors(server, body, status, code, param):
    r = httpx.post(f"{server}/v1/completions", json=body, timeout=30)
    assert r.status_code == status, r.text
    err = r.json()["error"]
    assert set(err) == {"message", "type", "param", "code"}
    assert (err["code"], err["param"], err["type"]) == (code, param, "invalid_request_error")
    assert err["message"]


def test_bad_request_raises_in_the_client(client):
    with pytest.raises(openai.BadRequestError, match="logprobs"):
        client.completions.create(model=MODEL, prompt="a", logprobs=9)
    with pytest.raises(openai.NotFoundError, match="nade-mnist is a binary_image model"):
        client.completions.create(model="nade-mnist", prompt="a")


def test_unknown_fields_are_ignored(server):
    body = {"model": MODEL, "prompt": "a", "max_tokens": 2, "user": "x", "presence_penalty": 0, "best_of": 1}
    assert httpx.post(f"{server}/v1/completions", json=body, timeout=30).status_code == 200


def test_streamed_choices_of_n_and_of_several_prompts(client):
    kwargs = dict(model=MODEL, prompt=["ROMEO:", "JULIET:"], max_tokens=15, n=2, seed=6, stop=["e"])
    whole = client.completions.create(**kwargs)
    texts = {i: "" for i in range(4)}
    for chunk in client.completions.create(**kwargs, stream=True):
        for choice in chunk.choices:
            texts[choice.index] += choice.text
    assert texts == {c.index: c.text for c in whole.choices}
    assert all("e" not in t for t in texts.values())
