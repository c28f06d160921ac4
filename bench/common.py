"""What every benchmark section shares: the figure record, medians, the run context and a real server.

A section is a module with `run(ctx: Context) -> list[Figure]`. Every figure carries its unit and the
configuration it was measured under, so the JSON report stands on its own; ratios are figures too (unit "x"),
always computed from two timings taken in the same process run.
"""

from __future__ import annotations

import contextlib
import os
import platform
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


@dataclass(frozen=True)
class Figure:
    section: str  # "generation", "backends", "served", "peer", "wavenet"
    name: str  # what was measured, e.g. "nade-mnist cached"
    value: float
    unit: str  # "tokens/s", "ms", "x", "examples/s", "real-time factor", ...
    config: dict = field(default_factory=dict)  # model, batch, tokens, runtime, repeats, ...

    def to_json(self) -> dict:
        return asdict(self)


@dataclass(frozen=True)
class Context:
    exported: Path  # folder of exported models (one sub-folder each, as the service reads them)
    quick: bool  # a smoke run: few tokens, few repeats, well under a minute in all
    threads: int = 1  # intra-op threads for torch and onnxruntime, in this process and in the server
    repeats: int = 5  # timed repeats per figure (the median is reported)

    def models(self) -> list[Path]:
        return sorted(p for p in self.exported.iterdir() if (p / "manifest.json").is_file()
                      and not p.name.startswith("."))


def median_seconds(fn: Callable[[], object], repeats: int, warmup: int = 1) -> float:
    """Median wall time of fn() over `repeats` calls, after `warmup` untimed ones."""
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def machine() -> str:
    import onnxruntime
    import torch

    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return (f"{cpu}, {os.cpu_count()} cores, Python {platform.python_version()}, torch {torch.__version__}, "
            f"onnxruntime {onnxruntime.__version__}")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextlib.contextmanager
def serve(model_dir: Path, threads: int = 1, cwd: Path = ROOT, **env: str) -> Iterator[str]:
    """A real `uvicorn app.main:app` process serving model_dir on a free port; yields its base URL. `cwd` is the
    checkout whose `app` it runs (bench.load serves a baseline commit's worktree beside the current tree)."""
    import httpx

    port = free_port()
    environ = {**os.environ, "ARSERVE_MODEL_DIR": str(model_dir), "ARSERVE_LOG_LEVEL": "warning",
               "ARSERVE_ORT_INTRA_OP_THREADS": str(threads), "ARSERVE_TORCH_THREADS": str(threads),
               "OMP_NUM_THREADS": str(threads), **env}
    cmd = [sys.executable, "-m", "uvicorn", "app.main:app", "--host", "127.0.0.1", "--port", str(port),
           "--log-level", "warning", "--no-access-log"]
    with tempfile.TemporaryFile("w+") as log:  # a file, not a pipe nobody drains
        proc = subprocess.Popen(cmd, cwd=cwd, env=environ, stdout=log, stderr=subprocess.STDOUT)
        url = f"http://127.0.0.1:{port}"
        try:
            deadline = time.monotonic() + 120
            while True:
                if proc.poll() is not None:
                    log.seek(0)
                    raise RuntimeError(f"uvicorn exited with {proc.returncode}:\n{log.read()}")
                try:
                    if httpx.get(f"{url}/readyz", timeout=1).status_code == 200:
                        break
                except httpx.TransportError:
                    pass
                if time.monotonic() > deadline:
                    raise RuntimeError("uvicorn did not become ready within 120 s")
                time.sleep(0.1)
            yield url
        finally:
            proc.terminate()
            try:
                proc.wait(10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
