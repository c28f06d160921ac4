"""Bad input gets a 4xx {"error": {"code", "message"}} naming the field (and position), never a 500.

The in-process app runs with max_batch 8, max_length 600 and max_chunk 64 (conftest.service_settings).
tiny-nade is a 2x4 binary image, tiny-lstm a text model over "abcde", tiny-rnade a vector of 6 floats.
"""

from __future__ import annotations

import pytest

pytestmark = pytest.mark.anyio

NADE_X = [0, 1, 0, 1, 1, 0, 0, 1]

# (method, path, JSON body or query params, status, error code, substrings of the message)
CASES = [
    # POST /logprob
    ("POST", "/logprob", {"model": "nope", "inputs": [NADE_X]}, 404, "model_not_found", ["model", "'nope'"]),
    ("POST", "/logprob", {"model": "tiny-nade", "inputs": [[0, 1, 0]]}, 422, "invalid_input",
     ["inputs[0]", "exactly 8", "got 3"]),
    ("POST", "/logprob", {"model": "tiny-nade", "inputs": [NADE_X, [0, 1, 0, 1, 1, 0, 0, 2]]}, 422, "invalid_input",
     ["inputs[1][7]", "token 2", "vocabulary [0, 2)"]),
    ("POST", "/logprob", {"model": "tiny-nade", "inputs": [[0, -1, 0, 1, 1, 0, 0, 1]]}, 422, "invalid_input",
     ["inputs[0][1]", "token -1"]),
    ("POST", "/logprob", {"model": "tiny-lstm", "inputs": ["abz"]}, 422, "invalid_input",
     ["inputs[0]", "unknown character 'z'", "position 2"]),
    ("POST", "/logprob", {"model": "tiny-nade", "inputs": [[0, "one", 0, 1, 1, 0, 0, 1]]}, 422, "invalid_input",
     ["inputs[0][1]", "expected a number", "'one'"]),
    ("POST", "/logprob", {"model": "tiny-nade", "inputs": [[0, None, 0, 1, 1, 0, 0, 1]]}, 422, "invalid_input",
     ["inputs[0][1]", "expected a number", "None"]),
    ("POST", "/logprob", {"model": "tiny-lstm", "inputs": [[0, [1], 2]]}, 422, "invalid_input", ["inputs[0]"]),
    ("POST", "/logprob", {"model": "tiny-lstm", "inputs": [[0, 0.5, 2]]}, 422, "invalid_input",
     ["inputs[0][1]", "not an integer"]),
    ("POST", "/logprob", {"model": "tiny-lstm", "inputs": [[0, 2**70, 2]]}, 422, "invalid_input", ["inputs[0][1]"]),
    ("POST", "/logprob", {"model": "tiny-nade", "inputs": []}, 422, "invalid_request", ["inputs", "at least 1"]),
    ("POST", "/logprob", {"model": "tiny-lstm", "inputs": [[]]}, 422, "invalid_input", ["inputs[0]", "empty"]),
    ("POST", "/logprob", {"model": "tiny-lstm", "inputs": [""]}, 422, "invalid_input", ["inputs[0]", "empty"]),
    ("POST", "/logprob", {"model": "tiny-nade", "inputs": [NADE_X] * 9}, 413, "limit_exceeded",
     ["inputs", "9 inputs", "ARSERVE_MAX_BATCH=8"]),
    ("POST", "/logprob", {"model": "long-lstm", "inputs": [[0] * 601]}, 413, "limit_exceeded",
     ["inputs[0]", "ARSERVE_MAX_LENGTH=600"]),
    ("POST", "/logprob", {"model": "tiny-lstm", "inputs": [[0] * 13]}, 422, "invalid_input",
     ["inputs[0]", "length 12"]),
    ("POST", "/logprob", {"model": "tiny-nade", "inputs": [NADE_X], "prefix_len": 8}, 422, "invalid_input",
     ["prefix_len", "nothing to score"]),
    ("POST", "/logprob", {"model": "tiny-nade", "inputs": [NADE_X], "prefix_len": -1}, 422, "invalid_request",
     ["prefix_len"]),
    ("POST", "/logprob", {"model": "tiny-nade", "inputs": [NADE_X], "backend": "tensorflow"}, 422,
     "invalid_request", ["backend"]),
    ("POST", "/logprob", {"model": "tiny-nade", "inputs": ["01010101"]}, 422, "invalid_input",
     ["inputs[0]", "text models"]),
    ("POST", "/logprob", {"model": "tiny-nade", "inputs": [[[0, 1, 0], [1, 1, 0, 0]]]}, 422, "invalid_input",
     ["inputs[0][0]", "4 pixels"]),
    ("POST", "/logprob", {"model": "tiny-nade", "inputs": [[[0, 1, 0, 1]]]}, 422, "invalid_input",
     ["inputs[0]", "2 rows"]),
    ("POST", "/logprob", {"model": "tiny-nade", "inputs": [5]}, 422, "invalid_input", ["inputs[0]", "a list"]),
    ("POST", "/logprob", {"model": "tiny-nade", "inputs": [NADE_X], "per_position": "maybe"}, 422,
     "invalid_request", ["per_position"]),
    ("POST", "/logprob", {"model": "tiny-nade", "inputs": [NADE_X], "temperature": 1}, 422, "invalid_request",
     ["temperature", "not permitted"]),
    ("POST", "/logprob", {"inputs": [NADE_X]}, 422, "invalid_request", ["model", "required"]),
    ("POST", "/logprob", [1, 2], 422, "invalid_request", []),
    # GET /sample: the query is checked before the stream starts, so errors are plain JSON
    ("GET", "/sample", {"model": "nope"}, 404, "model_not_found", ["model"]),
    ("GET", "/sample", {"model": "tiny-nade", "temperature": -0.5}, 422, "invalid_request", ["temperature"]),
    ("GET", "/sample", {"model": "tiny-nade", "temperature": "hot"}, 422, "invalid_request", ["temperature"]),
    ("GET", "/sample", {"model": "tiny-nade", "top_p": 0}, 422, "invalid_request", ["top_p"]),
    ("GET", "/sample", {"model": "tiny-nade", "top_p": 1.5}, 422, "invalid_request", ["top_p"]),
    ("GET", "/sample", {"model": "tiny-nade", "top_k": -1}, 422, "invalid_request", ["top_k"]),
    ("GET", "/sample", {"model": "tiny-nade", "seed": -1}, 422, "invalid_request", ["seed"]),
    ("GET", "/sample", {"model": "tiny-nade", "max_len": 0}, 422, "invalid_request", ["max_len"]),
    ("GET", "/sample", {"model": "long-lstm", "max_len": 601}, 413, "limit_exceeded",
     ["max_len", "ARSERVE_MAX_LENGTH=600"]),
    ("GET", "/sample", {"model": "long-lstm"}, 200, None, []),  # no max_len: capped at the limit, not refused
    ("GET", "/sample", {"model": "tiny-nade", "max_len": 3}, 422, "invalid_input", ["max_len", "whole samples"]),
    ("GET", "/sample", {"model": "tiny-nade", "chunk": 65}, 413, "limit_exceeded", ["chunk", "ARSERVE_MAX_CHUNK"]),
    ("GET", "/sample", {"model": "tiny-nade", "chunk": 0}, 422, "invalid_request", ["chunk"]),
    ("GET", "/sample", {"model": "tiny-nade", "prefix": "1,x"}, 422, "invalid_input", ["prefix[1]", "'x'"]),
    ("GET", "/sample", {"model": "tiny-nade", "prefix": "1,7"}, 422, "invalid_input", ["prefix[1]", "token 7"]),
    ("GET", "/sample", {"model": "tiny-nade", "prefix": "1,0,1,0,1,0,1,0"}, 422, "invalid_input",
     ["prefix", "nothing to generate"]),
    ("GET", "/sample", {"model": "tiny-lstm", "prompt": "abz"}, 422, "invalid_input",
     ["prompt", "'z'", "position 2"]),
    ("GET", "/sample", {"model": "tiny-nade", "prompt": "ab"}, 422, "invalid_input", ["prompt", "text models"]),
    ("GET", "/sample", {"model": "tiny-lstm", "prompt": "ab", "prefix": "1"}, 422, "invalid_input", ["prompt"]),
    ("GET", "/sample", {"model": "tiny-rnade", "top_k": 3}, 422, "invalid_input", ["top_k", "only temperature"]),
    ("GET", "/sample", {"model": "tiny-rnade", "prefix": "0.5,nan"}, 422, "invalid_input", ["prefix[1]", "finite"]),
    ("GET", "/sample", {"model": "tiny-nade", "backend": "tensorflow"}, 422, "invalid_request", ["backend"]),
    ("GET", "/sample", {"model": "tiny-nade", "temprature": 0}, 422, "invalid_request", ["temprature"]),
    ("GET", "/sample", {}, 422, "invalid_request", ["model"]),
    # POST /sample
    ("POST", "/sample", {"model": "nope"}, 404, "model_not_found", ["model"]),
    ("POST", "/sample", {"model": "tiny-nade", "temperature": -1}, 422, "invalid_request", ["temperature"]),
    ("POST", "/sample", {"model": "tiny-nade", "prefix": [1, "a"]}, 422, "invalid_input", ["prefix[1]"]),
    ("POST", "/sample", {"model": "tiny-lstm", "max_len": 10**9}, 413, "limit_exceeded", ["max_len"]),
    # routes that do not exist
    ("GET", "/nowhere", None, 404, "not_found", []),
    ("DELETE", "/logprob", None, 405, "method_not_allowed", []),
]


def _id(case) -> str:
    method, path, body, status = case[:4]
    return f"{method} {path} {status} {body}"[:90]


@pytest.mark.parametrize("method,path,body,status,code,parts", CASES, ids=[_id(c) for c in CASES])
async def test_bad_input_is_a_4xx_naming_the_field(client, method, path, body, status, code, parts):
    if method == "GET":
        r = await client.get(path, params=body)
    else:
        r = await client.request(method, path, json=body)
    assert r.status_code == status, r.text
    if code is None:
        return
    assert r.headers["content-type"] == "application/json"
    err = r.json()["error"]
    assert err["code"] == code and isinstance(err["message"], str)
    for part in parts:
        assert part in err["message"], f"{part!r} not in {err['message']!r}"


@pytest.mark.parametrize("body", [
    '{"model": "tiny-nade", "inputs": [[0, 1',
    "{'model': 'tiny-nade'}",
    "",
    "not json at all",
])
async def test_malformed_json_is_422(client, body):
    for path in ("/logprob", "/sample"):
        r = await client.post(path, content=body, headers={"content-type": "application/json"})
        assert r.status_code == 422, r.text
        assert r.json()["error"]["code"] in ("malformed_json", "invalid_request"), r.text


async def test_non_finite_floats_are_422(client):
    # Python's JSON parser reads NaN / Infinity literals; a continuous model must refuse them by position
    body = '{"model": "tiny-rnade", "inputs": [[0.1, NaN, 0, 0, 0, 0]]}'
    r = await client.post("/logprob", content=body, headers={"content-type": "application/json"})
    assert r.status_code == 422 and "inputs[0][1]" in r.json()["error"]["message"]
    body = '{"model": "tiny-rnade", "inputs": [[0.1, 1e39, 0, 0, 0, 0]]}'  # finite in JSON, not in float32
    r = await client.post("/logprob", content=body, headers={"content-type": "application/json"})
    assert r.status_code == 422 and "inputs[0][1]" in r.json()["error"]["message"]


WEIRD = [None, "", "x" * 300, -1, 0, 1.5, 1e308, True, [], [[]], [None], {}, {"a": 1}]


@pytest.mark.parametrize("path,valid", [
    ("/logprob", {"model": "tiny-lstm", "inputs": [[0, 1]], "per_position": True, "prefix_len": 1}),
    ("/sample", {"model": "tiny-lstm", "seed": 1, "max_len": 3, "temperature": 0.5, "top_k": 2, "top_p": 0.9,
                 "prefix": [1], "chunk": 2, "backend": "onnx"}),
])
async def test_no_field_value_gives_a_500(client, path, valid):
    """Every field replaced by every odd JSON value: the answer is 200 or a 4xx JSON error, never a 5xx."""
    assert (await client.post(path, json=valid)).status_code == 200
    for field in valid:
        for value in WEIRD:
            r = await client.post(path, json={**valid, field: value})
            assert r.status_code < 500, f"{field}={value!r}: {r.status_code} {r.text}"
            if r.status_code >= 400:
                assert set(r.json()["error"]) >= {"code", "message"}
