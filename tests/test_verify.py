"""`arserve verify` and the server's load-time check on hand-made artifacts, correct and deliberately broken.

The artifacts are written as docs/own-model.md tells someone without this project's model code to write them:
torch.onnx.export of two small modules and a hand-written manifest.json. The correct one conforms and is served;
each broken one fails `arserve verify` with its property named, and a real server (`arserve serve`) refuses it at
load with the same message. Then every tiny family the exporter writes conforms, and so does the shipped zoo.
"""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
import warnings
from pathlib import Path

import numpy as np
import pytest
from conftest import wait_ready

ROOT = Path(__file__).resolve().parents[1]
V, L = 4, 16  # vocabulary ("acgt") and maximum length of the hand-made model
CLI = [sys.executable, "-m", "arserve_cli"]


def arserve(*args: str, env: dict | None = None, timeout: float = 600) -> subprocess.CompletedProcess:
    return subprocess.run([*CLI, *args], cwd=ROOT, capture_output=True, text=True, timeout=timeout,
                          env={**os.environ, **(env or {})})


# ----- a hand-made model: decaying token counts, h_i = 0.5 h_{i-1} + onehot(x_{i-1}), logits = W h_i + b ----------


def _modules(seed: int, peek: bool = False, unnormalized: bool = False):
    import torch
    import torch.nn.functional as F
    from torch import nn

    g = torch.Generator().manual_seed(seed)
    W, b, P = (torch.randn(*s, generator=g) for s in ((V, V), (V,), (V, V)))
    i = torch.arange(L).view(-1, 1)
    s = torch.arange(L).view(1, -1)
    decay = torch.where(s < i, 0.5 ** (i - 1 - s).clamp(min=0).float(), torch.zeros(()))  # (L, L) h_i from x_s

    class Score(nn.Module):
        def forward(self, x):  # (B, T) -> (B, T)
            T = x.shape[1]
            onehot = torch.eye(V)[x]  # (B, T, V)
            logits = torch.matmul(decay[:T, :T], onehot) @ W.T + b  # (B, T, V)
            if peek:  # position i also reads x_{i+1}: not autoregressive
                nxt = torch.cat([x[:, 1:], torch.zeros_like(x[:, :1])], dim=1)
                logits = logits + torch.eye(V)[nxt] @ P.T
            lp = logits if unnormalized else F.log_softmax(logits, dim=-1)
            return lp.gather(-1, x.unsqueeze(-1)).squeeze(-1)

    class Step(nn.Module):
        def forward(self, x_prev, pos, h):  # (B,), (B,), (B, V) -> (B, V), (B, V)
            started = (pos > 0).unsqueeze(1)
            h = torch.where(started, 0.5 * h + torch.eye(V)[x_prev], torch.zeros_like(h))
            return h @ W.T + b, h

    return Score().eval(), Step().eval()


def write_artifact(folder: Path, name: str, seed: int = 0, step_seed: int | None = None, state_dim: int = V,
                   **broken) -> Path:
    """score.onnx + step.onnx + manifest.json, the way docs/own-model.md describes a hand-made artifact."""
    import torch

    folder.mkdir(parents=True)
    score, _ = _modules(seed, **broken)
    _, step = _modules(seed if step_seed is None else step_seed)
    x = torch.randint(0, V, (2, 5))
    args = (torch.zeros(2, dtype=torch.long), torch.tensor([0, 1]), torch.zeros(2, V))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)  # the TorchScript-based exporter, as models/export.py
        torch.onnx.export(score, (x,), str(folder / "score.onnx"), input_names=["x"], output_names=["log_prob"],
                          dynamic_axes={"x": {0: "batch", 1: "length"}, "log_prob": {0: "batch", 1: "length"}},
                          opset_version=17, dynamo=False)
        torch.onnx.export(step, args, str(folder / "step.onnx"), input_names=["x_prev", "pos", "h"],
                          output_names=["params", "new_h"], opset_version=17, dynamo=False,
                          dynamic_axes={n: {0: "batch"} for n in ("x_prev", "pos", "h", "params", "new_h")})
    manifest = {
        "format_version": 1, "name": name, "family": "decaying-counts", "modality": "text", "length": L,
        "variable_length": True, "shape": [L], "token_dtype": "int64", "vocab_size": V, "num_params": V,
        "distribution": "categorical", "vocabulary": {"chars": "acgt"},
        "state": [{"name": "h", "shape": ["batch", state_dim], "dtype": "float32"}],
        "io": {"score_inputs": ["x"], "score_outputs": ["log_prob"], "step_inputs": ["x_prev", "pos", "h"],
               "step_outputs": ["params", "new_h"]},
        "files": {f.name: {"sha256": hashlib.sha256(f.read_bytes()).hexdigest(), "bytes": f.stat().st_size}
                  for f in sorted(folder.iterdir())},
        "config": {"seed": seed},
    }
    (folder / "manifest.json").write_text(json.dumps(manifest, indent=2))
    return folder


def _tamper(folder: Path) -> Path:
    with open(folder / "step.onnx", "r+b") as f:  # one flipped byte after the hash was written
        f.seek(-20, 2)
        byte = f.read(1)
        f.seek(-20, 2)
        f.write(bytes([byte[0] ^ 0xFF]))
    return folder


# folder -> (how it is broken, the property that must fail)
BROKEN = {
    "peek": (dict(peek=True), "causal"),
    "unnormalized": (dict(unnormalized=True), "normalized"),
    "state-shape": (dict(state_dim=V + 1), "state"),
    "other-weights": (dict(step_seed=1), "score_step"),
    "tampered": (dict(), "manifest"),
}


@pytest.fixture(scope="module")
def hand_made(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("hand-made")
    write_artifact(root / "good", "good")
    for name, (kwargs, _) in BROKEN.items():
        write_artifact(root / name, name, **kwargs)
    _tamper(root / "tampered")
    return root


@pytest.fixture(scope="module")
def served(hand_made):
    """`arserve serve` (a real uvicorn process) on the hand-made folders; yields (url, /readyz body)."""
    from bench.common import free_port

    port = free_port()
    log = (hand_made / "serve.log").open("w")
    proc = subprocess.Popen([*CLI, "serve", "--model-dir", str(hand_made), "--host", "127.0.0.1", "--port",
                             str(port), "--log-level", "warning"], cwd=ROOT, stdout=log, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    try:
        ready = wait_ready(proc, url, hand_made / "serve.log")
        yield url, ready
    finally:
        proc.terminate()
        proc.wait(20)
        log.close()


def _verify_json(folder: Path, *flags: str) -> tuple[int, dict]:
    done = arserve("verify", str(folder), "--json", *flags)
    assert done.stdout, done.stderr
    return done.returncode, json.loads(done.stdout)["artifacts"][0]


def test_a_hand_made_artifact_conforms_and_is_served(hand_made, served):
    import httpx

    code, report = _verify_json(hand_made / "good")
    assert code == 0 and report["ok"], report
    statuses = {c["property"]: c["status"] for c in report["checks"]}
    assert statuses == {"manifest": "pass", "load": "pass", "state": "pass", "score_step": "pass", "causal": "pass",
                        "normalized": "pass", "batching": "pass", "held_out": "skip", "multi_step": "skip"}
    url, ready = served
    assert ready["models"] == ["good"]
    r = httpx.post(f"{url}/logprob", json={"model": "good", "inputs": ["gattaca"]})
    assert r.status_code == 200 and r.json()["revision"] == r.headers["x-model-revision"] == report["revision"]


@pytest.mark.parametrize("name", list(BROKEN))
def test_a_broken_artifact_fails_its_property_and_the_server_refuses_it(hand_made, served, name):
    prop = BROKEN[name][1]
    code, report = _verify_json(hand_made / name, "--quick")  # the budget the server checks with
    assert code == 1 and not report["ok"]
    failed = {c["property"]: c["detail"] for c in report["checks"] if c["status"] == "FAIL"}
    assert prop in failed, f"{name}: expected {prop} to fail, got {failed}"
    _, ready = served
    refusal = ready["skipped"][name]
    # /readyz never shows server paths (it names the file only); verify, run by the owner, shows the whole path
    detail = failed[prop].replace(f"{hand_made / name}/", "")
    assert detail in refusal, f"the server says {refusal!r}, verify says {failed[prop]!r}"
    if prop != "manifest":
        assert f"{prop}: {failed[prop]}" in refusal  # the property is named beside its message


def test_the_human_report_names_the_failing_property(hand_made):
    done = arserve("verify", str(hand_made / "peek"), str(hand_made / "good"), "--backend", "onnx")
    assert done.returncode == 1
    line = next(row for row in done.stdout.splitlines() if " causal " in row and "FAIL" in row)
    assert "the model sees the future" in line
    assert "1 of 2 artifacts conform; failing: " in done.stderr and "peek" in done.stderr


def test_verify_on_load_off_trusts_the_artifacts(hand_made):
    from app.engine.registry import Registry
    from app.runtime.config import Settings
    from app.runtime.metrics import Metrics

    registry = Registry(Settings(model_dir=hand_made, verify_on_load="off", log_level="error"), Metrics())
    registry.load()
    try:
        assert set(registry.models) == {"good", "peek", "unnormalized", "other-weights", "state-shape"}
        assert set(registry.skipped) == {"tampered"}  # hashes are checked whatever the setting
    finally:
        registry.close()


# ----- the verifier itself, on what the project's exporter writes -------------------------------------------------


def test_every_tiny_family_conforms_on_both_backends(artifacts):
    from app.engine.verify import FULL, verify_backend
    from app.runtime import backends
    from app.runtime.manifest import load_manifest

    folders = sorted(p for p in artifacts.iterdir() if p.name.startswith("tiny-"))
    assert len(folders) >= 10
    for folder in folders:
        m = load_manifest(folder)
        for name in ("onnx", "torchscript"):
            report = verify_backend(backends.load(name, folder, m, threads=1), m, FULL)
            assert report.ok, report.message()


def test_state_problems_names_shapes_and_dtypes():
    """state_problems reads the manifest's declaration in one place: shapes and dtypes, named."""
    from app.engine.verify import state_problems
    from app.runtime.manifest import StateTensor

    class M:
        state = [StateTensor(name="h", shape=["batch", 3], dtype="float32")]

    assert state_problems(M, [np.zeros((2, 3), np.float32)], 2, "step") == []
    [problem] = state_problems(M, [np.zeros((2, 4), np.float32)], 2, "step")
    assert "'h'" in problem and "(2, 4)" in problem and "(2, 3)" in problem
    [problem] = state_problems(M, [np.zeros((2, 3), np.int64)], 2, "init_state")
    assert "int64" in problem and "float32" in problem


def test_every_shipped_model_passes_the_quick_check():
    """The server's load-time budget on the zoo, ONNX Runtime only (the full check is the slow test below)."""
    done = arserve("verify", *sorted(str(p) for p in (ROOT / "exported").glob("[!.]*")), "--quick", "--backend",
                   "onnx", "--no-held-out")
    assert done.returncode == 0, done.stdout + done.stderr


@pytest.mark.slow
def test_every_shipped_model_passes_arserve_verify():
    """`arserve verify exported/*` with its default budget, every backend, and the held-out slice when the data is
    here (a few minutes on a shared 2-core machine)."""
    done = arserve("verify", *sorted(str(p) for p in (ROOT / "exported").glob("[!.]*")), "--json", timeout=1800)
    result = json.loads(done.stdout)
    failing = [c for a in result["artifacts"] for c in a["checks"] if c["status"] == "FAIL"]
    assert done.returncode == 0 and result["ok"], failing
