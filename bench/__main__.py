"""The benchmark suite: `python -m bench [--quick]`.

Sections (each a module with `run(ctx) -> list[Figure]`), all on the models in --exported:
  generation  cached vs naive generation per model, through ONNX Runtime and eager PyTorch
  backends    one step and one log_prob batch: ONNX Runtime vs TorchScript vs eager
  served      the served path (uvicorn + HTTP/SSE) vs the same backend and engine in-process, and
              WaveNet's real-time factor at its sample rate, one stream and 16 streams (section "wavenet")
  peer        Hugging Face transformers' GPT-2 `generate` beside arserve's /sample, same shape

Writes <out>/<name>.md (a table per section, the machine and the command) and <name>.json (one entry per figure
with its unit and configuration); <name> is "quick" or "full". Timings are medians over repeats; every ratio is
taken from two timings in this same run, since the machines these run on are shared and noisy.
"""

from __future__ import annotations

import argparse
import importlib
import json
import logging
import sys
import time
from datetime import UTC, datetime
from pathlib import Path

import torch

from bench.common import Context, Figure, machine

SECTIONS = {  # name -> (module, function); served also reports wavenet (one server for both)
    "generation": ("bench.generation", "run"),
    "backends": ("bench.backends", "run"),
    "served": ("bench.served", "run"),
    "peer": ("bench.peer", "run"),
}
ORDER = ["generation", "backends", "served", "wavenet", "peer"]  # of the report's tables


def fmt(value: float, unit: str) -> str:
    if unit == "x":
        return f"{value:,.1f}x"
    if unit == "%":
        return f"{value:.1f} %"
    if abs(value) >= 100:
        return f"{value:,.0f} {unit}"
    return f"{value:.3g} {unit}"


def markdown(figures: list[Figure], meta: dict) -> str:
    out = [f"# arserve benchmarks ({meta['mode']})", "",
           f"`{meta['command']}` on {meta['machine']}, {meta['threads']} thread(s) per runtime, "
           f"{meta['finished_utc']}, {meta['seconds']:.0f} s in all.", ""]
    for section in ORDER:
        rows = [f for f in figures if f.section == section]
        if not rows:
            continue
        out += [f"## {section}", "", "| figure | value | configuration |", "|---|---:|---|"]
        for f in rows:
            config = ", ".join(f"{k}={v}" for k, v in f.config.items() if k != "model")
            out.append(f"| {f.name} | {fmt(f.value, f.unit)} | {config} |")
        out.append("")
    if meta["skipped"]:
        out += ["## skipped", ""] + [f"- {name}: {why}" for name, why in meta["skipped"].items()] + [""]
    return "\n".join(out)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m bench", description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="few tokens and repeats: a smoke run, under a minute")
    ap.add_argument("--exported", type=Path, default=Path("exported"), help="folder of exported models")
    ap.add_argument("--out", type=Path, default=Path("bench/results"), help="where the .md and .json go")
    ap.add_argument("--sections", nargs="+", choices=list(SECTIONS), default=list(SECTIONS))
    ap.add_argument("--threads", type=int, default=1, help="intra-op threads per runtime (here and in the server)")
    ap.add_argument("--repeats", type=int, default=5, help="timed repeats per figure in the full run")
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s", stream=sys.stderr)
    torch.set_num_threads(args.threads)
    ctx = Context(args.exported.resolve(), args.quick, args.threads, 2 if args.quick else args.repeats)
    if not ctx.models():
        ap.error(f"no exported model under {args.exported}")
    t0 = time.perf_counter()
    figures: list[Figure] = []
    skipped: dict[str, str] = {}
    for name in args.sections:
        module, fn = SECTIONS[name]
        try:
            run = getattr(importlib.import_module(module), fn)
        except ImportError as e:  # the peer needs the optional `bench` extra (transformers)
            skipped[name] = f"cannot import {module}: {e}"
            logging.warning("skipping %s: %s", name, skipped[name])
            continue
        found = run(ctx)
        if not found:
            skipped[name] = "no model of this kind in the exported folder"
        figures += found
    mode = "quick" if args.quick else "full"
    meta = {"mode": mode, "command": "python -m " + " ".join(["bench", *(argv if argv is not None else sys.argv[1:])]),
            "machine": machine(), "threads": args.threads, "seconds": time.perf_counter() - t0,
            "finished_utc": datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC"), "exported": str(args.exported),
            "skipped": skipped}
    args.out.mkdir(parents=True, exist_ok=True)
    report = markdown(figures, meta)
    (args.out / f"{mode}.md").write_text(report)
    (args.out / f"{mode}.json").write_text(json.dumps({"meta": meta, "figures": [f.to_json() for f in figures]},
                                                      indent=1) + "\n")
    print(report)
    return 0


if __name__ == "__main__":
    sys.exit(main())
