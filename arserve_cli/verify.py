"""`arserve verify`: the black-box conformance check (app/engine/verify.py) on model folders, every backend."""

from __future__ import annotations

import argparse
import dataclasses
import importlib.util
import sys
from pathlib import Path

import numpy as np

from arserve_cli import output
from arserve_cli.errors import FAILED, OK, BadInput

EXAMPLES = """examples:
  arserve verify exported/nade-mnist                    # full check, every backend the folder ships
  arserve verify exported/* --quick                     # the subset the server runs when it loads a model
  arserve verify my-models/ema-shakespeare --backend onnx --sequences 8 --positions 256 --json

Properties (one report line each, pass/FAIL/skip, with the worst deviation measured):
  manifest    manifest.json validates and every file it lists matches its size and sha256
  load        the runtime (ONNX Runtime; TorchScript when torch is installed; the compiled step when
              `arserve compile` built it, checked against ONNX Runtime first) loads the graphs
  state       init_state and step give the state tensors the manifest declares (count, shape, dtype)
  score_step  sequences stepped one token at a time give the parallel log-probs (1e-4 + 1e-5 x |value|)
  causal      changing x_j changes no log-prob before position j
  normalized  every probed conditional of the score graph sums (mixtures: integrates) to 1
  batching    rows batched at different positions get the answers they get alone
  held_out    the manifest's held-out check slice reproduces (check_slice.npy in the folder, or the
              training data through models/ when installed)
  multi_step  several positions per call (stepk.onnx, where declared) draw exactly the one-token samples
Exit code 1 when any property fails."""


def add_commands(sub, formatter) -> None:
    p = sub.add_parser("verify", help="check that exported model folders are correct autoregressive models",
                       description="Black-box conformance check of exported artifacts, through the runtimes only "
                                   "(never the model code).", epilog=EXAMPLES, formatter_class=formatter)
    p.add_argument("folders", nargs="+", type=Path, help="model folders (each with manifest.json)")
    p.add_argument("--backend", choices=["all", "onnx", "torchscript", "compiled"], default="all",
                   help="runtime(s) to check (%(default)s: every one the folder ships and this install has)")
    p.add_argument("--quick", action="store_true", help="the budget the server uses at load time")
    p.add_argument("--sequences", type=int, help="sequences stepped one token at a time")
    p.add_argument("--positions", type=int, help="positions stepped per sequence")
    p.add_argument("--probes", type=int, help="positions probed for causality and normalization")
    p.add_argument("--rows", type=int, help="rows batched at different positions")
    p.add_argument("--seed", type=int, default=0, help="seed of the random sequences (%(default)s)")
    p.add_argument("--no-held-out", action="store_true", help="skip the held-out slice (it reads the data)")
    p.add_argument("--json", action="store_true", help="print the reports as JSON")
    p.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    from app.engine import verify as v

    budget = v.FAST if args.quick else v.FULL
    overrides = {k: getattr(args, k) for k in ("sequences", "positions", "probes", "rows", "seed")
                 if getattr(args, k) is not None}
    budget = dataclasses.replace(budget, **overrides)
    if min(budget.sequences, budget.positions, budget.rows) < 1 or budget.probes < 0:
        raise BadInput("--sequences, --positions and --rows must be >= 1, --probes >= 0")
    results = [verify_folder(folder, args.backend, budget, not args.no_held_out) for folder in args.folders]
    if args.json:
        output.dump({"ok": all(r["ok"] for r in results), "artifacts": results})
    else:
        for r in results:
            _print(r)
        bad = [r["folder"] for r in results if not r["ok"]]
        print(f"# {len(results) - len(bad)} of {len(results)} artifacts conform"
              + (f"; failing: {', '.join(bad)}" if bad else ""), file=sys.stderr)
    return OK if all(r["ok"] for r in results) else FAILED


def verify_folder(folder: Path, which: str, budget, held_out: bool) -> dict:
    from app.engine import verify as v
    from app.runtime import backends
    from app.runtime.manifest import revision

    manifest_check, m = v.check_manifest(folder)
    result = {"folder": str(folder), "model": m.name if m else None,
              "revision": revision(folder) if m else None, "checks": [_row("-", manifest_check)], "reports": []}
    if m is None:
        result["ok"] = False
        return result
    examples, why = _held_out(folder, m) if held_out else (None, "skipped (--no-held-out)")
    for name in ("onnx", "torchscript", "compiled") if which == "all" else (which,):
        if name not in backends.available(m):
            if which != "all":
                result["checks"].append(_row(name, v.Check("load", False, detail=f"the folder ships no {name} files "
                                                                                 f"{backends.FILES[name]}")))
            continue
        if name == "torchscript" and importlib.util.find_spec("torch") is None:
            result["checks"].append(_row(name, v.Check("load", None, detail="torch is not installed")))
            continue
        if name == "compiled":
            why = _not_compiled(folder, m)
            if why:
                result["checks"].append(_row(name, v.Check("load", None if which == "all" else False, detail=why)))
                continue
        try:
            backend = _load(name, folder, m)
        except Exception as e:  # a graph the runtime refuses fails `load`, named
            result["checks"].append(_row(name, v.Check("load", False, detail=f"{type(e).__name__}: {e}"[:500])))
            continue
        report = v.verify_backend(backend, m, budget, examples, why)
        result["reports"].append(report.to_json())
        result["checks"] += [_row(name, c) for c in [v.Check("load", True), *report.checks]]
    result["ok"] = all(c["status"] != "FAIL" for c in result["checks"])
    return result


def _load(name: str, folder: Path, m):
    """A backend as the server loads it; the compiled one from the cache only, and only if it is in use."""
    from app.runtime import backends
    from app.runtime.config import get_settings

    if name != "compiled":
        return backends.load(name, folder, m, threads=1)
    backend = backends.CompiledBackend(folder, m, mode="cached", cache=get_settings().compile_cache)
    if backend.programs is None:
        raise RuntimeError(backend.status)
    return backend


def _not_compiled(folder: Path, m) -> str | None:
    """Why the compiled backend is not checked here: torch missing, or no build (it is never built by verify)."""
    from app.runtime import compiled
    from app.runtime.config import get_settings

    if importlib.util.find_spec("torch") is None:
        return "torch is not installed"
    cache = get_settings().compile_cache or compiled.default_cache()
    return None if compiled.cached(folder, m, cache) else f"not built here (run `arserve compile {folder}`)"


def _row(backend: str, c) -> dict:
    return {"backend": backend, "property": c.name, "status": c.status, "worst": c.worst, "tolerance": c.tolerance,
            "detail": c.detail}


def _held_out(folder: Path, m) -> tuple[list[np.ndarray] | None, str]:
    """The manifest's check slice: from the folder (check_slice.npy), else from the training data loaders."""
    from app.engine.verify import artifact_slice

    own = artifact_slice(folder, m)
    if own is not None or not m.metrics.get("check_slice"):
        return own, ""
    dataset = next((r["dataset"] for r in m.metrics.values() if isinstance(r, dict) and "dataset" in r), None)
    try:
        from models.data import DataUnavailable
        from models.datasets import DATASETS
    except ImportError as e:
        return None, f"reading the slice needs the training data loaders (models/, {e.name}), not installed here"
    adapters = {d.name: d for d in DATASETS.values()}
    if dataset not in adapters:
        return None, f"the slice's dataset {dataset!r} is not one models/datasets.py reads"
    try:
        return adapters[dataset]().slice_examples(m.length), ""
    except DataUnavailable as e:
        return None, f"data not available ({e})"


def _print(r: dict) -> None:
    verdict = "conforms" if r["ok"] else "FAILS"
    print(f"{r['folder']}: {r['model'] or '?'} revision {r['revision'] or '-'}: {verdict}")
    output.table(["  backend", "property", "result", "worst", "tolerance", "detail"],
                 [[f"  {c['backend']}", c["property"], c["status"], c["worst"], c["tolerance"], c["detail"]]
                  for c in r["checks"]])
