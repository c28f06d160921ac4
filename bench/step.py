"""One stream's step and token cost, baseline commit vs this tree, interleaved in one process.

    python -m bench.step --baseline 1737992                         # transformer-shakespeare, B = 1 and 16
    python -m bench.step --baseline 1737992 --models igpt-mnist --rounds 5

Per model and batch size B, in µs of CPU time of the calling thread (ONNX Runtime runs there, one intra-op
thread; on a shared machine wall time is mostly waiting), medians over rounds that alternate the sides:

- step: one `backend.step` of B rows on the engine's kept state buffers (the same arrays every call), positions
  advancing; baseline = the baseline commit's app/runtime/backends.py on its exported/<model>, now = this tree's.
- graph: this tree's backend on the baseline's step.onnx vs this tree's (the step graph's share of the change).
- token: the engine's cost per position of B seeded samples of `--tokens` tokens (app.engine.generation.generate:
  step, draw, log-prob, bookkeeping), baseline commit's generation.py + backends.py + artifacts vs this tree's;
  `same` says whether both sides drew the same tokens.

Results: bench/results/step.{json,md} (or --out).
"""

from __future__ import annotations

import argparse
import importlib.util
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from app.engine import generation as now_generation
from app.runtime import backends as now_backends
from app.runtime.manifest import load_manifest
from bench.common import write_report
from bench.state import checkout

ROOT = Path(__file__).resolve().parents[1]
BATCHES = [1, 16]


def module_from(path: Path, name: str):
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module  # dataclasses look their module up
    spec.loader.exec_module(module)
    return module


def step_timer(backends, folder: Path, B: int, calls: int):
    m = load_manifest(folder)
    backend = backends.OnnxBackend(folder, m, 1)
    state = backend.init_state(B)
    pos = (np.arange(B) * (m.length // (2 * B)) + 16).astype(np.int64)
    x_prev = np.ones(B, dtype=m.token_dtype)

    def one() -> float:
        t = time.thread_time()
        for _ in range(calls):
            backend.step(x_prev, pos.copy(), state)
            pos[:] = np.where(pos + 1 < m.length, pos + 1, 0)
        return (time.thread_time() - t) / calls

    return one


def token_timer(generation, backends, folder: Path, B: int, tokens: int):
    m = load_manifest(folder)
    backend = backends.OnnxBackend(folder, m, 1)
    drawn: list = []

    def one() -> float:
        specs = [generation.SampleSpec(max_new=tokens, prefix=np.zeros(0, dtype=m.token_dtype), seed=i)
                 for i in range(B)]
        t = time.thread_time()
        gens = generation.generate(backend, specs, False, m.token_dtype)
        elapsed = time.thread_time() - t
        drawn[:] = [g.tokens for g in gens]
        return elapsed / tokens

    return one, drawn


def interleaved(before, after, rounds: int) -> tuple[float, float]:
    b, a = [], []
    before(), after()  # warm-up
    for i in range(rounds):
        for side, out in ((before, b), (after, a)) if i % 2 == 0 else ((after, a), (before, b)):
            out.append(side())
    return statistics.median(b) * 1e6, statistics.median(a) * 1e6


def run(baseline: str, models: list[str], rounds: int, tokens: int) -> dict:
    results: dict = {}
    with tempfile.TemporaryDirectory() as tmp:
        base = checkout(baseline, ["app/engine/generation.py", "app/runtime/backends.py",
                                   *[f"exported/{n}" for n in models]], Path(tmp))
        old_backends = module_from(base / "app/runtime/backends.py", "baseline_backends")
        old_generation = module_from(base / "app/engine/generation.py", "baseline_generation")
        for name in models:
            old, now = base / "exported" / name, ROOT / "exported" / name
            for B in BATCHES:
                calls = max(50, 800 // B)
                r = {"step": interleaved(step_timer(old_backends, old, B, calls),
                                         step_timer(now_backends, now, B, calls), rounds),
                     "graph": interleaved(step_timer(now_backends, old, B, calls),
                                          step_timer(now_backends, now, B, calls), rounds)}
                before, drawn_before = token_timer(old_generation, old_backends, old, B, tokens)
                after, drawn_after = token_timer(now_generation, now_backends, now, B, tokens)
                r["token"] = interleaved(before, after, max(3, rounds // 2))
                r = {k: {"baseline_us": v[0], "now_us": v[1], "ratio": v[1] / v[0]} for k, v in r.items()}
                r["token"]["same"] = drawn_before == drawn_after
                results.setdefault(name, {})[B] = r
                print(f"{name} B={B}: " + "; ".join(f"{k} {v['baseline_us']:.1f} -> {v['now_us']:.1f} us "
                                                      f"(x{v['ratio']:.3f})" for k, v in r.items())
                      + f"; same tokens {r['token']['same']}", flush=True)
    return results


def markdown(results: dict, command: str) -> str:
    lines = [f"µs of CPU per call (step, graph) or per position (token), baseline -> now (`{command}`)", "",
             "| model | B | step | graph only | token (engine) | same tokens |", "|---|---|---|---|---|---|"]
    for name, per_b in results.items():
        for B, r in per_b.items():
            cells = [f"{r[k]['baseline_us']:.1f} -> {r[k]['now_us']:.1f} (x{r[k]['ratio']:.2f})"
                     for k in ("step", "graph", "token")]
            lines.append(f"| {name} | {B} | " + " | ".join(cells) + f" | {r['token']['same']} |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--baseline", required=True, help="the commit whose engine, backend and artifacts are 'before'")
    ap.add_argument("--models", nargs="*", default=["transformer-shakespeare"])
    ap.add_argument("--rounds", type=int, default=11)
    ap.add_argument("--tokens", type=int, default=255, help="positions per sample in the token figure")
    ap.add_argument("--out", default=str(ROOT / "bench" / "results" / "step"))
    args = ap.parse_args(argv)
    command = "python -m bench.step " + " ".join(argv if argv is not None else sys.argv[1:])
    results = run(args.baseline, args.models, args.rounds, args.tokens)
    write_report(args.out, {"command": command, "baseline": args.baseline, "results": results},
                 markdown(results, command))
    return 0


if __name__ == "__main__":
    sys.exit(main())
