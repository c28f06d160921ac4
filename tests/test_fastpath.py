"""POST /logprob's fast lane (app/http/fastpath.py): the same answers, byte for byte, as the FastAPI route.

`Content-Type: application/json` takes the lane; `application/json; charset=utf-8` is the same JSON to the
route, which the lane leaves alone, so every body below is sent both ways and must get the same status, headers
and bytes. Bodies the lane does not take as they stand (lax types pydantic coerces, typos, malformed JSON) reach
the route through it, and must get the route's answers too.
"""

from __future__ import annotations

import json
import random

import numpy as np
import orjson
import pytest
from pydantic import TypeAdapter

from app.http.fastpath import parse_query, plain_request
from app.http.schemas import LogprobResponse

NADE = [0, 1, 0, 1, 1, 0, 0, 1]
ROUTE = "application/json; charset=utf-8"  # the route's, not the lane's

BODIES = [
    {"model": "tiny-nade", "inputs": [NADE, [1] * 8]},
    {"model": "tiny-nade", "inputs": [NADE], "per_position": True, "prefix_len": 3, "backend": "onnx"},
    {"model": "tiny-nade", "inputs": [NADE], "backend": None},
    {"model": "tiny-lstm", "inputs": ["to be", [0, 1, 2, 3]], "per_position": True},
    {"model": "tiny-rnade", "inputs": [[0.5, -1.0, 2.0, 0.0, 0.25, -0.125]], "per_position": True},
    {"model": "tiny-made", "inputs": [NADE]},  # TorchScript in these settings
    # the engine's errors, raised inside the lane
    {"model": "tiny-nade", "inputs": [[0, 2] * 4]},
    {"model": "tiny-nade", "inputs": [[0, 1]]},
    {"model": "tiny-nade", "inputs": [NADE] * 9},
    {"model": "tiny-nade", "inputs": [NADE], "prefix_len": 8},
    {"model": "tiny-nade", "inputs": [[0.5] * 8]},
    {"model": "tiny-nade", "inputs": [[None] * 8]},
    {"model": "tiny-nade", "inputs": [[10**30] * 8]},
    {"model": "nope", "inputs": [NADE]},
    {"model": "tiny-lstm", "inputs": ["x" * 601]},
    # lax or wrong types: pydantic coerces or refuses them, in the route
    {"model": "tiny-nade", "inputs": [NADE], "per_position": 1},
    {"model": "tiny-nade", "inputs": [NADE], "per_position": "yes"},
    {"model": "tiny-nade", "inputs": [NADE], "prefix_len": 1.0},
    {"model": "tiny-nade", "inputs": [NADE], "prefix_len": -1},
    {"model": "tiny-nade", "inputs": [NADE], "prefix_len": True},
    {"model": "tiny-nade", "inputs": [NADE], "temprature": 1},
    {"model": "tiny-nade", "inputs": [NADE], "backend": "tf"},
    {"model": "", "inputs": [NADE]},
    {"model": "m" * 65, "inputs": [NADE]},
    {"model": 3, "inputs": [NADE]},
    {"model": "tiny-nade", "inputs": []},
    {"model": "tiny-nade", "inputs": "abc"},
    {"inputs": [NADE]},
    [1, 2],
]
RAW = [b'{"model": "tiny-nade", "inputs": [[0, 1', b'{"model": "tiny-nade", "inputs": [[NaN, 1]]}', b"", b"null",
       json.dumps({f"k{i}": 1 for i in range(300)}).encode(), b"[" * 5000 + b"]" * 5000, b"\xff\xfe",
       b'{"model": "tiny-nade", "model": "nope", "inputs": [[0]]}']


def _answer(r) -> tuple:
    return r.status_code, r.content, [(k, v) for k, v in r.headers.items() if k != "x-request-id"]


@pytest.mark.anyio
@pytest.mark.parametrize("body", [json.dumps(b).encode() for b in BODIES] + RAW)
async def test_the_lane_answers_as_the_route_does(client, body):
    lane = await client.post("/logprob", content=body, headers={"content-type": "application/json"})
    route = await client.post("/logprob", content=body, headers={"content-type": ROUTE})
    assert _answer(lane) == _answer(route)
    assert lane.status_code < 500


def test_the_lane_takes_only_what_pydantic_would_take_unchanged():
    good = {"model": "m", "inputs": [[0]]}
    assert plain_request(good) is not None
    assert plain_request({**good, "per_position": True, "prefix_len": 2, "backend": "torchscript"}).prefix_len == 2
    for lax in ({"per_position": 1}, {"per_position": "true"}, {"prefix_len": 1.0}, {"prefix_len": True},
                {"prefix_len": -1}, {"backend": "tf"}, {"backend": ["onnx"]}, {"model": ""}, {"model": "m" * 65},
                {"inputs": []}, {"inputs": "x"}, {"extra": 1}):
        assert plain_request({**good, **lax}) is None, lax
    assert plain_request({"model": "m"}) is None
    assert plain_request([good]) is None


def test_the_packed_lane_takes_only_plain_queries():
    p = parse_query(b"model=m&shape=%2016%20,784&dtype=uint8&per_position=true&prefix_len=007&backend=onnx")
    assert (p.model, p.dims(), p.dtype, p.per_position, p.prefix_len, p.backend) == ("m", (16, 784), "uint8", True,
                                                                                      7, "onnx")
    for q in (b"model=m&shape=1,2&dtype=uint8&per_position=True", b"model=m&shape=1,2&dtype=uint8&per_position=1",
              b"model=m&shape=1,2&dtype=uint8&prefix_len=%2B1", b"model=m&shape=1%1c,2&dtype=uint8",
              b"model=m&model=n&shape=1,2&dtype=uint8", b"model=m&shape=1,2&dtype=int16", b"shape=1,2&dtype=uint8",
              b"model=m&shape=1,2&dtype=uint8&x=1", b"model&shape=1,2&dtype=uint8", b"model=%ff&shape=1,2&dtype=uint8"):
        assert parse_query(q) is None, q


@pytest.mark.anyio
@pytest.mark.parametrize("query", [{}, {"per_position": "true"}, {"per_position": "True", "prefix_len": "+1"},
                                   {"per_position": "1", "prefix_len": "1"}])
async def test_packed_queries_off_the_lane_get_the_same_scores(client, query):
    x = np.array([NADE, [1] * 8], dtype=np.uint8)
    r = await client.post("/logprob", params={"model": "tiny-nade", "shape": "2,8", "dtype": "uint8", **query},
                          content=x.tobytes(), headers={"content-type": "application/octet-stream"})
    plain = await client.post("/logprob", headers={"content-type": ROUTE}, content=json.dumps(
        {"model": "tiny-nade", "inputs": x.tolist(), "per_position": query.get("per_position", "false") != "false",
         "prefix_len": int(query.get("prefix_len", 0))}))
    assert r.status_code == plain.status_code == 200
    assert r.json() == plain.json()


def test_orjson_writes_floats_as_the_response_model_does():
    """Why the lane's bytes equal FastAPI's: pydantic-core and orjson both write the shortest round-trip form
    (json.dumps writes 1e-07 where they write 1e-7)."""
    rng = random.Random(0)
    values = [-rng.expovariate(1) * 10 ** rng.randint(-12, 8) for _ in range(5000)] + [0.0, -0.0, 1e16, 5e-324]
    serializer = TypeAdapter(LogprobResponse)
    for v in values:
        result = {"model": "m", "revision": "r", "backend": "onnx",
                  "results": [{"logprob": v, "bits_per_dim": None, "num_positions": 1, "per_position": [v, None]}]}
        assert orjson.dumps(result) == serializer.dump_json(serializer.validate_python(result), exclude_unset=True)


@pytest.mark.anyio
async def test_plain_json_takes_the_lane_and_charset_json_the_route(client, monkeypatch):
    from app.http import fastpath

    seen = []
    monkeypatch.setattr(fastpath, "plain_request", lambda data: seen.append(data) or plain_request(data))
    body = {"model": "tiny-nade", "inputs": [NADE]}
    assert (await client.post("/logprob", json=body)).status_code == 200
    assert (await client.post("/logprob", content=json.dumps(body), headers={"content-type": ROUTE})).status_code == 200
    assert seen == [body]
