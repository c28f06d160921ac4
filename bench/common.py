"""What every benchmark section shares: the figure record, medians, the run context and a real server.

A section is a module with `run(ctx: Context) -> list[Figure]`. Every figure carries its unit and the
configuration it was measured under, so the JSON report stands on its own; ratios are figures too (unit "x"),
always computed from two timings taken in the same process run.
"""

from __future__ import annotations

import contextlib
import json
import logging
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
log = logging.getLogger(__name__)


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
    baseline: str | None = None  # a commit served beside this tree by the sections that compare with one

    def models(self) -> list[Path]:
        return sorted(p for p in self.exported.iterdir() if (p / "manifest.json").is_file()
                      and not p.name.startswith("."))


def median_seconds(fn: Callable[[], object], repeats: int, warmup: int = 1,
                   clock: Callable[[], float] = time.perf_counter) -> float:
    """Median time of fn() over `repeats` calls, after `warmup` untimed ones: wall time, or the given clock's
    (time.thread_time: CPU time of the calling thread)."""
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeats):
        t0 = clock()
        fn()
        times.append(clock() - t0)
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


def wait_ready(url: str, seconds: float = 120) -> None:
    """Poll url/readyz until it answers 200 (a server started elsewhere, e.g. behind Ray's proxy)."""
    import httpx

    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        try:
            if httpx.get(f"{url}/readyz", timeout=2).status_code == 200:
                return
        except httpx.TransportError:
            pass
        time.sleep(0.5)
    raise TimeoutError(f"{url} was not ready within {seconds} s")


@contextlib.contextmanager
def serve(model_dir: Path, threads: int = 1, cwd: Path = ROOT, **env: str) -> Iterator[str]:
    """A real server process (`python -m app.serve`, the launcher `make serve` runs) serving model_dir on a free
    port; yields its base URL. `cwd`: the source tree whose app/ it runs (another commit's, to measure a baseline
    beside this one; a tree older than the launcher runs `uvicorn app.main:app`)."""
    with server_process(model_dir, threads, cwd=cwd, **env) as (url, _):
        yield url


@contextlib.contextmanager
def server_process(model_dir: Path, threads: int = 1, nofile: int | None = None, cwd: Path = ROOT,
                   **env: str) -> Iterator[tuple[str, subprocess.Popen]]:
    """serve(), yielding the process too (to signal it); `nofile` caps its file descriptors (soft and hard)."""
    import httpx

    port = free_port()
    environ = {**os.environ, "ARSERVE_MODEL_DIR": str(model_dir), "ARSERVE_LOG_LEVEL": "warning",
               "ARSERVE_ORT_INTRA_OP_THREADS": str(threads), "ARSERVE_TORCH_THREADS": str(threads),
               "OMP_NUM_THREADS": str(threads),
               # a compiled step (docs/compiled.md) only where it is built already: no build while measuring
               "ARSERVE_COMPILE": os.environ.get("ARSERVE_COMPILE", "cached"), **env}
    cmd = [sys.executable, "-m", "app.serve", "--host", "127.0.0.1", "--port", str(port)]
    if not (Path(cwd) / "app" / "serve.py").is_file():  # a baseline tree from before the launcher
        cmd = [sys.executable, "-m", "uvicorn", "app.main:app", "--host", "127.0.0.1", "--port", str(port),
               "--log-level", "warning", "--no-access-log"]

    def limit_fds() -> None:
        import resource

        resource.setrlimit(resource.RLIMIT_NOFILE, (nofile, nofile))

    with tempfile.TemporaryFile("w+") as log:  # a file, not a pipe nobody drains
        proc = subprocess.Popen(cmd, cwd=cwd, env=environ, stdout=log, stderr=subprocess.STDOUT,
                                preexec_fn=limit_fds if nofile else None)
        proc.log = log  # its output so far: log.seek(0); log.read()
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
            yield url, proc
        finally:
            proc.terminate()
            try:
                proc.wait(10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()


def compile_cache() -> Path:
    """Where the servers started here find compiled steps: the server's own default, or ARSERVE_COMPILE_CACHE."""
    from app.runtime import compiled

    return Path(os.environ.get("ARSERVE_COMPILE_CACHE") or compiled.default_cache())


def prepare_compiled(folders: list[Path], build: bool) -> dict[str, str]:
    """model -> how the servers started here step it: "compiled" (a build for this machine is in compile_cache(),
    made now if `build`: minutes, once per machine and artifact) or "onnx: why not". ARSERVE_COMPILE=off: none."""
    from app.runtime import compiled
    from app.runtime.manifest import load_manifest

    cache, out = compile_cache(), {}
    for folder in folders:
        m = load_manifest(folder)
        if m.step_program is None:
            continue
        why = "ARSERVE_COMPILE=off" if os.environ.get("ARSERVE_COMPILE") == "off" else compiled.why_not(m)
        if not why and build and compiled.cached(folder, m, cache) is None:
            why = compiled.why_no_build(m)
            if not why:
                log.info("%s: compiling its step into %s (once per machine: minutes)", m.name, cache)
                try:
                    compiled.build_in_child(folder, cache)
                except compiled.CompileUnavailable as e:
                    why = str(e)
        if not why and compiled.cached(folder, m, cache) is None:
            why = f"no build in {cache} (`arserve compile`, or python -m bench --compile build)"
        out[m.name] = "compiled" if not why else f"onnx: {why}"
        log.info("%s steps %s here", m.name, out[m.name])
    return out


def write_report(out: str | Path, data: dict, md: str) -> None:
    """A standalone benchmark's report: <out>.json (every figure) and <out>.md (its table), the table printed."""
    Path(f"{out}.json").write_text(json.dumps(data, indent=2) + "\n")
    Path(f"{out}.md").write_text(md)
    print(md)
