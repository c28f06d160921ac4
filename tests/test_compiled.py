"""The compiled step (docs/compiled.md): step.pt2 exported with the weights as inputs and held to the exporter's
parity gate run eagerly; the "compiled" backend falling back to ONNX Runtime, logged, wherever it cannot compile;
and (marked slow: it runs the C++ compiler for minutes) a real build served over HTTP.

The default suite never compiles: every backend here runs with ARSERVE_COMPILE off or cached with an empty cache.
"""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
import zipfile
from pathlib import Path

import numpy as np
import pytest
from conftest import ROOT

SHIPPED = ROOT / "exported" / "wavenet-fsdd"


def _weights(folder: Path) -> dict:
    from models.runtimes import TorchScriptRuntime

    return TorchScriptRuntime(folder / "model.pt").module.state_dict()


@pytest.mark.parametrize("folder", [SHIPPED, "tiny-wavenet"], ids=["shipped", "tiny"])
def test_step_program_is_declared_and_holds_no_weight(folder, artifacts):
    from app.runtime.manifest import load_manifest

    folder = folder if isinstance(folder, Path) else artifacts / folder
    m = load_manifest(folder)
    p = m.step_program
    assert p is not None and p.file in m.files and p.weights_file == "model.pt"
    weights = _weights(folder)
    assert all(name in weights for name in p.weights)
    with zipfile.ZipFile(folder / p.file) as zf:  # model.pt holds the weights; the program only names them
        stored = b"".join(zf.read(i) for i in zf.infolist())
    big = [weights[n] for n in p.weights if weights[n].numel() * 4 >= 256]
    assert big and not any(w.numpy().tobytes() in stored for w in big)


def test_shipped_program_run_eagerly_draws_what_onnx_draws():
    """The exporter's gate on the shipped artifact: step.pt2 run eagerly (no compile) against ONNX Runtime, the
    seeded step loop with the queues written in place, and one step from a random state at far positions."""
    from app.runtime.manifest import load_manifest
    from models.export import check_close, check_tokens
    from models.runtimes import OnnxRuntime, ProgramRuntime, step_loop

    m = load_manifest(SHIPPED)
    program, onnx = ProgramRuntime(SHIPPED, m.state, m.step_program), OnnxRuntime(SHIPPED, m.state, threads=1)
    for temperature, batch in ((0.0, 1), (1.0, 3)):
        want = step_loop(onnx, m.distribution, np.int64, batch, 48, 7, temperature, [True])
        got = step_loop(program, m.distribution, np.int64, batch, 48, 7, temperature, [True])
        check_tokens("step.pt2", want[0], got[0])
        check_close("step.pt2 params", want[1], got[1])
    rng = np.random.default_rng(0)
    pos = np.array([m.length - 1, 0, m.length // 2])
    x_prev = rng.integers(0, 256, 3)
    start = rng.standard_normal((3, *m.state[0].shape[1:])).astype(np.float32)
    want_params, (want_state,) = onnx.step(x_prev, pos, [start.copy()])
    kept = start.copy()
    got_params, _ = program.step(x_prev, pos, [kept])
    check_close("step.pt2 params from a random state", want_params, got_params)
    check_close("step.pt2 queues, written in place", want_state, kept)


def test_a_program_that_disagrees_fails_the_export(tmp_path, monkeypatch):
    import models
    from models.export import ExportError, export_model, placeholder_meta
    from models.runtimes import ProgramRuntime

    step = ProgramRuntime.step
    monkeypatch.setattr(ProgramRuntime, "step", lambda self, *a: (lambda p, s: (p + 1e-3, s))(*step(self, *a)))
    model = models.tiny("wavenet")
    with pytest.raises(ExportError, match=r"step_program step loop .*(drew|params is off)"):
        export_model(model, tmp_path / "wn", placeholder_meta(model, "wn"))
    assert not (tmp_path / "wn").exists()


@pytest.mark.parametrize("mode", ["off", "cached"])
def test_compiled_backend_falls_back_to_onnx_logged(mode, artifacts, tmp_path, caplog):
    """Without a build (cached, empty cache) or with compiling off, the compiled backend steps through ONNX
    Runtime: the same params and in-place state as the onnx backend, and a warning that says why."""
    from app.runtime.backends import CompiledBackend, OnnxBackend
    from app.runtime.manifest import load_manifest

    folder = artifacts / "tiny-wavenet"
    m = load_manifest(folder)
    with caplog.at_level(logging.WARNING, logger="arserve"):
        backend = CompiledBackend(folder, m, mode=mode, cache=tmp_path / "cache")
    assert backend.programs is None and backend.ready.is_set() and backend.status.startswith("onnx: ")
    assert "no compiled step" in caplog.text and ("ARSERVE_COMPILE=off" if mode == "off" else "no build") in caplog.text
    assert not (tmp_path / "cache").exists()  # nothing was built
    onnx = OnnxBackend(folder, m)
    pos = np.array([3, 0, 17])
    for b in (backend, onnx):
        state = b.init_state(3)
        state[0][...] = np.random.default_rng(1).standard_normal(state[0].shape)
        params, _ = b.step(np.array([1, 2, 3]), pos, state)
        b.result = (params, state[0])
    np.testing.assert_array_equal(backend.result[0], onnx.result[0])
    np.testing.assert_array_equal(backend.result[1], onnx.result[1])


def test_no_compiler_means_no_build_but_onnx_stepping(artifacts, tmp_path, monkeypatch, caplog):
    from app.runtime.backends import CompiledBackend
    from app.runtime.manifest import load_manifest

    monkeypatch.setenv("PATH", str(tmp_path))  # no g++, c++ or clang++ on it
    monkeypatch.delenv("CXX", raising=False)
    with caplog.at_level(logging.WARNING, logger="arserve"):
        backend = CompiledBackend(artifacts / "tiny-wavenet", load_manifest(artifacts / "tiny-wavenet"), mode="auto",
                                  cache=tmp_path / "cache")
    assert backend.status == "onnx: no C++ compiler (g++) on PATH" and backend.ready.is_set()
    assert "no compiled step (no C++ compiler" in caplog.text and not (tmp_path / "cache").exists()


def test_a_background_build_that_fails_leaves_onnx_stepping(artifacts, tmp_path, caplog):
    """ARSERVE_COMPILE=auto builds in a child process while ONNX Runtime steps; a build that fails (here: the
    cache path is a file, so the child cannot write its entry) is logged with the child's last words."""
    from app.runtime.backends import CompiledBackend, OnnxBackend
    from app.runtime.manifest import load_manifest

    folder = artifacts / "tiny-wavenet"
    m = load_manifest(folder)
    blocker = tmp_path / "cache"
    blocker.write_text("not a folder")
    with caplog.at_level(logging.INFO, logger="arserve"):
        backend = CompiledBackend(folder, m, mode="auto", cache=blocker)
        assert backend.status in ("building", "compiled") or backend.status.startswith("onnx: ")
        state, want = backend.init_state(1), OnnxBackend(folder, m).init_state(1)
        x, pos = np.array([0]), np.array([0])
        np.testing.assert_array_equal(backend.step(x, pos, state)[0], OnnxBackend(folder, m).step(x, pos, want)[0])
        assert backend.ready.wait(300), "the build neither finished nor failed"
    assert backend.programs is None and backend.status.startswith("onnx: build failed")
    assert "compiling its step in the background" in caplog.text and "no compiled step (build failed" in caplog.text


def test_server_without_torch_serves_the_compiled_backend_through_onnx(artifacts, tmp_path):
    """The slim install's case with the default settings: torch cannot be imported, so the default backend of a
    model with a step program, "compiled", is ONNX, logged, and every model is still served; models without a
    step program default to onnx."""
    import httpx

    from bench.common import server_process

    fake = tmp_path / "no-torch" / "torch"
    fake.mkdir(parents=True)
    (fake / "__init__.py").write_text("raise ModuleNotFoundError(\"No module named 'torch'\", name='torch')\n")
    env = {"PYTHONPATH": f"{fake.parent}{os.pathsep}{ROOT}", "ARSERVE_COMPILE": "auto",  # the defaults
           "ARSERVE_LOG_LEVEL": "info", "ARSERVE_COMPILE_CACHE": str(tmp_path / "cache")}
    with server_process(artifacts, **env) as (url, proc):
        models = {m["name"]: m for m in httpx.get(f"{url}/models").json()["models"]}
        assert models["tiny-wavenet"]["default_backend"] == "compiled"
        assert models["tiny-wavenet"]["compiled_step"].startswith("onnx: torch is not installed")
        assert models["tiny-nade"]["default_backend"] == "onnx" and "compiled" not in models["tiny-nade"]["backends"]
        onnx = httpx.post(f"{url}/sample", json={"model": "tiny-wavenet", "seed": 5, "backend": "onnx"}).json()
        compiled = httpx.post(f"{url}/sample", json={"model": "tiny-wavenet", "seed": 5}).json()
        assert compiled["tokens"] == onnx["tokens"] and len(onnx["tokens"]) > 0
        proc.log.seek(0)
        assert "tiny-wavenet: no compiled step (torch is not installed" in proc.log.read()
    assert not (tmp_path / "cache").exists()


@pytest.mark.slow
def test_compiled_wavenet_through_a_real_server(tmp_path):
    """A server with ARSERVE_COMPILE=auto serves the shipped WaveNet through ONNX Runtime while it compiles its step
    in the background into a temporary cache, then steps with the build (checked against ONNX Runtime first);
    seeded samples through HTTP draw the very tokens the onnx backend draws, with log-probs within 1e-4.
    `arserve compile` then finds the build in the cache."""
    import time

    from app.client import ArserveClient
    from bench.common import server_process

    models_dir, cache = tmp_path / "models", tmp_path / "cache"
    models_dir.mkdir()
    (models_dir / SHIPPED.name).symlink_to(SHIPPED)
    env = {"ARSERVE_COMPILE": "auto", "ARSERVE_COMPILE_CACHE": str(cache), "ARSERVE_LOG_LEVEL": "info",
           "ARSERVE_MODEL_BACKENDS": json.dumps({"wavenet-fsdd": "compiled"})}
    with server_process(models_dir, **env) as (url, _), ArserveClient(url, timeout=120) as client:
        assert client.models()[0]["compiled_step"] == "building"
        early = _tokens(client.sample("wavenet-fsdd", seed=1, max_len=50))  # served meanwhile, through ONNX
        deadline = time.monotonic() + 2400
        while (status := client.models()[0]["compiled_step"]) == "building" and time.monotonic() < deadline:
            time.sleep(5)
        assert status == "compiled"
        assert _tokens(client.sample("wavenet-fsdd", seed=1, max_len=50))[0] == early[0]
        for seed, temperature in ((3, 1.0), (4, 0.0), (5, 0.8)):
            body = {"seed": seed, "temperature": temperature, "max_len": 400, "chunk": 50}
            onnx, compiled = (_tokens(client.sample("wavenet-fsdd", backend=b, **body))
                              for b in ("onnx", "compiled"))
            assert compiled[0] == onnx[0] and len(onnx[0]) == 400
            np.testing.assert_allclose(compiled[1], onnx[1], atol=1e-4, rtol=1e-5)
    done = subprocess.run([sys.executable, "-m", "arserve_cli", "compile", str(SHIPPED), "--cache", str(cache)],
                          capture_output=True, text=True, timeout=600, cwd=ROOT)
    assert done.returncode == 0, done.stderr[-2000:]
    build = Path(done.stdout.split(": ", 1)[1].strip())
    assert build.parent == cache and json.loads((build / "build.json").read_text())["model"] == "wavenet-fsdd"


def _tokens(events) -> tuple[list, list]:
    """(tokens, per-token log-probs) of a GET /sample stream."""
    tokens, logprobs = [], []
    for e in events:
        if e.event == "token":
            tokens += e.data["tokens"]
            logprobs += e.data["logprobs"]
    return tokens, logprobs
