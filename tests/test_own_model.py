"""docs/own-model.md's worked example, end to end, by the guide's own commands.

The `arserve` lines of the guide's marked block run in order, in a fresh folder holding a copy of examples/:
define (examples/ema_mlp.py) -> train briefly -> arserve export -> arserve verify (passes) -> arserve serve (a real
uvicorn process, in the background) -> arserve models, sample and score against it. Only the port is changed.
"""

from __future__ import annotations

import math
import re
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import wait_ready

ROOT = Path(__file__).resolve().parents[1]
GUIDE = ROOT / "docs" / "own-model.md"
GUIDE_PORT = "8001"


def guide_commands() -> list[str]:
    """The `arserve` lines of the block after the guide's e2e marker."""
    text = GUIDE.read_text()
    start = text.index("```bash", text.index("<!-- e2e:")) + len("```bash")
    block = text[start : text.index("```", start)]
    return [line.strip() for line in block.splitlines() if line.strip().startswith("arserve ")]


def arserve_script() -> str:
    found = shutil.which("arserve", path=str(Path(sys.executable).parent))
    assert found, "no `arserve` console script beside this Python: run `pip install -e .` (or `make install`)"
    return found


def test_the_guide_runs_the_whole_path():
    assert [shlex.split(c)[1] for c in guide_commands()] == [
        "train", "export", "verify", "serve", "models", "sample", "score"]


def test_the_guides_example_end_to_end(tmp_path):
    from models.data import DataUnavailable, shakespeare

    try:
        shakespeare()
    except DataUnavailable as e:
        pytest.skip(f"real data not available: {e}")
    from bench.common import free_port

    shutil.copytree(ROOT / "examples", tmp_path / "examples")
    port = str(free_port())
    script = arserve_script()
    out: dict[str, subprocess.CompletedProcess] = {}
    server = None
    try:
        for line in guide_commands():
            argv = [script, *shlex.split(line.replace(GUIDE_PORT, port))[1:]]
            if argv[-1] == "&":
                log = (tmp_path / "serve.log").open("w")
                server = subprocess.Popen(argv[:-1], cwd=tmp_path, stdout=log, stderr=subprocess.STDOUT)
                wait_ready(server, f"http://127.0.0.1:{port}", tmp_path / "serve.log")
                continue
            done = subprocess.run(argv, cwd=tmp_path, capture_output=True, text=True, timeout=900)
            assert done.returncode == 0, f"{line}\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}"
            out[argv[1]] = done
        _check_outputs(out, tmp_path)
        # the sample's own log-prob is what /logprob gives its text after the prompt
        logprob = float(re.search(r"log p = (-?[\d.]+) nats", out["sample"].stderr).group(1))
        text = out["sample"].stdout.rstrip("\n")
        rescored = subprocess.run([script, "score", "ema-shakespeare", "--url", f"http://127.0.0.1:{port}", "--text",
                                   text, "--prefix-len", str(len("ROMEO:")), "--json"], cwd=tmp_path,
                                  capture_output=True, text=True, timeout=120)
        assert rescored.returncode == 0, rescored.stderr
        import json

        assert math.isclose(json.loads(rescored.stdout)["results"][0]["logprob"], logprob, abs_tol=1e-3)
    finally:
        if server is not None:
            server.terminate()
            server.wait(20)


def _check_outputs(out: dict, folder: Path) -> None:
    assert (folder / "runs" / "ema-shakespeare" / "final.pt").is_file()
    assert {p.name for p in (folder / "my-models" / "ema-shakespeare").iterdir()} >= {
        "manifest.json", "score.onnx", "step.onnx", "model.pt"}
    verify = out["verify"].stdout
    assert "ema-shakespeare" in verify and "conforms" in verify and "FAIL" not in verify
    assert re.search(r"onnx\s+held_out\s+pass", verify), verify  # the check slice reproduces
    revision = re.search(r"revision ([0-9a-f]{12})", verify).group(1)
    assert revision in out["models"].stdout and "ema_mlp" in out["models"].stdout
    sample = out["sample"]
    assert sample.stdout.startswith("ROMEO:") and len(sample.stdout.rstrip("\n")) == len("ROMEO:") + 200
    assert f"revision {revision}" in sample.stderr
    row = out["score"].stdout.splitlines()[1].split()
    logprob, bits, positions = float(row[1]), float(row[2]), int(row[3])
    assert positions == len("To be, or not to be, that is the question.") and logprob < 0
    assert math.isclose(bits, -logprob / positions / math.log(2), rel_tol=1e-4)  # 6 digits printed
