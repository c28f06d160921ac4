"""Fixtures of the service tests: artifacts exported from tiny models, the app in-process, a real server.

Tests may import models/ to build artifacts; the service (app/) never does. Heavy imports stay inside the
fixtures so that collecting the other test modules does not pay for them.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
# The default backend compiles a model's step program at first load (docs/compiled.md): minutes of CPU. Servers
# the tests start (and inherit this) step through ONNX Runtime; tests/test_compiled.py asks for builds itself.
os.environ.setdefault("ARSERVE_COMPILE", "off")
TEXT_CHARS = "abcdefghijklmnopqrstuvwxyz .,;!?'"  # token i = TEXT_CHARS[i] for text models' vocabularies


def _families() -> list[str]:
    import models

    return sorted(models.REGISTRY)


FAMILIES = _families()


def modality_of(model) -> str:
    if model.dist == "gaussian_mixture":
        return "vector"
    if model.family == "wavenet":
        return "audio"
    return "text" if model.variable_length else "binary_image"


def meta_for(model, name: str) -> dict:
    """Manifest metadata fitting the family's data: what the recipes give the exporter for real models."""
    L, kind = model.length, modality_of(model)
    meta = {"name": name, "modality": kind, "shape": [L], "description": f"tiny random {model.family} (tests)"}
    if kind == "text":
        assert model.vocab_size <= len(TEXT_CHARS), "tiny text vocabulary larger than TEXT_CHARS"
        meta["vocabulary"] = {"chars": TEXT_CHARS[: model.vocab_size]}
    elif kind == "audio":
        meta["vocabulary"] = {"sample_rate": 8000, "mu": 255}
    elif kind == "binary_image":
        h = max(d for d in range(1, int(L**0.5) + 1) if L % d == 0)  # the most square raster
        meta["shape"] = [h, L // h]
        meta["vocabulary"] = {"height": h, "width": L // h}
    meta["metrics"] = {"test_nll_nats": 1.0, "data_dir": "/somewhere/private/data"}  # the path must not leak
    return meta


def _export_all(out: Path) -> None:
    import torch

    import models
    from models.export import export_model

    torch.set_num_threads(1)
    for family in FAMILIES:
        model = models.tiny(family)
        export_model(model, out / f"tiny-{family}", meta_for(model, f"tiny-{family}"))
    # A character model with a long maximum length: streams that outlive a test's reads (disconnect, slots held
    # open) and several streams batched together. An RNN's cost does not grow with its maximum length.
    torch.manual_seed(0)
    model = models.build("lstm", {"vocab_size": 5, "length": 65536, "embed_dim": 4, "hidden_size": 8,
                                  "num_layers": 1, "dropout": 0.0}).eval()
    export_model(model, out / "long-lstm", meta_for(model, "long-lstm"))
    # Folders the registry must skip (logged), without failing the others.
    corrupt = out / "zz-corrupt"
    shutil.copytree(out / "tiny-nade", corrupt)
    manifest = json.loads((corrupt / "manifest.json").read_text())
    manifest["name"] = "corrupt-nade"
    (corrupt / "manifest.json").write_text(json.dumps(manifest))
    with open(corrupt / "model.pt", "r+b") as f:  # one flipped byte in the weights both runtimes read
        f.seek(-100, 2)
        byte = f.read(1)
        f.seek(-100, 2)
        f.write(bytes([byte[0] ^ 0xFF]))
    (out / "zz-empty").mkdir()
    shutil.copytree(out / "tiny-nade", out / ".tiny-nade.export-x1y2")  # an export in progress: ignored


@pytest.fixture(scope="session")
def artifacts(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("exported")
    _export_all(out)
    return out


@pytest.fixture(scope="session")
def anyio_backend():
    return "asyncio"


def service_settings(artifacts: Path, **overrides):
    from app.runtime.config import Settings

    base = dict(model_dir=artifacts, max_batch=8, max_length=600, max_concurrent_streams=16, max_chunk=64,
                model_backends={"tiny-made": "torchscript"}, log_level="warning")
    return Settings(**{**base, **overrides})


@pytest.fixture(scope="session")
async def app(artifacts):
    """The service in-process, its lifespan run by hand (httpx's ASGITransport does not run it)."""
    from app.main import create_app

    application = create_app(service_settings(artifacts))
    async with application.router.lifespan_context(application):
        await application.state.loading
        yield application


@pytest.fixture(scope="session")
async def client(app):
    import httpx

    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://arserve",
                                 timeout=60) as c:
        yield c


@pytest.fixture(scope="session")
def server(artifacts):
    """A real `uvicorn app.main:app` process serving the artifacts (bench.common.serve); yields its base URL."""
    from bench.common import serve

    with serve(artifacts, threads=1, ARSERVE_MAX_CONCURRENT_STREAMS="2") as url:
        yield url


# ----- helpers shared by the service tests (imported as `from conftest import ...`) -----------------------


async def sse_events(client, **params) -> list[tuple[str, dict]]:
    """GET /sample through an httpx client; the whole stream as (event, data) pairs."""
    from httpx_sse import aconnect_sse

    async with aconnect_sse(client, "GET", "/sample", params=params) as source:
        if source.response.status_code != 200:
            await source.response.aread()
            raise AssertionError(f"GET /sample {params}: {source.response.status_code} {source.response.text}")
        return [(e.event, e.json()) async for e in source.aiter_sse()]


def prefix_params(family: str) -> tuple[dict, list]:
    """Query parameters that condition a sample on a short prefix, and the prefix as tokens."""
    import models

    model = models.get_class(family)
    if model.dist == "gaussian_mixture":
        return {"prefix": "0.5,-0.25"}, [0.5, -0.25]
    if model.variable_length and family != "wavenet":
        return {"prompt": "ba"}, [1, 0]
    return {"prefix": "1,0"}, [1, 0]


def wait_ready(proc, url: str, log: Path, timeout: float = 120) -> dict:
    """Wait for a server process started by a test to answer /readyz 200; its body. Fails with the log."""
    import time

    import httpx

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        assert proc.poll() is None, f"the server exited {proc.returncode}:\n{log.read_text()}"
        try:
            r = httpx.get(f"{url}/readyz", timeout=2)
            if r.status_code == 200:
                return r.json()
        except httpx.TransportError:
            pass
        time.sleep(0.2)
    raise AssertionError(f"the server was not ready after {timeout:g} s:\n{log.read_text()}")
