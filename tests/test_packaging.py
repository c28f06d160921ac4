"""What serving needs, and nothing more: `pip install .` (the base dependencies) serves ONNX; torch, onnx,
scikit-learn and the rest are extras that app/ never imports (torch only lazily, for TorchScript).

The install itself, in a fresh environment without torch, runs in scripts/compose-check.sh (it needs PyPI);
here the train side is made unimportable in a subprocess (None in sys.modules), which is what a missing
package looks like to an import statement.
"""

from __future__ import annotations

import ast
import json
import re
import subprocess
import sys
import tomllib

import pytest
from conftest import ROOT

PYPROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
TRAIN_SIDE = ("torch", "onnx", "onnxscript", "onnx_ir", "sklearn", "scipy", "sympy", "tqdm", "transformers", "models")
# import name -> distribution, for the base dependencies whose names differ
DISTRIBUTION = {"PIL": "pillow", "pydantic_settings": "pydantic-settings", "prometheus_client": "prometheus-client",
                "httpx_sse": "httpx-sse", "onnxruntime": "onnxruntime", "starlette": "fastapi"}


def requirement_names(reqs: list[str]) -> set[str]:
    return {re.split(r"[=<>\[ ;]", r, maxsplit=1)[0].lower() for r in reqs}


def _module_level_imports(path) -> set[str]:
    """Top-level package names imported at module level (not inside functions)."""
    names = set()
    for node in ast.parse(path.read_text()).body:
        if isinstance(node, ast.Import):
            names |= {a.name.split(".")[0] for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names.add(node.module.split(".")[0])
    return names


def test_base_dependencies_are_the_serving_side():
    base = requirement_names(PYPROJECT["dependencies"])
    assert not base & {"torch", "onnx", "onnxscript", "scikit-learn", "tqdm", "pytest"}, base
    extras = PYPROJECT["optional-dependencies"]
    assert requirement_names(extras["torch"]) == {"torch"}
    assert {"torch", "onnx", "onnxscript", "scikit-learn"} <= requirement_names(extras["train"]) | {"torch"}
    # dev is the umbrella `make install` installs: every other extra, through arserve[...], except the two
    # heavy ones that .ci/run installs for their own suites with their constraints files (ray, eval)
    umbrella = next(r for r in extras["dev"] if r.startswith("arserve["))
    assert set(umbrella[len("arserve["):-1].split(",")) == set(extras) - {"dev", "ray", "eval"}


def test_app_imports_only_base_dependencies_at_module_level():
    base = requirement_names(PYPROJECT["dependencies"])
    for path in (ROOT / "app").rglob("*.py"):
        if path.name == "ray_serve.py":  # the Ray Serve entry point: the `ray` extra, imported only by Serve
            continue
        for name in _module_level_imports(path) - {"app", "__future__"}:
            if name in sys.stdlib_module_names:
                continue
            assert DISTRIBUTION.get(name, name).lower() in base, f"{path.relative_to(ROOT)} imports {name}"


BLOCK = f"import sys\nfor name in {TRAIN_SIDE!r}:\n    sys.modules[name] = None  # as if not installed\n"


def run_without_train_side(code: str) -> str:
    out = subprocess.run([sys.executable, "-c", BLOCK + code], cwd=ROOT, capture_output=True, text=True,
                         timeout=300)
    assert out.returncode == 0, out.stdout + out.stderr
    return out.stdout


def test_shipped_models_serve_without_the_train_side():
    """The shipped zoo loads, scores and samples with the base dependencies alone (ONNX Runtime): an import of
    anything on the train side would raise ModuleNotFoundError and leave a model skipped or the script failed."""
    out = run_without_train_side("""
import asyncio, json, httpx
from app.main import create_app
from app.runtime.config import Settings

async def main():
    app = create_app(Settings(model_dir="exported", log_level="warning"))
    async with app.router.lifespan_context(app):
        await app.state.loading
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://t") as c:
            ready = (await c.get("/readyz")).json()
            scored = (await c.post("/logprob", json={"model": "lstm-shakespeare", "inputs": ["To be"]})).json()
            sampled = (await c.post("/sample", json={"model": "nade-mnist", "seed": 1})).json()
    print(json.dumps({"ready": ready, "scored": scored, "sampled": sampled}))

asyncio.run(main())
""")
    got = json.loads(out.splitlines()[-1])
    shipped = sorted(p.name for p in (ROOT / "exported").iterdir() if (p / "manifest.json").exists())
    assert got["ready"]["status"] == "ready" and not got["ready"]["skipped"]
    assert len(got["ready"]["models"]) == len(shipped) >= 12
    assert got["scored"]["backend"] == "onnx" and got["scored"]["results"][0]["logprob"] < 0
    assert got["sampled"]["num_tokens"] == 784 and got["sampled"]["png"]


def test_torchscript_without_torch_says_how_to_get_it():
    """ARSERVE_DEFAULT_BACKEND=torchscript where torch is missing: not ready, and /readyz says why and what to do."""
    out = run_without_train_side("""
import asyncio, json, httpx
from app.main import create_app
from app.runtime.config import Settings

async def main():
    app = create_app(Settings(model_dir="exported", default_backend="torchscript", log_level="error"))
    async with app.router.lifespan_context(app):
        await app.state.loading
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://t") as c:
            r = await c.get("/readyz")
            print(json.dumps({"status": r.status_code, "body": r.json()}))

asyncio.run(main())
""")
    got = json.loads(out.splitlines()[-1])
    assert got["status"] == 503 and got["body"]["error"]["message"] == "no model could be loaded"
    reasons = set(got["body"]["skipped"].values())
    assert len(got["body"]["skipped"]) >= 12
    for why in reasons:
        assert "torch is not installed" in why and "arserve[torch]" in why and "--build-arg TORCH=1" in why, why


@pytest.mark.anyio
async def test_sample_timings_are_never_negative(client):
    """No prompt: the prefill took no time, and says 0, not -0.001."""
    for body in ({"model": "tiny-nade", "seed": 3}, {"model": "tiny-lstm", "seed": 3, "max_len": 5}):
        r = await client.post("/sample", json=body)
        assert r.status_code == 200, r.text
        timings = r.json()["timings"]
        assert all(v >= 0 for v in timings.values()), timings
        assert timings["prefill_ms"] == 0, timings
