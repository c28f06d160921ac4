"""The `arserve` command: help and its docs page, exit codes, inputs (text, .npy, PNG, WAV), in-process and remote
models, a slim install without torch, and the revision every response carries."""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
import wave
from pathlib import Path

import numpy as np
import pytest
from conftest import ROOT, sse_events
from PIL import Image

CLI = [sys.executable, "-m", "arserve_cli"]
COMMANDS = ["serve", "train", "export", "sample", "score", "models", "verify", "compile"]


def arserve(*args, cwd: Path = ROOT, env: dict | None = None, timeout: float = 300) -> subprocess.CompletedProcess:
    return subprocess.run([*CLI, *map(str, args)], cwd=cwd, capture_output=True, text=True, timeout=timeout,
                          env={**os.environ, **(env or {})})


# ----- help, docs, exit codes --------------------------------------------------------------------------


def test_the_console_script_is_installed_and_every_subcommand_has_help_with_examples():
    script = Path(sys.executable).parent / "arserve"
    assert script.is_file(), "no `arserve` console script: run `pip install -e .` (or `make install`)"
    top = subprocess.run([script, "--help"], capture_output=True, text=True, timeout=60)
    assert top.returncode == 0 and "exit codes:" in top.stdout
    for command in COMMANDS:
        assert command in top.stdout
        done = subprocess.run([script, command, "--help"], capture_output=True, text=True, timeout=60)
        assert done.returncode == 0 and f"usage: arserve {command}" in done.stdout and "examples:" in done.stdout


def test_docs_cli_md_is_generated_from_the_parser():
    done = subprocess.run([sys.executable, "docs/make_cli_docs.py", "--check"], cwd=ROOT, capture_output=True,
                          text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    page = (ROOT / "docs" / "cli.md").read_text()
    for command in COMMANDS:
        assert f"## arserve {command}" in page


def test_usage_errors_exit_2_and_name_the_problem():
    done = arserve("sample")
    assert done.returncode == 2 and "model" in done.stderr
    done = arserve("verify", "exported/nade-mnist", "--backend", "tensorflow")
    assert done.returncode == 2 and "tensorflow" in done.stderr


def test_bad_inputs_exit_3_naming_the_problem(tmp_path):
    done = arserve("export", tmp_path / "missing.pt", tmp_path / "out")
    assert done.returncode == 3 and "missing.pt: no such checkpoint file" in done.stderr
    done = arserve("train", "no-such-recipe")
    assert done.returncode == 3 and "no-such-recipe" in done.stderr and "nade-mnist" in done.stderr  # known ones
    (tmp_path / "empty.py").write_text("x = 1\n")
    done = arserve("export", tmp_path / "missing.pt", tmp_path / "out", "--plugin", tmp_path / "empty.py")
    assert done.returncode == 3 and "defines no ARModel subclass" in done.stderr
    done = arserve("verify", tmp_path)
    assert done.returncode == 1 and "no manifest.json" in done.stdout


def test_an_unreachable_server_exits_4():
    from bench.common import free_port

    done = arserve("models", "--url", f"http://127.0.0.1:{free_port()}")
    assert done.returncode == 4 and "cannot reach the server" in done.stderr


# ----- against a running server --------------------------------------------------------------------------


def test_remote_models_sample_and_score(server):
    done = arserve("models", "--url", server, "--json")
    models = {m["name"]: m for m in json.loads(done.stdout)["models"]}
    assert done.returncode == 0 and len(models["tiny-nade"]["revision"]) == 12
    done = arserve("sample", "tiny-lstm", "--url", server, "--seed", "3", "--max-len", "6", "--json")
    sample = json.loads(done.stdout)
    assert done.returncode == 0 and sample["seed"] == 3 and len(sample["tokens"]) == 6
    done = arserve("score", "tiny-lstm", "--url", server, "--text", sample["text"], "--json")
    assert done.returncode == 0
    assert json.loads(done.stdout)["results"][0]["logprob"] == pytest.approx(sample["logprob"], abs=1e-4)
    done = arserve("score", "no-such-model", "--url", server, "--text", "ab")
    assert done.returncode == 3 and "no model named 'no-such-model'" in done.stderr
    done = arserve("score", "tiny-lstm", "--url", server, "--text", "ab", "--prefix-len", "5")
    assert done.returncode == 3 and "prefix_len" in done.stderr  # the server's 422, passed on


# ----- in-process (a model folder) and input files ---------------------------------------------------------


def test_an_image_sampled_to_png_scores_its_own_logprob(artifacts, tmp_path):
    png = tmp_path / "x.png"
    done = arserve("sample", artifacts / "tiny-nade", "--seed", "5", "-o", png)
    assert done.returncode == 0, done.stderr
    logprob = float(done.stderr.split("log p = ")[1].split()[0])
    assert Image.open(png).size == (4, 2) and set(done.stdout.strip().replace("\n", "")) <= {"#", "."}
    done = arserve("score", artifacts / "tiny-nade", png, "--json")
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout)["results"][0]["logprob"] == pytest.approx(logprob, abs=1e-3)


def test_score_reads_npy_batches_text_files_and_refuses_a_wrong_image(artifacts, tmp_path):
    batch = np.array([[0, 1, 0, 1, 1, 0, 0, 1], [1, 1, 1, 1, 0, 0, 0, 0], [0] * 8])
    np.save(tmp_path / "batch.npy", batch)
    (tmp_path / "tokens.txt").write_text("0 1 0 1, 1 0 0 1\n")
    done = arserve("score", artifacts / "tiny-nade", tmp_path / "batch.npy", tmp_path / "tokens.txt", "--json")
    assert done.returncode == 0, done.stderr
    results = json.loads(done.stdout)["results"]
    assert [r["input"] for r in results][-1] == str(tmp_path / "tokens.txt") and len(results) == 4
    assert results[0]["logprob"] == results[3]["logprob"]  # the same x, from an array row and from text
    Image.new("L", (28, 28)).save(tmp_path / "big.png")
    done = arserve("score", artifacts / "tiny-nade", tmp_path / "big.png")
    assert done.returncode == 3 and "28x28 pixels; tiny-nade takes 4x2 images" in done.stderr


def test_score_reads_wav_at_the_models_rate(artifacts, tmp_path):
    def wav(path: Path, rate: int, samples: np.ndarray) -> Path:
        with wave.open(str(path), "wb") as w:
            w.setnchannels(1)
            w.setsampwidth(2)
            w.setframerate(rate)
            w.writeframes(samples.astype("<i2").tobytes())
        return path

    tone = (8000 * np.sin(np.arange(40) / 3)).astype(np.int16)
    done = arserve("score", artifacts / "tiny-wavenet", wav(tmp_path / "a.wav", 8000, tone), "--truncate", "--json")
    assert done.returncode == 0, done.stderr
    model = json.loads((artifacts / "tiny-wavenet" / "manifest.json").read_text())
    assert json.loads(done.stdout)["results"][0]["num_positions"] == min(40, model["length"])
    done = arserve("score", artifacts / "tiny-wavenet", wav(tmp_path / "b.wav", 16000, tone))
    assert done.returncode == 3 and "16000 Hz; tiny-wavenet takes 8000 Hz audio" in done.stderr


def test_models_reads_folders_with_their_revisions(artifacts):
    done = arserve("models", "--model-dir", artifacts, "--json")
    body = json.loads(done.stdout)
    revisions = {m["name"]: m["revision"] for m in body["models"]}
    manifest = (artifacts / "tiny-nade" / "manifest.json").read_bytes()
    assert revisions["tiny-nade"] == hashlib.sha256(manifest).hexdigest()[:12]
    assert "sha256 mismatch" in body["problems"]["zz-corrupt"]


# ----- a slim install: no torch, no models/ ----------------------------------------------------------------

SLIM = """
import sys
sys.modules["torch"] = None  # importing either now fails, as on an install without them
sys.modules["models"] = None
from arserve_cli.main import main
code = main(sys.argv[1:])
assert "torch" not in sys.modules or sys.modules["torch"] is None
sys.exit(code)
"""


def test_serve_verify_score_work_without_torch_and_export_names_what_is_missing(artifacts):
    def slim(*args):
        return subprocess.run([sys.executable, "-c", SLIM, *map(str, args)], cwd=ROOT, capture_output=True,
                              text=True, timeout=300)

    done = slim("verify", artifacts / "tiny-gru", "--json")
    assert done.returncode == 0, done.stdout + done.stderr
    checks = json.loads(done.stdout)["artifacts"][0]["checks"]
    assert {(c["backend"], c["status"]) for c in checks if c["property"] == "load"} == {
        ("onnx", "pass"), ("torchscript", "skip")}
    done = slim("score", artifacts / "tiny-nade", "--json", "--text", "x")
    assert done.returncode == 3 and "tiny-nade is a binary_image model" in done.stderr
    done = slim("sample", artifacts / "tiny-nade", "--seed", "1", "--json")
    assert done.returncode == 0 and json.loads(done.stdout)["backend"] == "onnx"
    assert slim("serve", "--help").returncode == 0
    done = slim("export", "a.pt", "out")
    assert done.returncode == 5 and "arserve export needs torch, which is not installed" in done.stderr


# ----- the revision in every response ---------------------------------------------------------------------


@pytest.mark.anyio
async def test_every_answer_about_a_model_carries_its_revision(client, artifacts):
    revision = hashlib.sha256((artifacts / "tiny-nade" / "manifest.json").read_bytes()).hexdigest()[:12]
    models = {m["name"]: m for m in (await client.get("/models")).json()["models"]}
    assert models["tiny-nade"]["revision"] == revision
    r = await client.post("/logprob", json={"model": "tiny-nade", "inputs": [[0, 1, 0, 1, 1, 0, 0, 1]]})
    assert r.json()["revision"] == r.headers["x-model-revision"] == revision
    r = await client.post("/sample", json={"model": "tiny-nade", "seed": 0})
    assert r.json()["revision"] == r.headers["x-model-revision"] == revision
    events = await sse_events(client, model="tiny-nade", seed=0)
    assert events[-1][1]["revision"] == revision
    async with client.stream("GET", "/sample", params={"model": "tiny-nade", "seed": 0}) as stream:
        assert stream.headers["x-model-revision"] == revision
    r = await client.post("/logprob", json={"model": "tiny-nade", "inputs": [[7]]})  # refused, still this model's
    assert r.status_code == 422 and r.headers["x-model-revision"] == revision
    assert "x-model-revision" not in (await client.get("/healthz")).headers
    lstm = hashlib.sha256((artifacts / "tiny-lstm" / "manifest.json").read_bytes()).hexdigest()[:12]
    r = await client.post("/v1/completions", json={"model": "tiny-lstm", "prompt": "ab", "max_tokens": 2, "seed": 0})
    assert r.status_code == 200 and r.headers["x-model-revision"] == lstm  # the OpenAI-compatible routes too


def test_a_replaced_model_gets_a_new_revision(artifacts, tmp_path):
    import shutil

    from app.runtime.manifest import revision

    copy = tmp_path / "tiny-nade"
    shutil.copytree(artifacts / "tiny-nade", copy)
    before = revision(copy)
    manifest = json.loads((copy / "manifest.json").read_text())
    manifest["description"] = "retrained"
    (copy / "manifest.json").write_text(json.dumps(manifest))
    assert revision(copy) != before
