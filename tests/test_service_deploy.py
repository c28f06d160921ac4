"""The container files, checked without a Docker engine: `docker-compose config` validates the compose file,
hadolint lints the Dockerfile, and the image's command is the README's serve command (make serve)."""

from __future__ import annotations

import json
import os
import re
import shlex
import shutil
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest
from conftest import ROOT

BIN = Path(sys.executable).parent
PYPROJECT_TORCH = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["optional-dependencies"]["torch"]


def tool(name: str) -> str:
    path = BIN / name if (BIN / name).exists() else shutil.which(name)
    if path is None:
        pytest.skip(f"{name} is not installed (pip install -e '.[dev]')")
    return str(path)


def dockerfile() -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) pairs, continuation lines joined, comments dropped."""
    text = re.sub(r"\\\n", " ", (ROOT / "Dockerfile").read_text())
    out = []
    for line in text.splitlines():
        if line.strip() and not line.lstrip().startswith("#"):
            word, _, rest = line.strip().partition(" ")
            out.append((word.upper(), rest.strip()))
    return out


def test_dockerfile_passes_hadolint():
    r = subprocess.run([tool("hadolint"), "--no-color", "Dockerfile"], cwd=ROOT, capture_output=True, text=True)
    assert r.returncode == 0, r.stdout + r.stderr


def test_dockerfile_shape():
    steps = dockerfile()
    words = [w for w, _ in steps]
    froms = [a for w, a in steps if w == "FROM"]
    assert froms == ["python:3.11-slim AS build", "python:3.11-slim"], "the build stage, then the slim image"
    first_code = min(i for i, (w, a) in enumerate(steps) if w == "COPY" and a.startswith("app"))
    installs = [i for i, (w, a) in enumerate(steps) if w == "RUN" and re.search(r"\bpip\b.* install ", a)]
    assert installs and max(installs) < first_code, "dependencies must be installed before the code is copied"
    user = [a for w, a in steps if w == "USER"]
    assert user and user[-1].split(":")[0] not in ("root", "0"), "the service must not run as root"
    assert words.index("USER") > first_code
    health = [a for w, a in steps if w == "HEALTHCHECK"]
    assert health and "/healthz" in health[0]
    assert any(w == "COPY" and a.startswith("exported") for w, a in steps), "the image serves exported/"
    assert not any(w == "COPY" and a.startswith("models") for w, a in steps), "app/ runs without models/"


def test_image_command_is_the_readme_serve_command():
    """`make serve` and the image run the same launcher (app/serve.py, its limits); make binds 127.0.0.1 unless
    ARSERVE_HOST says otherwise, the image binds every interface of its container."""
    cmd = json.loads([a for w, a in dockerfile() if w == "CMD"][-1])
    assert cmd[:3] == ["python", "-m", "app.serve"]
    assert dict(zip(cmd[3::2], cmd[4::2], strict=True)) == {"--host": "0.0.0.0", "--port": "8000"}
    recipe = re.search(r"^serve:.*\n\t(.+)$", (ROOT / "Makefile").read_text(), re.M).group(1)
    assert "make serve" in (ROOT / "README.md").read_text()
    serve = shlex.split(recipe)
    assert serve[0].endswith("python") and serve[1:] == ["-m", "app.serve"]
    from app.runtime.config import Settings

    defaults = Settings.model_fields
    assert (defaults["host"].default, defaults["port"].default) == ("127.0.0.1", 8000)


def test_compose_file_is_valid():
    defaults = {k: v for k, v in os.environ.items() if not k.startswith("ARSERVE_") and k != "TORCH"}  # the file's own
    r = subprocess.run([tool("docker-compose"), "-f", "docker-compose.yml", "config", "--format", "json"], cwd=ROOT,
                       capture_output=True, text=True, env=defaults)
    assert r.returncode == 0, r.stderr
    service = json.loads(r.stdout)["services"]["arserve"]
    # loopback only by default: the API has no authentication
    assert [(p["host_ip"], str(p["published"]), p["target"]) for p in service["ports"]] == [("127.0.0.1", "8000", 8000)]
    assert service["healthcheck"]["test"][0] == "CMD" and "/readyz" in service["healthcheck"]["test"][-1]
    assert service["healthcheck"]["interval"] == "5s", "healthy within seconds of ready, not after 15 s"
    assert service["stop_grace_period"] == "30s", "longer than the server's drain deadline"
    assert service["image"] == "arserve:0.1.0" and service["build"]["args"] == {"TORCH": "0"}
    assert "volumes" not in service, "the image's own models are served (a mount is opt-in, commented)"
    assert all(k.startswith("ARSERVE_") for k in service["environment"])
    from app.runtime.config import Settings

    drain = float(service["environment"].get("ARSERVE_DRAIN_S", Settings.model_fields["drain_s"].default))
    assert _seconds(service["stop_grace_period"]) > drain + 2, "compose must wait longer than the drain"
    known = {f"ARSERVE_{name.upper()}" for name in Settings.model_fields}
    assert set(service["environment"]) <= known, "compose sets a variable the service does not read"


def test_image_takes_only_the_cpu_torch_build():
    """TORCH=1 installs torch==X+cpu (PyPI has no +cpu version: never the CUDA wheel) and checks it has no CUDA."""
    steps = dockerfile()
    args = dict(a.split("=", 1) for w, a in steps if w == "ARG")
    assert args["TORCH"] == "0" and args["TORCH_INDEX_URL"] == "https://download.pytorch.org/whl/cpu"
    torch_step = next(a for w, a in steps if w == "RUN" and "torch==" in a)
    assert '"torch==${TORCH_VERSION}+cpu"' in torch_step and "torch.version.cuda is None" in torch_step
    assert PYPROJECT_TORCH == [f"torch=={args['TORCH_VERSION']}"], "the image's torch is pyproject.toml's"


def _seconds(duration: str | int | float) -> float:
    """Compose durations: "20s", "1m30s", or nanoseconds as a number (the JSON config form)."""
    if isinstance(duration, int | float):
        return duration / 1e9
    return sum(float(n) * {"h": 3600, "m": 60, "s": 1, "ms": 0.001}[u] for n, u in re.findall(r"([\d.]+)(ms|h|m|s)",
                                                                                                 duration))
