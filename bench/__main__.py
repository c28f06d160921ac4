"""The benchmark suite: `python -m bench [--quick]`.

Sections (each a module with `run(ctx) -> list[Figure]`), all on the models in --exported:
  generation  cached vs naive generation per model, through ONNX Runtime and eager PyTorch
  backends    one step and one log_prob batch: ONNX Runtime vs TorchScript vs eager
  served      the served path (uvicorn + HTTP/SSE) vs the same backend and engine in-process, and
              WaveNet's real-time factor at its sample rate, one stream and 16 streams (section "wavenet")
  peer        Hugging Face transformers' GPT-2 `generate` beside arserve's /sample, same shape
  single      one stream per generating model through HTTP, this tree beside --baseline's (issue #19)

Models that ship a step program step compiled where a build for this machine is in the compile cache
(docs/compiled.md); `--compile build` (the default) makes any missing build first, `--compile cached` never does.

Writes <out>/<name>.md (a table per section, the machine and the command) and <name>.json (one entry per figure
with its unit and configuration); <name> is "quick" or "full". Timings are medians over repeats; every ratio is
taken from two timings in this same run, since the machines these run on are shared and noisy.
"""

from __future__ import annotations

import argparse
import importlib
import json
import logging
import os
import sys
import time
from datetime import UTC, datetime
from pathlib import Path

import torch

from bench.common import Context, Figure, machine, prepare_compiled
from bench.single import BASELINE

SECTIONS = {  # name -> (module, function); served also reports wavenet (one server for both)
    "generation": ("bench.generation", "run"),
    "backends": ("bench.backends", "run"),
    "served": ("bench.served", "run"),
    "peer": ("bench.peer", "run"),
    "single": ("bench.single", "run"),
    "roofline": ("bench.roofline", "run"),
}
ORDER = ["generation", "backends", "served", "wavenet", "peer", "single", "roofline"]  # of the report's tables


def fmt(value: float, unit: str) -> str:
    if unit == "x":
        return f"{value:,.1f}x"
    if unit == "%":
        return f"{value:.1f} %"
    if abs(value) >= 100:
        return f"{value:,.0f} {unit}"
    return f"{value:.3g} {unit}"


# Issues #6's and #19's targets: (what, figure name pattern, family or modality filter, bound, goal or None).
# A pattern's {model} is every shipped model whose figure exists; "min" bounds are floors, "max" ceilings.
TARGETS = [
    ("#19 char-Transformer, 1 stream through HTTP vs the baseline commit",
     "transformer-shakespeare 1 stream / baseline", None, ("min", 2.0), None),
    ("#19 char-Transformer, 1 stream through HTTP vs HF generate, batch 1",
     "transformer-shakespeare 1 stream / HF generate batch 1", None, ("min", 8.0), None),
    ("#19 WaveNet real-time factor, 1 stream through HTTP, chunk 128", "{model} 1 stream real time", "wavenet",
     ("min", 1.0), 1.5),
    ("#19 time to first token through HTTP (raw socket), text models, ms", "{model} 1 stream ttft, raw socket",
     "text", ("max", 5), None),
    ("WaveNet real-time factor, 1 stream through HTTP", "{model} 1 stream http", "wavenet", ("min", 0.5), 1.0),
    ("WaveNet real-time factor, 16 streams through HTTP", "{model} 16 streams http", "wavenet", ("min", 4.0), None),
    ("cached / naive, WaveNet (onnxruntime)", "{model} cached / naive (onnxruntime)", "wavenet", ("min", 20), None),
    ("cached / naive, Transformer (onnxruntime)", "{model} cached / naive (onnxruntime)", "transformer",
     ("min", 10), None),
    ("cached / naive, NADE (onnxruntime)", "{model} cached / naive (onnxruntime)", "nade", ("min", 50), None),
    ("cached / naive, PixelCNN (onnxruntime)", "{model} cached / naive (onnxruntime)", "pixelcnn", ("min", 10), None),
    ("HTTP + SSE overhead on /sample tokens/s, %", "{model} /sample overhead", None, ("max", 10), None),
    ("time to first token through HTTP, text models, ms", "{model} /sample ttft http", "text", ("max", 20), None),
]


def target_lines(figures: list[Figure], families: dict[str, tuple[str, str]]) -> list[str]:
    """One row per target and model: the figure, the bound, met or missed."""
    by_name = {f.name: f for f in figures}
    rows = []
    for what, pattern, kind, (sense, bound), goal in TARGETS:
        names = [pattern] if "{model}" not in pattern else [
            pattern.format(model=m) for m, (family, modality) in families.items() if kind in (None, family, modality)]
        for name in names:
            if name not in by_name:
                continue
            v = by_name[name].value
            met = v >= bound if sense == "min" else v <= bound
            bound_txt = f"{'≥' if sense == 'min' else '≤'} {bound:g}" + (f" (goal {goal:g})" if goal else "")
            model = by_name[name].config.get("model", "")
            rows.append(f"| {what} | {model} | {fmt(v, by_name[name].unit)} | {bound_txt} | "
                        f"{'met' if met else '**missed**'} |")
    if not rows:
        return []
    return ["## targets (issues #6, #19)", "", "| target | model | measured | bound | |", "|---|---|---:|---|---|",
            *rows, ""]


def markdown(figures: list[Figure], meta: dict) -> str:
    out = [f"# arserve benchmarks ({meta['mode']})", "",
           f"`{meta['command']}` on {meta['machine']}, {meta['threads']} thread(s) per runtime, "
           f"{meta['finished_utc']}, {meta['seconds']:.0f} s in all.", ""]
    if meta.get("compiled_steps"):
        out += ["Steps: " + ", ".join(f"{name} {how}" for name, how in meta["compiled_steps"].items())
                + (f"; baseline commit {meta['baseline']}" if meta.get("baseline") else "") + ".", ""]
    out += target_lines(figures, meta["families"])
    for section in ORDER:
        rows = [f for f in figures if f.section == section]
        if rows:
            out += [f"## {section}", "", *(pivot(rows) if section != "peer" else listing(rows)), ""]
    if meta["skipped"]:
        out += ["## skipped", ""] + [f"- {name}: {why}" for name, why in meta["skipped"].items()] + [""]
    return "\n".join(out)


def pivot(figures: list[Figure]) -> list[str]:
    """One row per model, one column per measurement (the figure's name after the model's); the full
    configuration of every figure is in the JSON."""
    table: dict[str, dict[str, str]] = {}
    columns: list[str] = []
    for f in figures:
        model = f.config.get("model", "")
        column = f.name.removeprefix(f"{model} ")
        if column not in columns:
            columns.append(column)
        row = table.setdefault(model, {"tokens": str(f.config.get("tokens", f.config.get("input", "")))})
        row[column] = fmt(f.value, f.unit)
    lines = ["| model | tokens | " + " | ".join(columns) + " |", "|---|---:|" + "---:|" * len(columns)]
    for model, row in table.items():
        lines.append(f"| {model} | {row['tokens']} | " + " | ".join(row.get(c, "—") for c in columns) + " |")
    return lines


def listing(figures: list[Figure]) -> list[str]:
    lines = ["| figure | value | configuration |", "|---|---:|---|"]
    for f in figures:
        config = ", ".join(f"{k}={v}" for k, v in f.config.items() if k != "model")
        lines.append(f"| {f.name} | {fmt(f.value, f.unit)} | {config} |")
    return lines


def across_sections(figures: list[Figure]) -> list[Figure]:
    """Ratios of figures that two sections measured in this run: one char-Transformer stream through HTTP
    (`single`: bench.load's client, the shape of `peer`'s: 255 tokens, top_k 40) over HF generate at batch 1."""
    by_name = {f.name: f for f in figures}
    ours, hf = by_name.get("transformer-shakespeare 1 stream"), by_name.get("HF generate batch 1")
    if ours is None or hf is None or ours.config.get("tokens") != hf.config.get("tokens"):  # (--quick: not alike)
        return []
    return [Figure("single", "transformer-shakespeare 1 stream / HF generate batch 1", ours.value / hf.value, "x",
                   {**ours.config, "hf": hf.value, "hf_tokens": hf.config.get("tokens")})]


def families(ctx: Context) -> dict[str, tuple[str, str]]:
    """model name -> (family, modality), from the manifests."""
    out = {}
    for folder in ctx.models():
        m = json.loads((folder / "manifest.json").read_text())
        out[m["name"]] = (m["family"], m["modality"])
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m bench", description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="few tokens and repeats: a smoke run, under a minute")
    ap.add_argument("--exported", type=Path, default=Path("exported"), help="folder of exported models")
    ap.add_argument("--out", type=Path, default=Path("bench/results"), help="where the .md and .json go")
    ap.add_argument("--sections", nargs="+", choices=list(SECTIONS), default=list(SECTIONS))
    ap.add_argument("--threads", type=int, default=1, help="intra-op threads per runtime (here and in the server)")
    ap.add_argument("--repeats", type=int, default=5, help="timed repeats per figure in the full run")
    ap.add_argument("--baseline", default=BASELINE, help=f"the commit `single` serves beside this tree ({BASELINE}); "
                    "'none': no baseline")
    ap.add_argument("--compile", choices=["build", "cached", "off"],
                    default="off" if os.environ.get("ARSERVE_COMPILE") == "off" else "build",
                    help="build the compiled steps this machine lacks before measuring (build: the default unless "
                         "ARSERVE_COMPILE=off), use only what the cache holds (cached), or step through ONNX (off)")
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s", stream=sys.stderr)
    logging.getLogger("httpx").setLevel(logging.WARNING)
    torch.set_num_threads(args.threads)
    ctx = Context(args.exported.resolve(), args.quick, args.threads, 2 if args.quick else args.repeats,
                  None if args.baseline == "none" else args.baseline)
    if not ctx.models():
        ap.error(f"no exported model under {args.exported}")
    t0 = time.perf_counter()
    figures: list[Figure] = []
    skipped: dict[str, str] = {}
    os.environ["ARSERVE_COMPILE"] = "off" if args.compile == "off" else "cached"  # what the servers started do
    compiled_steps = prepare_compiled(ctx.models(), build=args.compile == "build")
    for name in args.sections:
        if name == "single" and ctx.baseline is None:
            skipped[name] = "--baseline none"
            continue
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
    figures += across_sections(figures)
    mode = "quick" if args.quick else "full"
    meta = {"mode": mode, "command": "python -m " + " ".join(["bench", *(argv if argv is not None else sys.argv[1:])]),
            "machine": machine(), "threads": args.threads, "seconds": time.perf_counter() - t0,
            "finished_utc": datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC"), "exported": str(args.exported),
            "skipped": skipped, "families": families(ctx), "compiled_steps": compiled_steps,
            "baseline": ctx.baseline}
    args.out.mkdir(parents=True, exist_ok=True)
    report = markdown(figures, meta)
    (args.out / f"{mode}.md").write_text(report)
    (args.out / f"{mode}.json").write_text(json.dumps({"meta": meta, "figures": [f.to_json() for f in figures]},
                                                      indent=1) + "\n")
    print(report)
    return 0


if __name__ == "__main__":
    sys.exit(main())
