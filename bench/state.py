"""Batched generation before and after in-place state, through ONNX Runtime, interleaved in one run.

    python -m bench.state --baseline 53532cb            # shipped models, B = 1 / 4 / 16
    python -m bench.state --baseline 53532cb --quick    # one model, seconds

Two figures per model and batch size B, each as rows (tokens) per second:

- step: one `step` call on B rows at different positions, state handled as the engine handles it. Baseline:
  the baseline commit's artifacts (exported/<model> at that commit), whose state goes in and comes out of
  every call (a new array per tensor). Now: this tree's artifacts through the service's backend, "slots"
  tensors written in place in preallocated buffers.
- engine: the generation loop (step, draw, log-prob, bookkeeping) of B seeded samples: the baseline commit's
  app/engine/generation.py on its artifacts beside this tree's Batch on this tree's artifacts.

The machine is shared, so baseline and now are timed in alternation, round after round, each figure is the
median over rounds, and time is the CPU time of the calling thread (ONNX Runtime runs there with one
intra-op thread), not wall time, which on a loaded machine is mostly waiting. Results:
bench/results/state.{json,md}.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import logging
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from app.engine import generation as now_generation
from app.runtime.backends import load
from app.runtime.manifest import load_manifest
from bench.common import median_seconds

log = logging.getLogger("bench.state")
ROOT = Path(__file__).resolve().parents[1]
MODELS = ["transformer-shakespeare", "igpt-mnist", "attnrnn-shakespeare", "wavenet-fsdd", "lstm-shakespeare"]
BATCHES = [1, 4, 16]


def checkout(commit: str, paths: list[str], into: Path) -> Path:
    """The files under paths at commit, written below into (git archive: no worktree needed)."""
    archive = subprocess.run(["git", "-C", str(ROOT), "archive", commit, *paths], check=True, capture_output=True)
    subprocess.run(["tar", "-x", "-C", str(into)], input=archive.stdout, check=True)
    return into


def old_generation_module(root: Path):
    spec = importlib.util.spec_from_file_location("baseline_generation", root / "app/engine/generation.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up
    spec.loader.exec_module(module)
    return module


def positions(m, B: int) -> np.ndarray:
    """Rows at different positions around the first half of the model's length."""
    span = min(m.length, 512) // 2
    return (span // 2 + np.arange(B) * max(1, span // (2 * B))).astype(np.int64)


def step_timer(folder: Path, B: int, in_place: bool):
    """A function that runs one step of B rows and advances them (state kept as the engine keeps it)."""
    m = load_manifest(folder)
    backend = load("onnx", folder, m, 1)
    state = backend.init_state(B)
    pos = positions(m, B)
    x = np.zeros(B, dtype=m.token_dtype)

    def one():
        nonlocal state
        params, new = backend.step(x, pos, state)
        if not in_place:
            state = new  # the baseline's state: a new array per tensor every call
        else:
            for buf, fresh, u in zip(state, new, backend.updates, strict=True):
                if u == "replace":
                    buf[...] = fresh
        pos[:] = np.where(pos + 1 < m.length, pos + 1, pos)

    return one


def engine_timer(module, folder: Path, B: int, now: bool, tokens: int):
    """A function that draws `tokens` positions of B seeded samples through the generation loop."""
    m = load_manifest(folder)
    backend = load("onnx", folder, m, 1)
    mixture = m.distribution == "gaussian_mixture"

    def spec(i):
        return module.SampleSpec(max_new=tokens, prefix=np.zeros(0, dtype=m.token_dtype), seed=i, temperature=1.0)

    def one():
        if now:
            batch = module.Batch(backend, B)
            gens = [module.Generation(spec(i), mixture, m.token_dtype) for i in range(B)]
            for g in gens:
                batch.join(g)
            for _ in range(tokens):
                batch.step(B)
            batch.take_new()
        else:
            gens = [module.Generation(spec(i), backend.init_state(1), mixture, m.token_dtype) for i in range(B)]
            batch = module.Batch(gens)
            for _ in range(tokens):
                batch.step(backend)

    return one


def timed(fn, repeats: int) -> float:
    """Median CPU seconds of this thread per call: ONNX Runtime runs on the calling thread (one intra-op
    thread), and on a shared machine wall time is mostly time spent waiting for a core."""
    return median_seconds(fn, repeats, clock=time.thread_time)


def run(baseline: str, models: list[str], rounds: int, engine_tokens: int) -> dict:
    with tempfile.TemporaryDirectory() as tmp:
        base = checkout(baseline, ["app/engine/generation.py", *[f"exported/{n}" for n in models]], Path(tmp))
        old = old_generation_module(base)
        results = {}
        for name in models:
            for B in BATCHES:
                sides = {
                    "step": (step_timer(base / "exported" / name, B, False),
                             step_timer(ROOT / "exported" / name, B, True)),
                    "engine": (engine_timer(old, base / "exported" / name, B, False, engine_tokens),
                               engine_timer(now_generation, ROOT / "exported" / name, B, True, engine_tokens)),
                }
                for what, (before, after) in sides.items():
                    rows = B * (engine_tokens if what == "engine" else 1)
                    reps = 3 if what == "engine" else 20
                    b, a = [], []
                    for _ in range(rounds):  # alternate, so that load from other processes hits both alike
                        b.append(rows / timed(before, reps))
                        a.append(rows / timed(after, reps))
                    r = {"baseline": statistics.median(b), "now": statistics.median(a)}
                    results.setdefault(name, {}).setdefault(what, {})[B] = r
                    log.info("%s %s B=%d: %.0f -> %.0f rows/s", name, what, B, r["baseline"], r["now"])
    return results


def markdown(results: dict, baseline: str, command: str) -> str:
    lines = [f"Rows per CPU second at B = {' / '.join(map(str, BATCHES))}, baseline {baseline} -> now (`{command}`)",
             "",
             "| model | step: baseline | step: now | engine: baseline | engine: now |", "|---|---|---|---|---|"]
    for name, r in results.items():
        cells = [" / ".join(f"{r[what][B][side] / 1000:.1f}k" for B in BATCHES)
                 for what in ("step", "engine") for side in ("baseline", "now")]
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--baseline", required=True, help="the commit whose artifacts and engine are 'before'")
    ap.add_argument("--models", nargs="*", default=MODELS)
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--engine-tokens", type=int, default=32, help="positions drawn per engine timing")
    ap.add_argument("--quick", action="store_true", help="one model, two rounds")
    ap.add_argument("--out", default=str(ROOT / "bench" / "results" / "state"))
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    models, rounds = (args.models[:1], 2) if args.quick else (args.models, args.rounds)
    results = run(args.baseline, models, rounds, args.engine_tokens)
    command = "python -m bench.state " + " ".join(argv if argv is not None else sys.argv[1:])
    Path(args.out + ".json").write_text(json.dumps({"command": command, "baseline": args.baseline,
                                                    "results": results}, indent=2) + "\n")
    md = markdown(results, args.baseline, command)
    Path(args.out + ".md").write_text(md)
    print(md)
    return 0


if __name__ == "__main__":
    sys.exit(main())
