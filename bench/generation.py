"""Cached vs naive generation, per family and runtime.

    python -m bench.generation                       # random-weight models at realistic sizes (issue #2)
    python -m bench.generation --batch 16            # ... 16 rows generated together
    python -m bench.generation --runtime eager       # ... through eager PyTorch only
    python -m bench.generation --quick               # tiny models, seconds

`run(ctx)` is the `python -m bench` section: the same measurement on the shipped models in exported/.

Cached: the family's own `step` (running activations, RNN state, KV cache, WaveNet queues, PixelCNN window),
one call per token. Naive: the parallel pass on the whole prefix for every new token. In eager PyTorch that is
`log_prob`; in ONNX Runtime it is score.onnx, which computes every conditional and gathers the observed
token's, so it costs what recomputing the conditionals costs. Both sides pay the same numpy sampler per token,
and both run on the same runtime: the ratio is the algorithm's, not a runtime's.

Multi-token (the models that ship stepk.onnx: NADE, FVSBN, MADE, finite-memory, RNADE): the service's own
generation loop (app/engine/generation.py) with `chunk` 64, so that one runtime call draws up to 64 positions,
the draws in the graph (models/multistep.py); timed like cached, beside the same loop at chunk 1, and divided
by the same naive figure: "cached, 64 per call / naive".

Cached tokens/s is timed over whole generations (median of repeats). A naive generation of 4096 WaveNet samples
would take minutes, so naive tokens/s comes from the per-token cost at evenly spaced positions: a generation's
time is the sum of its per-token costs, and the mean of an even sample of them estimates it without bias.
"""

from __future__ import annotations

import argparse
import json
import logging
import statistics
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

import models
from app.engine.generation import SampleSpec, generate
from app.engine.sampling import sample_categorical, sample_mixture, sample_row
from app.runtime.backends import OnnxBackend
from app.runtime.manifest import load_manifest
from bench.common import Context, Figure, machine
from models.export import export_model, placeholder_meta
from models.runtimes import EagerRuntime, OnnxRuntime, Runtime

log = logging.getLogger("bench.generation")
RUNTIMES = ("onnxruntime", "eager")

# family -> (config overrides, tokens to generate): the sizes issue #2 asks for (WaveNet >= 4096 samples with a
# receptive field >= 1024, the Transformer >= 512 tokens, NADE on 784 pixels).
REALISTIC = {
    "fvsbn": ({}, 784),
    "nade": ({}, 784),
    "made": ({}, 784),
    "rnade": ({}, 64),
    "pixelcnn": ({}, 784),
    "pixelrnn": ({}, 784),
    "lstm": ({"length": 1024}, 512),
    "gru": ({"length": 1024}, 512),
    "attnrnn": ({"length": 512}, 512),
    "finite": ({}, 512),
    "transformer": ({"length": 512}, 512),
    "wavenet": ({"length": 16000}, 4096),
}
SHIPPED_TOKENS = {"wavenet": 4096}  # variable-length shipped models: tokens drawn (default: min(length, 512))
MULTI_CHUNK = 64  # positions per runtime call on the multi-token path


@dataclass(frozen=True)
class Spec:
    """What the timing loops need to know about a model."""

    name: str
    family: str
    length: int
    variable_length: bool
    mixture: bool
    token_dtype: type
    num_params: int


def spec_of_manifest(folder: Path) -> Spec:
    m = load_manifest(folder)
    return Spec(m.name, m.family, m.length, m.variable_length, m.distribution == "gaussian_mixture",
                np.dtype(m.token_dtype).type, m.num_params)


def draw(spec: Spec, params: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """The tokens [B] after params [B, P], drawn as the service's engine draws them (one row: its per-stream
    path; more: its vectorized path for rows that share their settings)."""
    if spec.mixture:
        return sample_mixture(params, rng)
    if len(params) == 1:
        return np.array([sample_row(params[0], rng)], dtype=spec.token_dtype)
    return sample_categorical(params, rng).astype(spec.token_dtype)


def cached_seconds(rt: Runtime, spec: Spec, steps: int, seed: int = 0, batch: int = 1) -> float:
    """Wall time of one generation of `steps` tokens in each of `batch` rows through `step`."""
    rng = np.random.default_rng(seed)
    t0 = time.perf_counter()
    state = rt.init_state(batch)
    x = np.zeros(batch, dtype=spec.token_dtype)
    for t in range(steps):
        params, state = rt.step(x, np.full(batch, t, dtype=np.int64), state)
        x = draw(spec, params, rng)
    return time.perf_counter() - t0


def naive_token_seconds(rt: Runtime, spec: Spec, steps: int, probes: int, batch: int = 1) -> float:
    """Mean cost of one naive step (a token in each of `batch` rows): the parallel pass on the prefix (the
    whole input for fixed-length models, whose later positions cannot matter) plus the sampler, probed at
    `probes` evenly spaced positions."""
    rng = np.random.default_rng(0)
    width = steps if spec.variable_length else spec.length
    x = np.zeros((batch, width), dtype=spec.token_dtype)
    params = np.zeros((batch, spec.num_params), dtype=np.float32)  # the sampler's input; its values cost nothing
    costs = []
    for t in np.linspace(0, steps - 1, probes).astype(int):
        prefix = x[:, : t + 1] if spec.variable_length else x
        t0 = time.perf_counter()
        rt.log_prob(prefix)
        draw(spec, params, rng)
        costs.append(time.perf_counter() - t0)
    return statistics.mean(costs)


def engine_seconds(backend: OnnxBackend, spec: Spec, steps: int, chunk: int, seed: int = 0, batch: int = 1) -> float:
    """CPU time of this thread for one generation of `steps` tokens in each of `batch` rows through the service's
    generation loop (one Batch), `chunk` positions per runtime call at most. ONNX Runtime runs on the calling
    thread (one intra-op thread), so this is the work done, whatever else the machine runs meanwhile."""
    specs = [SampleSpec(max_new=steps, prefix=np.zeros(0, dtype=spec.token_dtype), seed=seed + r, chunk=chunk)
             for r in range(batch)]
    t0 = time.thread_time()
    generate(backend, specs, spec.mixture, np.dtype(spec.token_dtype).name)
    return time.thread_time() - t0


def naive_cpu_seconds(backend: OnnxBackend, spec: Spec, steps: int, t: int, batch: int, rng) -> float:
    """CPU time of one naive token at position t (the parallel pass on the prefix, and the draw)."""
    x = np.zeros((batch, t + 1 if spec.variable_length else spec.length), dtype=spec.token_dtype)
    params = np.zeros((batch, spec.num_params), dtype=np.float32)
    t0 = time.thread_time()
    backend.log_prob(x)
    draw(spec, params, rng)
    return time.thread_time() - t0


def measure_multi(folder: Path, spec: Spec, steps: int, repeats: int, probes: int, extra: dict, batch: int = 1
                  ) -> list[Figure]:
    """For models with a multi-token graph: the engine at 1 and at MULTI_CHUNK positions per call, and naive, all in
    CPU time of this thread, alternated round by round (the machine is shared: its wall clock is not ours)."""
    m = load_manifest(folder)
    if m.multi_step is None:
        return []
    backend = OnnxBackend(folder, m)
    engine_seconds(backend, spec, min(steps, 8), MULTI_CHUNK, batch=batch)  # warm-up
    rng = np.random.default_rng(0)
    positions = np.linspace(0, steps - 1, probes).astype(int)
    one, multi, naive = [], [], []
    for i in range(repeats):
        one.append(engine_seconds(backend, spec, steps, 1, seed=i, batch=batch))
        multi.append(engine_seconds(backend, spec, steps, MULTI_CHUNK, seed=i, batch=batch))
        naive.append(statistics.mean(naive_cpu_seconds(backend, spec, steps, int(t), batch, rng) for t in positions))
    one_tps, multi_tps = batch * steps / statistics.median(one), batch * steps / statistics.median(multi)
    naive_tps = batch / statistics.median(naive)
    config = {"model": spec.name, "family": spec.family, "runtime": "onnxruntime", "batch": batch, "tokens": steps,
              "repeats": repeats, "chunk": MULTI_CHUNK, "naive_probes": probes, "clock": "thread CPU time", **extra}
    name = f"{spec.name} cached, {MULTI_CHUNK} per call"
    return [
        Figure("generation", f"{spec.name} engine, 1 per call (onnxruntime)", one_tps, "tokens/s", config),
        Figure("generation", f"{name} (onnxruntime)", multi_tps, "tokens/s", config),
        Figure("generation", f"{spec.name} naive, CPU time (onnxruntime)", naive_tps, "tokens/s", config),
        Figure("generation", f"{name} / naive (onnxruntime)", multi_tps / naive_tps, "x", config),
    ]


def measure(rt: Runtime, spec: Spec, steps: int, repeats: int, probes: int, extra: dict, batch: int = 1
            ) -> list[Figure]:
    cached_seconds(rt, spec, min(steps, 8), batch=batch)  # warm-up
    seconds = statistics.median(cached_seconds(rt, spec, steps, seed=i, batch=batch) for i in range(repeats))
    cached = batch * steps / seconds
    naive = batch / naive_token_seconds(rt, spec, steps, probes, batch)
    config = {"model": spec.name, "family": spec.family, "runtime": rt.name, "batch": batch, "tokens": steps,
              "repeats": repeats, "naive_probes": probes, **extra}
    return [
        Figure("generation", f"{spec.name} cached ({rt.name})", cached, "tokens/s", config),
        Figure("generation", f"{spec.name} naive ({rt.name})", naive, "tokens/s", config),
        Figure("generation", f"{spec.name} cached / naive ({rt.name})", cached / naive, "x", config),
    ]


def run(ctx: Context) -> list[Figure]:
    """The shipped models, through ONNX Runtime (what the service runs) and eager PyTorch. Quick mode draws the
    same number of tokens (the ratio depends on it) through ONNX Runtime only, once, with 3 naive probes."""
    figures = []
    for folder in ctx.models():
        spec = spec_of_manifest(folder)
        steps = min(spec.length, SHIPPED_TOKENS.get(spec.family, 512)) if spec.variable_length else spec.length
        runtimes = [OnnxRuntime.from_folder(folder, ctx.threads)]
        if not ctx.quick:
            runtimes.append(EagerRuntime.from_folder(folder, checked=False))
        for rt in runtimes:
            log.info("generation: %s through %s, %d tokens", spec.name, rt.name, steps)
            figures += measure(rt, spec, steps, 1 if ctx.quick else ctx.repeats, 3 if ctx.quick else 12, {})
            if rt.name == "onnxruntime":
                figures += measure_multi(folder, spec, steps, 1 if ctx.quick else ctx.repeats, 3 if ctx.quick else 12,
                                         {})
    return figures


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description="cached vs naive generation per family, random weights")
    ap.add_argument("--quick", action="store_true", help="tiny models, a few seconds in all")
    ap.add_argument("--families", nargs="*", default=sorted(REALISTIC))
    ap.add_argument("--runtime", choices=[*RUNTIMES, "both"], default="both")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--batch", type=int, default=1, help="rows generated together (tokens/s counts every row)")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--out", type=Path, help="also write the table to OUT.md and the figures to OUT.json")
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s", stream=sys.stderr)
    torch.set_num_threads(args.threads)
    figures = []
    with tempfile.TemporaryDirectory() as tmp:
        for family in args.families:
            overrides, steps = REALISTIC[family]
            if args.quick:
                model = models.tiny(family, index=len(models.REGISTRY[family].tiny_configs()) - 1)
                steps = min(model.length, 64)
            else:
                torch.manual_seed(0)
                model = models.build(family, overrides).eval()
            name = f"{family}-random"
            folder = Path(tmp) / name
            export_model(model, folder, placeholder_meta(model, name))
            spec = spec_of_manifest(folder)
            rts = []
            if args.runtime in ("onnxruntime", "both"):
                rts.append(OnnxRuntime.from_folder(folder, args.threads))
            if args.runtime in ("eager", "both"):
                rts.append(EagerRuntime(model, checked=False))
            rf = getattr(model, "receptive_field", None)
            extra = {"parameters": sum(p.numel() for p in model.parameters()),
                     "receptive_field": rf() if callable(rf) else rf}
            for rt in rts:
                log.info("%s through %s, %d tokens", name, rt.name, steps)
                figures += measure(rt, spec, steps, 1 if args.quick else args.repeats, 4 if args.quick else 12, extra,
                                   args.batch)
                if rt.name == "onnxruntime":
                    figures += measure_multi(folder, spec, steps, 1 if args.quick else args.repeats,
                                             4 if args.quick else 12, extra, args.batch)
    table = markdown(figures, f"batch {args.batch}, {args.threads} thread(s), random weights")
    print(table)
    multi = multi_markdown(figures)
    if multi:
        print("\n" + multi)
        table += "\n\n" + multi
    if args.out:
        command = "python -m bench.generation " + " ".join(argv if argv is not None else sys.argv[1:])
        args.out.with_suffix(".md").write_text(f"`{command}` on {machine()}\n\n{table}\n")
        args.out.with_suffix(".json").write_text(json.dumps({"command": command, "machine": machine(),
                                                             "figures": [f.to_json() for f in figures]}, indent=1))


def markdown(figures: list[Figure], note: str) -> str:
    """One row per (model, runtime): cached and naive tokens/s and their ratio."""
    rows: dict[tuple, dict] = {}
    for f in figures:
        if f.config.get("clock") == "thread CPU time":  # measure_multi's figures: multi_markdown
            continue
        row = rows.setdefault((f.config["model"], f.config["runtime"]), {"config": f.config})
        row[f.unit if f.unit == "x" else ("cached" if " cached " in f.name else "naive")] = f.value
    lines = [f"| model | runtime | tokens | cached tok/s | naive tok/s | cached / naive |  ({note})",
             "|---|---|---:|---:|---:|---:|"]
    for (model, runtime), r in rows.items():
        lines.append(f"| {model} | {runtime} | {r['config']['tokens']} | {r['cached']:,.0f} | {r['naive']:,.1f} "
                     f"| {r['x']:,.1f}x |")
    return "\n".join(lines)


def multi_markdown(figures: list[Figure]) -> str:
    """The multi-token rows (CPU time): the engine at 1 and MULTI_CHUNK positions per call, naive, the ratio."""
    rows: dict[str, dict] = {}
    for f in figures:
        if f.config.get("clock") == "thread CPU time":
            kind = "x" if f.unit == "x" else "naive" if "naive" in f.name else "one" if "1 per" in f.name else "multi"
            rows.setdefault(f.config["model"], {"config": f.config})[kind] = f.value
    if not rows:
        return ""
    batch = next(iter(rows.values()))["config"]["batch"]
    lines = [f"| model | tokens | engine, 1 per call tok/s | engine, {MULTI_CHUNK} per call tok/s | naive tok/s "
             f"| {MULTI_CHUNK} per call / naive |  (thread CPU time, batch {batch})",
             "|---|---:|---:|---:|---:|---:|"]
    for model, r in rows.items():
        lines.append(f"| {model} | {r['config']['tokens']} | {r['one']:,.0f} | {r['multi']:,.0f} | {r['naive']:,.1f} "
                     f"| {r['x']:,.1f}x |")
    return "\n".join(lines)

if __name__ == "__main__":
    main()

