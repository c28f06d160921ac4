"""Against a real `uvicorn app.main:app` process (conftest.server, ARSERVE_MAX_CONCURRENT_STREAMS=2): the
end-to-end stream, streaming before the sample is finished, disconnects, and admission control (429).

long-lstm may generate 65536 tokens: far more than a test reads, so these streams are still running when the
test acts on them.
"""

from __future__ import annotations

import math
import time

import httpx
import pytest
from httpx_sse import connect_sse
from prometheus_client.parser import text_string_to_metric_families

LONG = {"model": "long-lstm", "seed": 1}


def metric(url: str, name: str, model: str) -> float:
    text = httpx.get(f"{url}/metrics", timeout=10).text
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            if s.name == name and s.labels.get("model") == model:
                return s.value
    raise AssertionError(f"{name}{{model={model!r}}} not in /metrics")


def tokens_generated(url: str) -> float:
    return metric(url, "arserve_tokens_generated_total", "long-lstm")


def wait_for_no_streams(url: str, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while metric(url, "arserve_active_streams", "long-lstm") != 0:
        assert time.monotonic() < deadline, "the active-streams gauge did not return to 0"
        time.sleep(0.05)


def test_end_to_end_stream_with_the_client(server):
    """The one end-to-end test: stream a sample from a real server, score it back, through app.client."""
    from app.client import ArserveClient

    with ArserveClient(server) as client:
        assert {"tiny-lstm", "tiny-nade"} <= {m["name"] for m in client.models()}
        events = list(client.sample("tiny-lstm", prompt="ab", seed=3, chunk=2))
        assert [e.event for e in events] == ["token"] * 5 + ["done"]
        done = events[-1].data
        streamed = [lp for e in events[:-1] for lp in e.data["logprobs"]]
        assert [t for e in events[:-1] for t in e.data["tokens"]] == done["tokens"]
        scored = client.logprob("tiny-lstm", ["ab" + done["text"]], prefix_len=2)["results"][0]
        assert math.isclose(sum(streamed), scored["logprob"], rel_tol=1e-4)
        assert client.generate("tiny-lstm", prompt="ab", seed=3)["tokens"] == done["tokens"]


def test_the_first_event_leaves_before_the_sample_is_done(server):
    before = tokens_generated(server)
    with httpx.Client(base_url=server, timeout=30) as http:
        with connect_sse(http, "GET", "/sample", params=LONG) as source:
            assert source.response.headers["content-type"].startswith("text/event-stream")
            events = source.iter_sse()  # kept: a discarded iterator closes the connection
            first = next(events)
            assert first.event == "token" and first.json()["index"] == 0
            assert tokens_generated(server) - before < 65536  # still generating
            assert metric(server, "arserve_active_streams", "long-lstm") == 1
    wait_for_no_streams(server)


def test_a_disconnect_stops_the_generation(server):
    before = tokens_generated(server)
    with httpx.Client(base_url=server, timeout=30) as http:
        with connect_sse(http, "GET", "/sample", params={**LONG, "chunk": 4}) as source:
            events = source.iter_sse()
            for _ in range(5):
                assert next(events).event == "token"
            assert metric(server, "arserve_active_streams", "long-lstm") == 1
    # leaving the block closed the connection mid-stream
    wait_for_no_streams(server)
    time.sleep(0.2)  # the worker drops the generation at its next turn
    stopped_at = tokens_generated(server)
    time.sleep(0.5)
    assert tokens_generated(server) == stopped_at, "tokens are still being generated after the disconnect"
    assert stopped_at - before < 65536


def test_too_many_streams_get_429_with_retry_after(server):
    with (httpx.Client(base_url=server, timeout=30) as a, httpx.Client(base_url=server, timeout=30) as b,
          httpx.Client(base_url=server, timeout=30) as c):
        with connect_sse(a, "GET", "/sample", params=LONG) as s1, connect_sse(b, "GET", "/sample", params=LONG) as s2:
            events = s1.iter_sse(), s2.iter_sse()  # kept: a discarded iterator closes the connection
            for it in events:
                assert next(it).event == "token"
            for r in (c.get("/sample", params={"model": "tiny-nade"}), c.post("/sample", json={"model": "tiny-nade"})):
                assert r.status_code == 429, r.text
                assert r.headers["retry-after"] == "1"
                err = r.json()["error"]
                assert err["code"] == "too_many_streams" and "ARSERVE_MAX_CONCURRENT_STREAMS=2" in err["message"]
            assert (c.post("/logprob", json={"model": "tiny-nade", "inputs": [[0] * 8]})).status_code == 200
        wait_for_no_streams(server)
        assert c.post("/sample", json={"model": "tiny-nade"}).status_code == 200  # slots were given back


@pytest.mark.parametrize("path", ["/healthz", "/readyz", "/metrics"])
def test_probes_on_the_real_server(server, path):
    assert httpx.get(f"{server}{path}", timeout=10).status_code == 200
