"""Artifact sizes and latency of the exported runtimes: ONNX Runtime vs TorchScript vs eager PyTorch.

    python -m bench.backends --quick                 # tiny random-weight model of every family
    python -m bench.backends                         # every family at its default config (random weights)
    python -m bench.backends --exported exported/    # the shipped artifacts (no eager column)

Each model is exported to a temporary folder (parity-checked like any export), then timed in this process
through one numpy interface (models.export.Runtime), so every runtime pays the same conversions:

- step: one `step` call at batch 1 (position T/2 of the scored length, zero state);
- log_prob: one `log_prob` call on a [16, T] batch, T = the full length, or 256 for longer variable-length
  models.

Figures are medians over --repeats timed calls after --warmup untimed ones, with --threads intra-op
threads for both torch and onnxruntime. Eager goes through the model's public (input-checked) methods.
"""

from __future__ import annotations

import argparse
import logging
import platform
import sys
import tempfile
from pathlib import Path

import numpy as np
import onnxruntime as ort
import torch

import models
from app.runtime.manifest import load_manifest
from bench.common import Context, Figure, median_seconds
from models.export import export_model, placeholder_meta
from models.runtimes import EagerRuntime, OnnxRuntime, Runtime, TorchScriptRuntime

log = logging.getLogger("bench.backends")
BATCH = 16
MAX_T = 256
RUNTIMES = ("onnxruntime", "torchscript", "eager")


def inputs(manifest, rng: np.random.Generator) -> tuple[np.ndarray, int]:
    """A [BATCH, T] batch of valid tokens and the step position used for timing."""
    T = min(manifest.length, MAX_T) if manifest.variable_length else manifest.length
    if manifest.token_dtype == "float32":
        x = rng.standard_normal((BATCH, T)).astype(np.float32)
    else:
        x = rng.integers(0, manifest.vocab_size, (BATCH, T), dtype=np.int64)
    return x, T // 2


def time_runtime(rt: Runtime, manifest, warmup: int, repeats: int) -> tuple[float, float]:
    x, pos = inputs(manifest, np.random.default_rng(0))
    state = rt.init_state(1)
    x_prev = x[:1, max(pos - 1, 0)].copy()
    pos_arr = np.array([pos], dtype=np.int64)
    step = median_seconds(lambda: rt.step(x_prev, pos_arr, state), repeats, warmup)
    score = median_seconds(lambda: rt.log_prob(x), repeats, warmup)
    return step, score


def bench_folder(folder: Path, eager: Runtime | None, threads: int, warmup: int, repeats: int) -> dict:
    manifest = load_manifest(folder)
    rts: list[Runtime] = [OnnxRuntime(folder, manifest.state, threads), TorchScriptRuntime(folder / "model.pt")]
    if eager is not None:
        rts.append(eager)
    times = {rt.name: time_runtime(rt, manifest, warmup, repeats) for rt in rts}
    T = inputs(manifest, np.random.default_rng(0))[0].shape[1]
    return {"name": manifest.name, "family": manifest.family, "T": T,
            "sizes": {f: e.bytes for f, e in manifest.files.items()}, "times": times}


def run(ctx: Context) -> list[Figure]:
    """The `python -m bench` section: every shipped model through the three runtimes (eager rebuilt from the
    manifest's config and model.pt's weights)."""
    warmup, repeats = (2, 5) if ctx.quick else (5, 30)
    figures = []
    for folder in ctx.models():
        log.info("backends: %s", folder.name)
        row = bench_folder(folder, EagerRuntime.from_folder(folder), ctx.threads, warmup, repeats)
        for what, i, shape in (("step", 0, "[1]"), ("log_prob", 1, f"[{BATCH}, {row['T']}]")):
            config = {"model": row["name"], "family": row["family"], "input": shape, "repeats": repeats}
            for rt, times in row["times"].items():
                figures.append(Figure("backends", f"{row['name']} {what} ({rt})", times[i] * 1e3, "ms",
                                      {**config, "runtime": rt}))
            figures.append(Figure("backends", f"{row['name']} {what}: eager / onnxruntime",
                                  row["times"]["eager"][i] / row["times"]["onnxruntime"][i], "x", config))
    return figures


def fmt_bytes(n: int) -> str:
    for unit, scale in (("MiB", 1 << 20), ("KiB", 1 << 10)):
        if n >= scale:
            return f"{n / scale:.1f} {unit}"
    return f"{n} B"


def fmt_time(s: float | None) -> str:
    if s is None:
        return "—"
    return f"{s * 1e6:.0f} µs" if s < 1e-3 else f"{s * 1e3:.2f} ms"


def table(rows: list[dict]) -> str:
    files = ["model.pt", "score.onnx", "step.onnx", "weights.bin"]
    head = ["model", "family", *files, "T"]
    head += [f"step {r}" for r in RUNTIMES] + [f"log_prob [{BATCH}, T] {r}" for r in RUNTIMES]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for row in rows:
        step = [fmt_time(row["times"][r][0] if r in row["times"] else None) for r in RUNTIMES]
        score = [fmt_time(row["times"][r][1] if r in row["times"] else None) for r in RUNTIMES]
        cells = [row["name"], row["family"], *(fmt_bytes(row["sizes"][f]) for f in files), str(row["T"])]
        lines.append("| " + " | ".join(cells + step + score) + " |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="tiny models (seconds) instead of the default configs")
    ap.add_argument("--exported", help="benchmark every model folder under this directory instead")
    ap.add_argument("--families", nargs="*", default=sorted(models.REGISTRY), help="families to export and time")
    ap.add_argument("--threads", type=int, default=1, help="intra-op threads for torch and onnxruntime")
    ap.add_argument("--warmup", type=int, default=5)
    ap.add_argument("--repeats", type=int, default=30)
    ap.add_argument("--out", help="also write the table (with the environment) to this markdown file")
    args = ap.parse_args(argv)
    if args.repeats < 20:
        ap.error("--repeats must be at least 20")
    logging.basicConfig(level=logging.INFO, format="%(message)s", stream=sys.stderr)
    torch.set_num_threads(args.threads)
    rows = []
    if args.exported:
        for folder in sorted(p for p in Path(args.exported).iterdir() if (p / "manifest.json").is_file()):
            log.info("timing %s", folder)
            rows.append(bench_folder(folder, None, args.threads, args.warmup, args.repeats))
    else:
        with tempfile.TemporaryDirectory() as tmp:
            for family in args.families:
                model = models.tiny(family) if args.quick else models.build(family).eval()
                name = f"{'tiny' if args.quick else 'default'}-{family}"
                log.info("exporting and timing %s", name)
                export_model(model, Path(tmp) / name, placeholder_meta(model, name))
                rows.append(bench_folder(Path(tmp) / name, EagerRuntime(model), args.threads, args.warmup,
                                         args.repeats))
    env = (f"torch {torch.__version__}, onnxruntime {ort.__version__}, {args.threads} thread(s), "
           f"{platform.processor() or platform.machine()}; medians of {args.repeats} calls after {args.warmup} "
           f"warm-up; step at batch 1, log_prob at batch {BATCH}")
    out = table(rows) + "\n\n" + env + "\n"
    print(out)
    if args.out:
        Path(args.out).write_text(out)


if __name__ == "__main__":
    main()
