"""The compiled step against ONNX Runtime, interleaved in one run (docs/compiled.md).

    python -m bench.compiled                           # wavenet-fsdd: builds into the cache first if needed
    python -m bench.compiled --quick                   # two rounds, a 1 s clip

Two figures:

- step: microseconds per `step` call at B = 1 and 16 (rows at different positions in the first quarter of the
  context, "slots" state written in place in preallocated buffers), through the service's backends: "onnx"
  (ONNX Runtime, IOBinding) and "compiled" (the AOTInductor build from the cache). CPU time of the calling
  thread (both run there with one thread), the median of `--rounds` rounds taken in alternation.
- http: one stream through a real server (`python -m app.serve`, the model alone in its folder, the compiled
  build taken from the cache): GET /sample of `--samples` samples at `chunk` 256, backend onnx and compiled in
  alternation; the real-time factor is samples per wall second over the sample rate (8 kHz).

The machine is shared: compare the two columns of one run, not runs. Results: bench/results/compiled.{json,md}.
"""

from __future__ import annotations

import argparse
import logging
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from app.runtime import compiled
from app.runtime.backends import CompiledBackend, OnnxBackend
from app.runtime.manifest import load_manifest
from bench.common import server_process, write_report

log = logging.getLogger("bench.compiled")
ROOT = Path(__file__).resolve().parents[1]
MODELS = ["wavenet-fsdd"]
BATCHES = [1, 16]


def step_timer(backend, m, B: int):
    state = backend.init_state(B)
    pos = (np.arange(B, dtype=np.int64) * 97 + m.length // 4) % m.length
    x_prev = np.random.default_rng(0).integers(0, m.vocab_size or 2, B).astype(m.token_dtype)

    def one():
        backend.step(x_prev, pos, state)

    return one


def per_call(fn, calls: int) -> float:
    """Median CPU seconds of this thread per call, over 5 batches of `calls` calls (after a warm-up)."""
    fn()
    times = []
    for _ in range(5):
        start = time.thread_time()
        for _ in range(calls):
            fn()
        times.append((time.thread_time() - start) / calls)
    return statistics.median(times)


def bench_steps(folder: Path, cache: Path, rounds: int) -> dict:
    m = load_manifest(folder)
    onnx = OnnxBackend(folder, m, threads=1)
    fast = CompiledBackend(folder, m, threads=1, mode="cached", cache=cache)
    if fast.programs is None:
        raise SystemExit(f"no compiled step for {m.name}: {fast.status}")
    out = {}
    for B in BATCHES:
        timers = {"onnx": step_timer(onnx, m, B), "compiled": step_timer(fast, m, B)}
        seen = {k: [] for k in timers}
        for _ in range(rounds):
            for name, fn in timers.items():
                seen[name].append(per_call(fn, 200) * 1e6)
        out[B] = {name: statistics.median(v) for name, v in seen.items()}
        log.info("%s step B=%d: onnx %.0f us, compiled %.0f us", m.name, B, out[B]["onnx"], out[B]["compiled"])
    return out


def bench_http(folder: Path, cache: Path, rounds: int, samples: int) -> dict:
    import httpx

    m = load_manifest(folder)
    rate = m.vocabulary.sample_rate or 8000
    with tempfile.TemporaryDirectory() as tmp:
        (Path(tmp) / folder.name).symlink_to(folder.resolve())
        env = {"ARSERVE_COMPILE": "cached", "ARSERVE_COMPILE_CACHE": str(cache), "ARSERVE_MAX_LENGTH": str(samples),
               "ARSERVE_STREAM_TIMEOUT_S": "3600"}
        with server_process(Path(tmp), **env) as (url, _):
            seen = {"onnx": [], "compiled": []}
            with httpx.Client(base_url=url, timeout=3600) as http:
                for _ in range(2):  # warm-up: loads each backend (the compiled one checks itself against ONNX)
                    for name in seen:
                        _stream(http, m.name, name, 64)
                status = http.get("/models").json()["models"][0].get("compiled_step")
                if status != "compiled":
                    raise SystemExit(f"the server does not step {m.name} compiled: {status}")
                for r in range(rounds):
                    for name in seen:
                        seconds = _stream(http, m.name, name, samples, seed=r)
                        seen[name].append(samples / seconds / rate)
            log.info("%s one stream through HTTP: %s", m.name, {k: [round(x, 2) for x in v] for k, v in seen.items()})
    return {name: {"median": statistics.median(v), "all": v} for name, v in seen.items()}


def _stream(http, model: str, backend: str, samples: int, seed: int = 0) -> float:
    """Wall seconds of one GET /sample stream of `samples` samples, read to its `done` event."""
    params = {"model": model, "backend": backend, "max_len": samples, "chunk": 256, "seed": seed}
    start = time.perf_counter()
    with http.stream("GET", "/sample", params=params) as r:
        r.raise_for_status()
        for line in r.iter_lines():
            if line.startswith("event: done"):
                break
            if line.startswith("event: error"):
                raise RuntimeError(f"{backend} stream failed: {r.read()}")
    return time.perf_counter() - start


def markdown(results: dict, command: str) -> str:
    lines = [f"`{command}` (CPU time per step; real time through HTTP)", "",
             "| model | step B=1: onnx / compiled | step B=16: onnx / compiled | one stream via HTTP: onnx / "
             "compiled (x real time) |", "|---|---|---|---|"]
    for name, r in results["models"].items():
        step = [f"{r['step'][B]['onnx']:.0f} / {r['step'][B]['compiled']:.0f} µs "
                f"({r['step'][B]['onnx'] / r['step'][B]['compiled']:.2f}x)" for B in BATCHES]
        http = r.get("http")
        cell = f"{http['onnx']['median']:.2f}x / {http['compiled']['median']:.2f}x" if http else "-"
        lines.append(f"| {name} | {step[0]} | {step[1]} | {cell} |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--models", nargs="*", default=MODELS)
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--samples", type=int, default=16000, help="samples per HTTP stream (2 s at 8 kHz)")
    ap.add_argument("--cache", type=Path, default=None, help="compile cache (default: ARSERVE_COMPILE_CACHE or "
                                                             "~/.cache/arserve/compiled); built here if missing")
    ap.add_argument("--no-http", action="store_true", help="step timings only")
    ap.add_argument("--quick", action="store_true", help="two rounds, 8,000 samples")
    ap.add_argument("--out", default=str(ROOT / "bench" / "results" / "compiled"))
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    logging.getLogger("httpx").setLevel(logging.WARNING)  # one line per request otherwise
    rounds, samples = (2, 8000) if args.quick else (args.rounds, args.samples)
    cache = args.cache or Path(os.environ.get("ARSERVE_COMPILE_CACHE") or compiled.default_cache())
    results = {"models": {}, "cpu": compiled.cpu_signature()}
    for name in args.models:
        folder = ROOT / "exported" / name
        start = time.perf_counter()
        compiled.build(folder, load_manifest(folder), cache)  # a no-op when the cache has it
        log.info("%s: build ready (%.0f s)", name, time.perf_counter() - start)
        r = {"step": bench_steps(folder, cache, rounds)}
        if not args.no_http:
            r["http"] = bench_http(folder, cache, rounds, samples)
        results["models"][name] = r
    command = "python -m bench.compiled " + " ".join(argv if argv is not None else sys.argv[1:])
    results["command"] = command
    write_report(args.out, results, markdown(results, command))
    return 0


if __name__ == "__main__":
    sys.exit(main())
