"""One stream per generating model through HTTP, this tree beside a baseline commit in the same run (issue #19).

`python -m bench --baseline COMMIT` (default BASELINE, the commit before the concurrency and single-stream work):
bench.load's client and ABBA rounds at concurrency 1 on both trees, each served by its own `python -m app.serve`.
Per model: tokens/s and median time to first token on each tree, and their ratios. WaveNet streams AUDIO_CHUNK
samples per event and is also given as a real-time factor.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import tempfile
from pathlib import Path

from bench import load
from bench.common import ROOT, Context, Figure

log = logging.getLogger(__name__)

BASELINE = "53532cb"  # app/ regrouped by part, before the concurrency (#13) and single-stream (#19) work
MODELS = ["transformer-shakespeare", "lstm-shakespeare", "igpt-mnist", "wavenet-fsdd"]
AUDIO_CHUNK = 128  # samples per SSE event (16 ms at 8 kHz): issue #19's one-stream target is at chunk >= 100
REPEATS, QUICK_REPEATS = 3, 1


def run(ctx: Context) -> list[Figure]:
    models = [m for m in MODELS if (ctx.exported / m / "manifest.json").is_file()]
    if not ctx.baseline or not models:
        return []
    argv = ["--models", ",".join(models), "--logprob-models", "", "--concurrency", "1", "--no-hf",
            "--repeats", str(QUICK_REPEATS if ctx.quick else REPEATS), "--threads", str(ctx.threads),
            "--exported", str(ctx.exported), *(["--quick"] if ctx.quick else [])]
    args = load.parse_args(argv)
    plan = dataclasses.replace(load.make_plan(args), audio_chunk=AUDIO_CHUNK)
    report: dict = {"sample": [], "logprob": []}
    current = load.Tree("current", ROOT, load.git("rev-parse", "--short", "HEAD"), ctx.exported)
    with contextlib.ExitStack() as stack:
        baseline = stack.enter_context(load.baseline_tree(ctx.baseline, ctx.exported))
        tmp = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="arserve-single-")))
        load.measure(args, plan, [current, baseline], report, tmp)
    rows = {(r["tree"], r["model"]): r for r in report["sample"] if r["concurrency"] == 1}
    figures = []
    for model in models:
        now, then = rows.get(("current", model)), rows.get(("baseline", model))
        if now is None:
            continue
        m = current.manifest(model)
        rate = (m.get("vocabulary") or {}).get("sample_rate")
        cfg = {"model": model, "streams": 1, "tokens": now["output_tokens"] // now["completed"],
               "chunk": now["chunk"], "top_k": now.get("top_k", 0),
               "repeats": plan.repeats, "baseline": ctx.baseline, "rounds": now["rounds"]}
        tps, ttft = now["output_tokens_per_s"], now["ttft_ms"]["median"]
        figures += [Figure("single", f"{model} 1 stream", tps, "tokens/s", cfg),
                    Figure("single", f"{model} 1 stream ttft", ttft, "ms", cfg)]
        if rate:
            figures.append(Figure("single", f"{model} 1 stream real time", tps / rate, "real-time factor", cfg))
        if then is not None:
            base = {**cfg, "rounds": then["rounds"]}
            figures += [Figure("single", f"{model} 1 stream at baseline", then["output_tokens_per_s"], "tokens/s",
                               base),
                        Figure("single", f"{model} 1 stream / baseline", tps / then["output_tokens_per_s"], "x", cfg),
                        Figure("single", f"{model} 1 stream ttft / baseline", ttft / then["ttft_ms"]["median"], "x",
                               cfg)]
    return figures
