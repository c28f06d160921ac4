"""Every endpoint through the in-process app (httpx ASGITransport), the codecs' files, the Python client,
the settings, and the rule that app/ never imports models/."""

from __future__ import annotations

import ast
import asyncio
import base64
import io
import json
import math
import subprocess
import sys
import wave
from pathlib import Path

import httpx
import numpy as np
import pytest
from conftest import ROOT, TEXT_CHARS, service_settings, sse_events
from PIL import Image
from prometheus_client.parser import text_string_to_metric_families

pytestmark = pytest.mark.anyio

NADE_X = [0, 1, 0, 1, 1, 0, 0, 1]


def metric(text: str, name: str, **labels) -> float | None:
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            if s.name == name and all(s.labels.get(k) == v for k, v in labels.items()):
                return s.value
    return None


# ----- health, readiness, metrics, models --------------------------------------------------------------


async def test_healthz_and_readyz(client):
    assert (await client.get("/healthz")).json() == {"status": "ok"}
    r = await client.get("/readyz")
    assert r.status_code == 200
    body = r.json()
    assert {"tiny-nade", "long-lstm"} <= set(body["models"]) and "corrupt-nade" not in body["models"]
    # bad folders are skipped with the reason, the others served
    assert "sha256 mismatch" in body["skipped"]["zz-corrupt"]
    assert "no manifest.json" in body["skipped"]["zz-empty"]
    assert not any(name.startswith(".") for name in body["skipped"]), "exports in progress are not models"


async def test_not_ready_until_loaded(artifacts):
    """Before the lifespan has loaded the models: alive, not ready, and model requests get 503 + Retry-After."""
    from app.main import create_app

    app = create_app(service_settings(artifacts))  # lifespan not run: nothing loaded
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://arserve") as c:
        assert (await c.get("/healthz")).status_code == 200
        r = await c.get("/readyz")
        assert r.status_code == 503 and r.json()["error"]["code"] == "not_ready"
        r = await c.post("/logprob", json={"model": "tiny-nade", "inputs": [NADE_X]})
        assert r.status_code == 503 and r.headers["retry-after"] == "1"
        assert (await c.get("/models")).status_code == 503


async def test_models_lists_manifests_without_paths(client, artifacts):
    r = await client.get("/models")
    assert r.status_code == 200
    models = {m["name"]: m for m in r.json()["models"]}
    nade = models["tiny-nade"]
    for key in ("name", "family", "modality", "length", "vocab_size", "config", "metrics", "shape", "state"):
        assert key in nade
    assert nade["modality"] == "binary_image" and nade["length"] == 8 and nade["vocab_size"] == 2
    assert models["tiny-rnade"]["vocab_size"] is None and models["tiny-rnade"]["distribution"] == "gaussian_mixture"
    assert models["tiny-made"]["default_backend"] == "torchscript"  # ARSERVE_MODEL_BACKENDS override
    assert nade["backends"] == ["onnx", "torchscript"]
    text = r.text
    assert str(artifacts) not in text and "/somewhere/private" not in text  # no server paths
    assert nade["metrics"] == {"test_nll_nats": 1.0}


async def test_metrics(client):
    await client.post("/logprob", json={"model": "tiny-nade", "inputs": [NADE_X]})
    await sse_events(client, model="tiny-lstm", seed=1, max_len=4)
    r = await client.get("/metrics")
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/plain")
    t = r.text
    assert metric(t, "arserve_requests_total", endpoint="/logprob", model="tiny-nade", status="200") >= 1
    assert metric(t, "arserve_request_seconds_count", endpoint="/sample", model="tiny-lstm") >= 1
    assert metric(t, "arserve_tokens_generated_total", model="tiny-lstm") >= 4
    assert metric(t, "arserve_active_streams", model="tiny-lstm") == 0
    assert metric(t, "arserve_queue_depth", model="tiny-nade") == 0
    assert metric(t, "arserve_step_batch_rows_count", model="tiny-lstm") >= 4
    assert metric(t, "arserve_queue_depth", model="tiny-wavenet") == 0  # every model exported from the start


async def test_stream_latency_histograms(client, app):
    """What bench.load measures from outside, the server exports too: TTFT, inter-token gaps, queue wait."""
    value = lambda name: app.state.metrics.registry.get_sample_value(name, {"model": "tiny-lstm"}) or 0  # noqa: E731
    names = ("arserve_time_to_first_token_seconds", "arserve_inter_token_seconds", "arserve_queue_wait_seconds")
    before = {n: (value(f"{n}_count"), value(f"{n}_sum")) for n in names}
    events = await sse_events(client, model="tiny-lstm", seed=1, max_len=6, chunk=2)
    assert [e for e, _ in events] == ["token"] * 3 + ["done"]
    after = {n: (value(f"{n}_count"), value(f"{n}_sum")) for n in names}
    ttft, itl, queue = ((after[n][0] - before[n][0], after[n][1] - before[n][1]) for n in names)
    assert ttft[0] == 1 and ttft[1] > 0
    assert itl[0] == 2 and itl[1] >= 0  # one per token event after the first
    assert queue[0] == 1 and 0 <= queue[1] <= ttft[1]  # admitted before its first token went out


# ----- POST /logprob ---------------------------------------------------------------------------------------


async def test_logprob_shapes_prefix_len_and_bits_per_dim(client):
    x2d = [NADE_X[:4], NADE_X[4:]]  # images also as [height][width]
    r = await client.post("/logprob", json={"model": "tiny-nade", "inputs": [NADE_X, x2d], "per_position": True})
    assert r.status_code == 200
    flat, square = r.json()["results"]
    assert flat == square and len(flat["per_position"]) == flat["num_positions"] == 8
    assert math.isclose(flat["logprob"], sum(flat["per_position"]), rel_tol=1e-9)
    assert math.isclose(flat["bits_per_dim"], -flat["logprob"] / (8 * math.log(2)), rel_tol=1e-9)
    r = await client.post("/logprob", json={"model": "tiny-nade", "inputs": [NADE_X], "prefix_len": 3})
    cont = r.json()["results"][0]
    assert "per_position" not in cont and cont["num_positions"] == 5
    assert math.isclose(cont["logprob"], sum(flat["per_position"][3:]), rel_tol=1e-6)


async def test_logprob_text_as_string_or_tokens(client):
    text = "abcabcde"
    tokens = [TEXT_CHARS.index(c) for c in text]
    r = await client.post("/logprob", json={"model": "tiny-lstm", "inputs": [text, tokens, "ab"]})
    a, b, short = r.json()["results"]
    assert a == b and short["num_positions"] == 2


# ----- GET and POST /sample ----------------------------------------------------------------------------------


async def test_sample_stream_shape_and_post_equivalence(client):
    events = await sse_events(client, model="tiny-lstm", seed=4, prompt="ab", chunk=4)
    names = [e for e, _ in events]
    assert names[-1] == "done" and set(names[:-1]) == {"token"}
    done = events[-1][1]
    assert done["seed"] == 4 and done["prefix_len"] == 2 and done["num_tokens"] == len(done["tokens"]) == 10
    assert set(done["timings"]) >= {"queued_ms", "prefill_ms", "generate_ms", "total_ms", "tokens_per_s"}
    # text: per event and whole, the continuation only (the prompt is not echoed)
    assert "".join(d["text"] for _, d in events[:-1]) == done["text"] == "".join(TEXT_CHARS[t] for t in done["tokens"])
    posted = (await client.post("/sample", json={"model": "tiny-lstm", "seed": 4, "prompt": "ab"})).json()
    assert {k: v for k, v in posted.items() if k != "timings"} == {k: v for k, v in done.items() if k != "timings"}


async def test_max_len_and_random_seed(client):
    done = (await client.post("/sample", json={"model": "tiny-lstm", "max_len": 3})).json()
    assert done["num_tokens"] == 3 and done["finish_reason"] == "length"
    again = (await client.post("/sample", json={"model": "tiny-lstm", "max_len": 3, "seed": done["seed"]})).json()
    assert again["tokens"] == done["tokens"]  # the seed chosen for us reproduces the sample


async def test_image_sample_is_a_png(client):
    done = (await client.post("/sample", json={"model": "tiny-nade", "seed": 2, "prefix": [1, 1]})).json()
    assert done["png"].startswith("data:image/png;base64,") and done["finish_reason"] == "complete"
    img = Image.open(io.BytesIO(base64.b64decode(done["png"].split(",", 1)[1])))
    assert img.size == (4, 2)  # (width, height)
    pixels = np.asarray(img).reshape(-1)
    assert (pixels == 255 * np.array([1, 1] + done["tokens"])).all()  # the whole image, prefix included


async def test_audio_sample_is_a_wav(client):
    done = (await client.post("/sample", json={"model": "tiny-wavenet", "seed": 2})).json()
    assert done["wav"].startswith("data:audio/wav;base64,")
    with wave.open(io.BytesIO(base64.b64decode(done["wav"].split(",", 1)[1]))) as w:
        assert (w.getframerate(), w.getsampwidth(), w.getnchannels(), w.getnframes()) == (8000, 2, 1, 6)
        pcm = np.frombuffer(w.readframes(6), dtype="<i2")
    tokens = np.array(done["tokens"])
    assert (np.sign(pcm) == np.sign(tokens - 127.5)).all()  # mu-law: token 0 is -1, 255 is +1
    assert np.all(np.diff(pcm[np.argsort(tokens)]) >= 0)  # monotonic decoding


async def test_vector_sample_is_floats(client):
    done = (await client.post("/sample", json={"model": "tiny-rnade", "seed": 2, "temperature": 0.5})).json()
    assert len(done["tokens"]) == 6 and all(isinstance(v, float) for v in done["tokens"])
    assert not {"text", "png", "wav"} & set(done)


async def test_concurrent_streams_are_batched_and_unchanged(client, app):
    """Streams of one model share batched steps, and a stream's sample does not change because of it."""
    m = app.state.metrics
    before = m.registry.get_sample_value("arserve_step_batch_rows_sum", {"model": "long-lstm"}) or 0
    steps_before = m.registry.get_sample_value("arserve_step_batch_rows_count", {"model": "long-lstm"}) or 0
    alone = await sse_events(client, model="long-lstm", seed=1, max_len=300, chunk=50)
    together = await asyncio.gather(*(sse_events(client, model="long-lstm", seed=s, max_len=300, chunk=c)
                                      for s, c in ((1, 1), (2, 7), (3, 64))))
    assert together[0][-1][1]["tokens"] == alone[-1][1]["tokens"]
    rows = m.registry.get_sample_value("arserve_step_batch_rows_sum", {"model": "long-lstm"}) - before
    steps = m.registry.get_sample_value("arserve_step_batch_rows_count", {"model": "long-lstm"}) - steps_before
    assert rows == 4 * 300 and steps < rows  # 1200 rows advanced in fewer step calls: batched


# ----- the Python client ---------------------------------------------------------------------------------


async def test_async_client(app):
    from app.client import ArserveError, AsyncArserveClient

    async with AsyncArserveClient("http://arserve", transport=httpx.ASGITransport(app=app)) as c:
        assert "tiny-nade" in {m["name"] for m in await c.models()}
        lp = await c.logprob("tiny-nade", [NADE_X], per_position=True)
        assert len(lp["results"][0]["per_position"]) == 8
        events = [e async for e in c.sample("tiny-nade", seed=3, prefix=[1], chunk=2)]
        assert [e.event for e in events] == ["token"] * 4 + ["done"]
        assert (await c.generate("tiny-nade", seed=3, prefix=[1]))["tokens"] == events[-1].data["tokens"]
        with pytest.raises(ArserveError) as info:
            [e async for e in c.sample("tiny-nade", temperature=-1)]
        assert info.value.status == 422 and "temperature" in info.value.message
        with pytest.raises(ArserveError, match="model_not_found"):
            await c.logprob("nope", [[0]])


# ----- settings and isolation ------------------------------------------------------------------------


def test_settings_from_environment(monkeypatch):
    from pydantic import ValidationError

    from app.runtime.config import Settings

    monkeypatch.setenv("ARSERVE_MODEL_DIR", "/srv/models")
    monkeypatch.setenv("ARSERVE_MAX_BATCH", "3")
    monkeypatch.setenv("ARSERVE_MODEL_BACKENDS", json.dumps({"nade-mnist": "torchscript"}))
    s = Settings()
    assert str(s.model_dir) == "/srv/models" and s.max_batch == 3
    assert s.backend_for("nade-mnist") == "torchscript" and s.backend_for("other") == "auto"
    monkeypatch.setenv("ARSERVE_DEFAULT_BACKEND", "tensorflow")
    with pytest.raises(ValidationError):
        Settings()


def test_app_never_imports_models():
    code = "import sys, app.main, app.client; print(sorted(m for m in sys.modules if m.split('.')[0] == 'models'))"
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "[]"
    for path in (ROOT / "app").rglob("*.py"):  # nor anywhere lazily, e.g. inside a function
        names = _imported(path)
        assert not any(n.split(".")[0] == "models" for n in names), f"{path} imports {names}"


def _imported(path: Path) -> list[str]:
    names = []
    for node in ast.walk(ast.parse(path.read_text())):
        names += [a.name for a in node.names] if isinstance(node, ast.Import) else (
            [node.module or ""] if isinstance(node, ast.ImportFrom) else [])
    return names


@pytest.mark.parametrize("part, above", [("runtime", ("app.engine", "app.http", "app.main")),
                                         ("engine", ("app.http", "app.main"))])
def test_app_layers_never_import_upwards(part, above):
    """app/http -> app/engine -> app/runtime (STYLE.md 11): no import runs back up."""
    for path in (ROOT / "app" / part).rglob("*.py"):
        wrong = [n for n in _imported(path) if n.startswith(above)]
        assert not wrong, f"{path.relative_to(ROOT)} imports {wrong} from a layer above it"


async def test_openapi_documents_the_api(client):
    r = await client.get("/openapi.json")
    assert r.status_code == 200
    paths = r.json()["paths"]
    assert {"/models", "/logprob", "/sample", "/healthz", "/readyz", "/metrics"} <= set(paths)
    assert {p["name"] for p in paths["/sample"]["get"]["parameters"]} >= {"model", "temperature", "top_k", "top_p",
                                                                          "seed", "max_len", "prefix", "prompt",
                                                                          "chunk", "backend"}
