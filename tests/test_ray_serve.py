"""arserve on a real local Ray cluster (two nodes on loopback), deployed with two replicas behind Ray's proxy.

Marked `ray` (deselected by default: `pytest -m ray`; `.ci/run` runs it): it needs the `ray` extra and a
minute or two to start a cluster. Everything runs on 127.0.0.1 with free ports, usage stats off, and the
cluster is shut down in `finally`, whatever happens.
"""

from __future__ import annotations

import os
import signal
import threading
import time
from pathlib import Path

import httpx
import numpy as np
import pytest
from conftest import ROOT

# Before Ray is imported: it reads these at import time. Loopback only: without the second, the driver of a
# cluster whose nodes advertise 127.0.0.1 resolves the machine's own address and hangs connecting to it.
os.environ.update(RAY_USAGE_STATS_ENABLED="0", RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER="0")
ray = pytest.importorskip("ray", reason="the `ray` extra is not installed: pip install -e '.[ray]'")
pytestmark = pytest.mark.ray

from bench.common import free_port, serve, wait_ready  # noqa: E402

MODELS = ("fvsbn-mnist", "lstm-shakespeare", "wavenet-fsdd")  # one per kind of state, quick to load
REPLICA = "x-arserve-replica"


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("ray-models")
    for name in MODELS:
        (folder / name).symlink_to(ROOT / "exported" / name)
    return folder


@pytest.fixture(scope="module")
def cluster(model_dir):
    """Two Ray nodes of one CPU each on 127.0.0.1, Serve's proxy on a free port, the app with 2 replicas."""
    from ray import serve
    from ray.cluster_utils import Cluster

    from app.ray_serve import Arserve

    node = {"num_cpus": 1, "node_ip_address": "127.0.0.1", "include_dashboard": False}
    c = Cluster(initialize_head=True, head_node_args=node)
    try:
        c.add_node(**node)
        env = {"ARSERVE_MODEL_DIR": str(model_dir), "ARSERVE_LOG_LEVEL": "warning", "RAY_USAGE_STATS_ENABLED": "0",
               "PYTHONPATH": str(ROOT)}
        ray.init(address=c.address, runtime_env={"env_vars": env}, include_dashboard=False,
                 log_to_driver=False)
        port = free_port()
        serve.start(http_options={"host": "127.0.0.1", "port": port})
        serve.run(Arserve.options(num_replicas=2).bind(), name="arserve", route_prefix="/")
        url = f"http://127.0.0.1:{port}"
        wait_ready(url)
        yield url
    finally:
        try:
            serve.shutdown()
        finally:
            ray.shutdown()
            c.shutdown()


@pytest.fixture(scope="module")
def plain(model_dir):
    with serve(model_dir) as url:
        yield url


def _replicas(url: str, n: int = 24) -> dict[str, int]:
    """Which replica answered each of n requests, one fresh connection each (a keep-alive sticks to one)."""
    seen: dict[str, int] = {}
    for _ in range(n):
        r = httpx.get(f"{url}/healthz", timeout=10)
        seen[r.headers[REPLICA]] = seen.get(r.headers[REPLICA], 0) + 1
    return seen


def _sample(url: str, **params) -> list[dict]:
    from app.client import ArserveClient

    with ArserveClient(url, timeout=60) as client:
        return [e.data for e in client.sample(**params)]


def test_same_answers_as_plain_uvicorn(cluster, plain):
    ray_models = httpx.get(f"{cluster}/models", timeout=30).json()["models"]
    plain_models = httpx.get(f"{plain}/models", timeout=30).json()["models"]
    assert [m["name"] for m in ray_models] == [m["name"] for m in plain_models] == sorted(MODELS)

    body = {"model": "lstm-shakespeare", "inputs": ["ROMEO: Good morrow", "JULIET: Ay me"], "per_position": True}
    got = httpx.post(f"{cluster}/logprob", json=body, timeout=30).json()["results"]
    want = httpx.post(f"{plain}/logprob", json=body, timeout=30).json()["results"]
    for g, w in zip(got, want, strict=True):
        np.testing.assert_allclose(g["per_position"], w["per_position"], atol=1e-6, rtol=0)

    for model, params in (("lstm-shakespeare", {"prompt": "ROMEO:", "max_len": 60, "temperature": 0.8}),
                          ("fvsbn-mnist", {}), ("wavenet-fsdd", {"max_len": 400, "chunk": 50})):
        a = _sample(cluster, model=model, seed=7, **params)
        b = _sample(plain, model=model, seed=7, **params)
        assert a[-1]["tokens"] == b[-1]["tokens"]
        assert len(a) > 1 and a[0]["tokens"]  # streamed: token events came before done
        np.testing.assert_allclose(a[-1]["logprob"], b[-1]["logprob"], atol=1e-6, rtol=0)


def test_requests_are_spread_over_both_replicas(cluster):
    seen = _replicas(cluster)
    assert len(seen) == 2, f"every request went to one replica: {seen}"


def _active_streams(url: str) -> dict[str, float]:
    """arserve_active_streams summed per replica, from fresh connections until both replicas answered."""
    out: dict[str, float] = {}
    for _ in range(40):
        r = httpx.get(f"{url}/metrics", timeout=10)
        total = sum(float(line.rsplit(" ", 1)[1]) for line in r.text.splitlines()
                    if line.startswith("arserve_active_streams{"))
        out[r.headers[REPLICA]] = total
        if len(out) == 2:
            break
    return out


def test_client_disconnect_stops_generation_on_its_replica(cluster):
    params = {"model": "wavenet-fsdd", "max_len": 60000, "chunk": 1, "seed": 1}
    with httpx.Client(base_url=cluster, timeout=30) as http, http.stream("GET", "/sample", params=params) as r:
        replica = r.headers[REPLICA]
        lines = r.iter_lines()
        assert any(line.startswith("event: token") for line in (next(lines) for _ in range(10)))
        busy = _active_streams(cluster)
        assert busy.get(replica) == 1, busy
    deadline = time.monotonic() + 30  # the proxy cancels the replica's request; the worker drops the stream
    while (now := _active_streams(cluster)).get(replica, 1) != 0 and time.monotonic() < deadline:
        time.sleep(0.5)
    assert now.get(replica) == 0, f"the stream kept running on {replica} after the client left: {now}"


def test_a_killed_replica_costs_only_its_own_streams(cluster):
    """Kill one replica mid-run: the other keeps serving, Ray restarts the dead one, nothing hangs."""
    from app.client import ArserveError

    before = _replicas(cluster)
    victim = sorted(before)[0]
    pid = int(victim.rsplit("/", 1)[1])
    outcomes: list[str] = []  # per stream: "done" or "cut"

    def stream(seed: int) -> None:
        try:
            _sample(cluster, model="wavenet-fsdd", max_len=3000, chunk=100, seed=seed)
            outcomes.append("done")
        except ArserveError as e:
            outcomes.append("cut" if e.code == "stream_cut" else f"error:{e.code}")

    streams = [threading.Thread(target=stream, args=(s,)) for s in range(6)]
    for t in streams:
        t.start()
    time.sleep(1.0)
    os.kill(pid, signal.SIGKILL)

    ok = failed = 0  # a bounded stream of short requests through the fault
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        try:
            r = httpx.post(f"{cluster}/logprob", json={"model": "fvsbn-mnist", "inputs": [[0] * 784]}, timeout=10)
            ok, failed = (ok + 1, failed) if r.status_code == 200 else (ok, failed + 1)
        except httpx.TransportError:
            failed += 1
    for t in streams:
        t.join(60)
    assert not any(t.is_alive() for t in streams), "a stream hung after its replica was killed"
    print(f"\nkilled {victim}: streams {outcomes}; short requests ok={ok} failed={failed}")
    assert ok > 0 and failed <= 2, (ok, failed)
    assert set(outcomes) <= {"done", "cut"}, outcomes

    deadline = time.monotonic() + 90  # Ray starts a replacement replica
    while time.monotonic() < deadline:
        now = _replicas(cluster, 16)
        if len(now) == 2 and victim not in now:
            break
        time.sleep(2)
    assert len(now) == 2 and victim not in now, f"no replacement replica: {now}"
