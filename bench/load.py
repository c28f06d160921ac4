"""The load benchmark: many clients at once, in the form of vLLM's serving benchmark.

    python -m bench.load [--models transformer-shakespeare,...] [--concurrency 1,4,16,64] [--request-rate R]
                         [--baseline COMMIT] [--quick] [--out bench/results]

Per model and concurrency level C, a client process (bench.load_client: httpx + httpx-sse on asyncio) keeps at
most C GET /sample streams in flight against a real uvicorn server and reports what vLLM reports: output tokens/s
in all, requests/s, time to first token (TTFT), time per output token (TPOT), inter-token latency (ITL: the gap
between two deliveries of a stream's tokens, per token delivered) and end-to-end latency, each as
median and p99, and the errors; at 16 streams, how fair the server is to each stream. POST /logprob the same
way, with clients that send one example per request and clients that send 16.
Hugging Face `generate` at batch 1 / 4 / 16 runs beside the char-Transformer (bench.peer's GPT-2 copy).

`--baseline COMMIT` checks COMMIT out in a temporary git worktree and serves its own code and artifacts from a
second uvicorn process during the same run; every level is measured on both servers back to back (in alternating
order), so "before" and "after" see the same machine load. The report's targets section computes issue #13's
ratios from one run. Writes <out>/load.json, <out>/load.md and, if matplotlib is installed, <out>/load.png.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import logging
import math
import os
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

import numpy as np

from bench.common import ROOT, machine, serve

log = logging.getLogger("bench.load")

SAMPLE_MODELS = ["transformer-shakespeare", "igpt-mnist", "wavenet-fsdd", "lstm-shakespeare"]
LOGPROB_MODELS = ["fvsbn-mnist", "made2000-mnist", "nade-mnist", "pixelcnn48-mnist"]
CONCURRENCY = [1, 4, 16, 64]
HF_BATCHES = [1, 4, 16]
LOGPROB_BATCHES = [1, 16]  # examples per POST /logprob: single-example clients and batched clients
TOKENS = 255  # drawn per text/image stream (HF needs position 0 of the char-Transformer's 256 for its BOS)
AUDIO_TOKENS = 2000  # drawn per audio stream: a quarter of a second at 8 kHz
AUDIO_CHUNK = 80  # tokens per SSE event for audio (10 ms at 8 kHz, what a player buffers); 1 elsewhere
TOP_K = 40  # text models sample with top_k, as bench.peer's HF generate does
FAIRNESS_AT = 16  # the concurrency level whose streams the fairness figures compare
QUICK = {"tokens": 16, "audio_tokens": 160, "concurrency": [1, 16], "waves": 1, "logprob_requests": 2,
         "hf_batches": [1, 4], "hf_repeats": 1}


@dataclass(frozen=True)
class Tree:
    """A checkout whose code and artifacts one server runs: the current tree, or a baseline commit's worktree."""

    label: str  # "current" or "baseline"
    root: Path
    commit: str
    exported: Path  # the models it serves: its own exported/, or a folder outside any checkout

    def manifest(self, model: str) -> dict | None:
        path = self.exported / model / "manifest.json"
        return json.loads(path.read_text()) if path.is_file() else None


def git(*args: str, cwd: Path = ROOT) -> str:
    return subprocess.run(["git", *args], cwd=cwd, check=True, capture_output=True, text=True).stdout.strip()


@contextlib.contextmanager
def baseline_tree(commit: str, exported: Path) -> Iterator[Tree]:
    """COMMIT checked out in a temporary git worktree, removed afterwards. It serves its own artifacts when
    `exported` is in this checkout (exported/ is versioned), else the same folder as the current tree."""
    with tempfile.TemporaryDirectory(prefix="arserve-baseline-") as tmp:
        path = Path(tmp) / "tree"
        git("worktree", "add", "--detach", str(path), commit)
        if exported.resolve().is_relative_to(ROOT):
            exported = path / exported.resolve().relative_to(ROOT)
        try:
            yield Tree("baseline", path, git("rev-parse", "--short", "HEAD", cwd=path), exported)
        finally:
            git("worktree", "remove", "--force", str(path))


def models_folder(tree: Tree, names: list[str], tmp: Path) -> Path:
    """A folder of links to the tree's own exported models, so that its server loads only those."""
    folder = tmp / f"models-{tree.label}"
    folder.mkdir()
    for name in names:
        if tree.manifest(name) is not None:
            (folder / name).symlink_to((tree.exported / name).resolve())
    return folder


def check_imports_from(tree: Tree, env: dict) -> None:
    """The server of `tree` must import that tree's `app`, not the editable install's."""
    out = subprocess.run([sys.executable, "-c", "import app; print(app.__file__)"], cwd=tree.root, env=env,
                         check=True, capture_output=True, text=True).stdout.strip()
    if not Path(out).resolve().is_relative_to(tree.root.resolve()):
        raise RuntimeError(f"{tree.label} server would import app from {out}, not from {tree.root}")


# ----- statistics, as vLLM's benchmark reports them -------------------------------------------------------


def stats_ms(seconds: list[float]) -> dict | None:
    if not seconds:
        return None
    a = 1000 * np.asarray(seconds)
    return {"mean": float(a.mean()), "median": float(np.median(a)), "p99": float(np.percentile(a, 99))}


def reduce_sample(out: dict, sample_rate: int | None) -> dict:
    """Per-request records of bench.load_client -> the level's figures."""
    done = [r for r in out["records"] if not r["error"] and r["events"]]
    ttft, tpot, itl, e2el, rates, tokens = [], [], [], [], [], 0
    for r in done:
        times = [t for t, _ in r["events"]]
        n = sum(k for _, k in r["events"])
        tokens += n
        ttft.append(r["first"] - r["start"])
        e2el.append(r["end"] - r["start"])
        if n > 1:
            tpot.append((r["end"] - r["first"]) / (n - 1))
        itl += [(b - a) / k for a, b, (_, k) in zip(times, times[1:], r["events"][1:], strict=False)]
        rates.append(n / (r["end"] - r["start"]))
    duration = out["duration"]
    row = {"requests": len(out["records"]), "completed": len(done), "errors": len(out["records"]) - len(done),
           "error_examples": sorted({r["error"] for r in out["records"] if r["error"]})[:3],
           "duration_s": duration, "output_tokens": tokens, "output_tokens_per_s": tokens / duration,
           "request_throughput": len(done) / duration, "ttft_ms": stats_ms(ttft), "tpot_ms": stats_ms(tpot),
           "itl_ms": stats_ms(itl), "e2el_ms": stats_ms(e2el)}
    if rates:
        mid = float(np.median(rates))
        row["stream_tokens_per_s"] = {"median": mid, "min_over_median": min(rates) / mid,
                                      "max_over_median": max(rates) / mid}
    if itl and np.median(itl) > 0:
        row["itl_p99_over_median"] = float(np.percentile(itl, 99) / np.median(itl))
    if sample_rate:
        row["real_time_factor"] = tokens / duration / sample_rate
    return row


def reduce_logprob(out: dict) -> dict:
    done = [r for r in out["records"] if not r["error"]]
    examples, duration = sum(r["examples"] for r in done), out["duration"]
    return {"requests": len(out["records"]), "completed": len(done), "errors": len(out["records"]) - len(done),
            "error_examples": sorted({r["error"] for r in out["records"] if r["error"]})[:3],
            "duration_s": duration, "examples": examples, "examples_per_s": examples / duration,
            "request_throughput": len(done) / duration,
            "latency_ms": stats_ms([r["end"] - r["start"] for r in done])}


# ----- the server's own histograms (current tree: bench and server measure the same things) -----------------

HISTOGRAMS = {"ttft": "arserve_time_to_first_token_seconds", "itl": "arserve_inter_token_seconds",
              "queue_wait": "arserve_queue_wait_seconds"}


def scrape(url: str, model: str) -> dict[str, tuple[float, float]]:
    """(sum, count) of each histogram of `model` the server exports (none on a baseline that predates them)."""
    import httpx
    from prometheus_client.parser import text_string_to_metric_families

    text = httpx.get(f"{url}/metrics", timeout=30).text
    found: dict[str, list[float]] = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            for key, name in HISTOGRAMS.items():
                if s.labels.get("model") == model and s.name in (f"{name}_sum", f"{name}_count"):
                    found.setdefault(key, [0.0, 0.0])[s.name.endswith("_count")] += s.value
    return {k: (v[0], v[1]) for k, v in found.items()}


def server_means(before: dict, after: dict) -> dict:
    """Mean of each histogram over the level, ms."""
    out = {}
    for key, (total, count) in after.items():
        t0, c0 = before.get(key, (0.0, 0.0))
        if count > c0:
            out[f"{key}_ms_mean"] = 1000 * (total - t0) / (count - c0)
    return out


# ----- one level -----------------------------------------------------------------------------------------


def run_client(spec: dict) -> dict:
    """bench.load_client in its own process; its records."""
    proc = subprocess.run([sys.executable, "-m", "bench.load_client"], cwd=ROOT, input=json.dumps(spec),
                          capture_output=True, text=True, timeout=spec.get("timeout", 600) + 120)
    if proc.returncode != 0:
        raise RuntimeError(f"load client failed ({proc.returncode}): {proc.stderr[-2000:]}")
    return json.loads(proc.stdout)


@dataclass(frozen=True)
class Plan:
    concurrency: list[int]
    request_rate: float | None
    tokens: int
    audio_tokens: int
    waves: int  # streams per concurrency slot, one after another (vLLM's num_prompts = waves x C)
    logprob_requests: int  # requests per client
    encoding: str
    quick: bool
    repeats: int = 1  # rounds per level and tree, alternating trees; the median round (by throughput) is reported
    audio_chunk: int = AUDIO_CHUNK  # samples per SSE event for audio

    def requests(self, c: int) -> int:
        return max(c * self.waves, 1 if self.quick else 4)


def sample_params(m: dict, plan: Plan) -> tuple[dict, int | None]:
    """GET /sample parameters for a model (and its sample rate, for audio)."""
    audio = m["modality"] == "audio"
    params: dict = {"chunk": plan.audio_chunk if audio else 1}
    if m.get("variable_length", True):
        params["max_len"] = min(plan.audio_tokens if audio else plan.tokens, m["length"] - 1)
    if m["modality"] == "text":
        params["top_k"] = TOP_K
    rate = (m.get("vocabulary") or {}).get("sample_rate") if audio else None
    return params, rate


def sample_level(url: str, tree: Tree, m: dict, c: int, plan: Plan) -> dict:
    params, rate = sample_params(m, plan)
    spec = {"kind": "sample", "url": url, "model": m["name"], "concurrency": c, "requests": plan.requests(c),
            "request_rate": plan.request_rate, "params": params, "seed": 1000, "warmup": 1}
    before = scrape(url, m["name"])
    row = reduce_sample(run_client(spec), rate)
    row.update(server_means(before, scrape(url, m["name"])))
    return {"tree": tree.label, "model": m["name"], "concurrency": c, "request_rate": plan.request_rate,
            **params, **row}


def logprob_level(url: str, tree: Tree, m: dict, c: int, batch: int, plan: Plan) -> dict:
    length = m["length"] if not m.get("variable_length", True) else min(m["length"], plan.tokens)
    dtype = "float32" if m.get("distribution") == "gaussian_mixture" else "int64"
    spec = {"kind": "logprob", "url": url, "model": m["name"], "concurrency": c, "batch": batch,
            "requests": c * plan.logprob_requests, "request_rate": plan.request_rate, "encoding": plan.encoding,
            "inputs": {"vocab_size": m.get("vocab_size") or 0, "length": length, "dtype": dtype}, "seed": 0,
            "warmup": 1}
    before = scrape(url, m["name"])
    row = reduce_logprob(run_client(spec))
    row.update(server_means(before, scrape(url, m["name"])))
    return {"tree": tree.label, "model": m["name"], "clients": c, "batch": batch, "tokens": length,
            "encoding": plan.encoding, "request_rate": plan.request_rate, **row}


# ----- Hugging Face generate beside the char-Transformer -----------------------------------------------------


def hf_rows(tree: Tree, model: str, tokens: int, batches: list[int], repeats: int, threads: int) -> list[dict]:
    try:
        import torch
        import transformers

        from bench import peer
    except ImportError as e:
        log.warning("HF peer skipped: %s (install the `bench` extra)", e)
        return []
    torch.set_num_threads(threads)
    folder = tree.exported / model
    cfg = json.loads((folder / "manifest.json").read_text())["config"]
    hf, weights = peer.gpt2_from(folder, cfg)
    rows = []
    for b in batches:
        log.info("HF generate: batch %d, %d tokens", b, tokens)
        seconds = peer.hf_seconds(hf, b, tokens, repeats)
        rows.append({"runtime": "transformers generate (use_cache, do_sample, top_k=40), in-process",
                     "model": model, "batch": b, "tokens": tokens, "tokens_per_s": b * tokens / seconds,
                     "seconds": seconds, "repeats": repeats, "weights": weights, "threads": threads,
                     "transformers": transformers.__version__})
    return rows


# ----- targets (issue #13) -----------------------------------------------------------------------------------


def target(what: str, model: str, value: float | None, unit: str, sense: str, bound: float, goal=None) -> dict:
    met = None if value is None else (value >= bound if sense == "min" else value <= bound)
    return {"what": what, "model": model, "value": value, "unit": unit,
            "bound": f"{'≥' if sense == 'min' else '≤'} {bound:g}" + (f" (goal {goal:g})" if goal else ""),
            "met": met}


def targets(report: dict) -> list[dict]:
    sample, lp, hf = report["sample"], report["logprob"], report["peer"]
    base = "baseline" if any(r["tree"] == "baseline" for r in sample) else "current"

    def at(tree: str, model: str, c: int, key: str = "output_tokens_per_s"):
        return next((r.get(key) for r in sample if (r["tree"], r["model"], r["concurrency"]) == (tree, model, c)),
                    None)

    def ratio(a, b):
        return a / b if a is not None and b else None

    out = []
    families = report["meta"]["families"]
    for model in sorted({r["model"] for r in sample}):
        family, modality = families[model]
        many, one = at("current", model, 16), at(base, model, 1)
        if modality == "audio":
            out.append(target("aggregate real-time factor, 16 streams", model,
                              at("current", model, 16, "real_time_factor"), "x real time", "min", 4, 6))
        elif family in ("transformer", "lstm"):
            bound, goal = (4, 6) if modality == "text" and family == "transformer" else (4, None)
            out.append(target(f"tokens/s, 16 streams / 1 stream ({base})", model, ratio(many, one), "x", "min",
                              bound, goal))
        hf16 = next((h["tokens_per_s"] for h in hf if h["model"] == model and h["batch"] == 16), None)
        if hf16:
            out.append(target("tokens/s, 16 streams / HF generate batch 16", model, ratio(many, hf16), "x", "min", 2))
        row16 = next((r for r in sample if (r["tree"], r["model"], r["concurrency"]) == ("current", model, 16)), {})
        if row16:
            out.append(target("fairness: p99 ITL / median ITL, 16 streams", model, row16.get("itl_p99_over_median"),
                              "x", "max", 3))
            spread = row16.get("stream_tokens_per_s", {})
            out.append(target("fairness: slowest stream's tokens/s / median, 16 streams", model,
                              spread.get("min_over_median"), "x", "min", 0.5))
            out.append(target("fairness: fastest stream's tokens/s / median, 16 streams", model,
                              spread.get("max_over_median"), "x", "max", 2))
        if base == "baseline":
            out.append(target("no regression: 1-stream tokens/s, current / baseline", model,
                              ratio(at("current", model, 1), at("baseline", model, 1)), "x", "min", 0.9))
            ttft = [(at(t, model, 1, "ttft_ms") or {}).get("median") for t in ("current", "baseline")]
            out.append(target("no regression: 1-stream median TTFT, current / baseline", model,
                              ratio(*ttft), "x", "max", 1.1))
    for model in sorted({r["model"] for r in lp}):
        def eps(c, b, model=model):
            return next((r["examples_per_s"] for r in lp if (r["tree"], r["model"], r["clients"], r["batch"])
                         == ("current", model, c, b)), None)
        out.append(target("/logprob: 16 single-example clients / 1 client x 16", model, ratio(eps(16, 1), eps(1, 16)),
                          "x", "min", 0.5))
    return out


# ----- the report ----------------------------------------------------------------------------------------------


def fmt(v, digits: int = 3) -> str:
    if v is None:
        return "–"
    if isinstance(v, float) and not math.isfinite(v):
        return str(v)
    return f"{v:,.0f}" if abs(v) >= 100 else f"{v:.{digits}g}"


def ms(d: dict | None, key: str) -> str:
    return fmt(d[key]) if d else "–"


def markdown(report: dict) -> str:
    meta = report["meta"]
    out = [f"# arserve load benchmark ({meta['mode']})", "",
           f"`{meta['command']}` on {meta['machine']}, {meta['finished_utc']}, {meta['seconds']:.0f} s in all. "
           f"Load average (1 min) {meta['loadavg'][0]:.1f} at the start, {meta['loadavg'][1]:.1f} at the end"
           + (f". **{meta['note']}**" if meta["note"] else "") + ".", "",
           "Trees: " + ", ".join(f"{t} = `{c}`" for t, c in meta["trees"].items())
           + f". Request rate: {meta['request_rate'] or 'inf (all at once, capped by the concurrency)'}.", ""]
    if report["targets"]:
        out += ["## targets (issue #13)", "", "| target | model | measured | bound | |", "|---|---|---:|---|---|"]
        for t in report["targets"]:
            verdict = {True: "met", False: "**missed**", None: "not measured"}[t["met"]]
            out.append(f"| {t['what']} | {t['model']} | {fmt(t['value'])} {t['unit']} | {t['bound']} | {verdict} |")
        out.append("")
    out += ["## GET /sample", "",
            "ITL: gap between two deliveries of a stream's tokens, per token delivered (HTTP chunks parsed < 0.5 ms "
            "apart are one delivery). TPOT: (end - first "
            "token) / (tokens - 1). Fairness: slowest and fastest stream's tokens/s over the median stream's. "
            "Server: the means of its own histograms over the level (current tree; its ITL is per SSE write). "
            f"Each level is the median of {meta['plan'].get('repeats', 1)} round(s) by throughput.", "",
            "| model | tree | C | tokens/s | req/s | TTFT med / p99 ms | ITL med / p99 ms | TPOT med ms | "
            "E2E med / p99 ms | errors | fairness min, max / med | server TTFT, ITL, queue ms |",
            "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---|---|"]
    for r in ordered(report["sample"], "concurrency"):
        spread = r.get("stream_tokens_per_s")
        fair = f"{spread['min_over_median']:.2f}, {spread['max_over_median']:.2f}" if spread else "–"
        rtf = f" ({r['real_time_factor']:.2f}x RT)" if "real_time_factor" in r else ""
        server = ", ".join(fmt(r.get(f"{k}_ms_mean")) for k in ("ttft", "itl", "queue_wait")) \
            if "ttft_ms_mean" in r else "–"
        out.append(f"| {r['model']} | {r['tree']} | {r['concurrency']} | {fmt(r['output_tokens_per_s'])}{rtf} | "
                   f"{fmt(r['request_throughput'])} | {ms(r['ttft_ms'], 'median')} / {ms(r['ttft_ms'], 'p99')} | "
                   f"{ms(r['itl_ms'], 'median')} / {ms(r['itl_ms'], 'p99')} | {ms(r['tpot_ms'], 'median')} | "
                   f"{ms(r['e2el_ms'], 'median')} / {ms(r['e2el_ms'], 'p99')} | {r['errors']} | {fair} | {server} |")
    out.append("")
    if report["peer"]:
        out += ["## Hugging Face generate (in-process, same weights)", "", "| model | batch | tokens | tokens/s |",
                "|---|---:|---:|---:|"]
        out += [f"| {h['model']} | {h['batch']} | {h['tokens']} | {fmt(h['tokens_per_s'])} |" for h in report["peer"]]
        out.append("")
    if report["logprob"]:
        out += ["## POST /logprob", "", "| model | tree | clients | examples / request | examples/s | req/s | "
                "latency med / p99 ms | errors |", "|---|---|---:|---:|---:|---:|---:|---:|"]
        for r in ordered(report["logprob"], "batch", "clients"):
            out.append(f"| {r['model']} | {r['tree']} | {r['clients']} | {r['batch']} | {fmt(r['examples_per_s'])} | "
                       f"{fmt(r['request_throughput'])} | {ms(r['latency_ms'], 'median')} / "
                       f"{ms(r['latency_ms'], 'p99')} | {r['errors']} |")
        out.append("")
    return "\n".join(out)


def ordered(rows: list[dict], *keys: str) -> list[dict]:
    """Rows by model (in the order measured), then `keys`, the current tree before the baseline."""
    models = list(dict.fromkeys(r["model"] for r in rows))
    return sorted(rows, key=lambda r: (models.index(r["model"]), *(r[k] for k in keys), r["tree"] != "current"))


def plot(report: dict, path: Path) -> bool:
    """Output tokens/s against concurrency per model (and /logprob examples/s); False without matplotlib."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        log.warning("matplotlib is not installed: no plot (the markdown tables hold the same figures)")
        return False
    models = sorted({r["model"] for r in report["sample"]})
    panels = len(models) + bool(report["logprob"])
    cols = min(panels, 3)
    rows = -(-panels // cols)
    fig, axes = plt.subplots(rows, cols, figsize=(3.4 * cols, 2.7 * rows), squeeze=False)
    for ax, model in zip(axes.flat, models, strict=False):
        for tree, style in (("current", "o-"), ("baseline", "s--")):
            pts = sorted((r["concurrency"], r["output_tokens_per_s"]) for r in report["sample"]
                         if r["model"] == model and r["tree"] == tree)
            if pts:
                ax.plot(*zip(*pts, strict=True), style, label=tree, ms=4)
        hf = sorted((h["batch"], h["tokens_per_s"]) for h in report["peer"] if h["model"] == model)
        if hf:
            ax.plot(*zip(*hf, strict=True), "^:", label="HF generate", ms=4)
        ax.set(title=model, xscale="log", xlabel="concurrent streams", ylabel="tokens/s", ylim=(0, None))
        ax.set_xticks(report["meta"]["concurrency"], [str(c) for c in report["meta"]["concurrency"]])
        ax.legend(fontsize=7)
    if report["logprob"]:
        ax = axes.flat[len(models)]
        for model in sorted({r["model"] for r in report["logprob"]}):
            for batch, style in ((1, "o-"), (16, "s--")):
                pts = sorted((r["clients"], r["examples_per_s"]) for r in report["logprob"]
                             if (r["model"], r["batch"], r["tree"]) == (model, batch, "current"))
                if pts:
                    ax.plot(*zip(*pts, strict=True), style, label=f"{model} x{batch}", ms=3)
        ax.set(title="POST /logprob (current)", xscale="log", yscale="log", xlabel="clients", ylabel="examples/s")
        ax.set_xticks(report["meta"]["concurrency"], [str(c) for c in report["meta"]["concurrency"]])
        ax.legend(fontsize=6)
    for ax in list(axes.flat)[panels:]:
        ax.axis("off")
    fig.tight_layout()
    buffer = io.BytesIO()
    fig.savefig(buffer, dpi=72)
    plt.close(fig)
    from PIL import Image

    Image.open(buffer).convert("RGB").quantize(64).save(path, optimize=True)  # a palette PNG: a third the size
    return True


# ----- the run ---------------------------------------------------------------------------------------------------


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ints = lambda s: [int(v) for v in s.split(",") if v]  # noqa: E731
    names = lambda s: [v for v in s.split(",") if v]  # noqa: E731
    ap.add_argument("--models", type=names, default=SAMPLE_MODELS, help="models for GET /sample (comma-separated)")
    ap.add_argument("--logprob-models", type=names, default=LOGPROB_MODELS, help="models for POST /logprob")
    ap.add_argument("--concurrency", type=ints, default=None, help="levels, e.g. 1,4,16,64")
    ap.add_argument("--request-rate", type=float, default=None,
                    help="requests/s released as a Poisson process (default: all at once, capped by concurrency)")
    ap.add_argument("--baseline", help="a commit served beside the current tree in the same run")
    ap.add_argument("--tokens", type=int, default=None, help=f"tokens per text/image stream ({TOKENS})")
    ap.add_argument("--audio-tokens", type=int, default=None, help=f"samples per audio stream ({AUDIO_TOKENS})")
    ap.add_argument("--repeats", type=int, default=1, help="rounds per level and tree; the median round is kept")
    ap.add_argument("--waves", type=int, default=None, help="requests per concurrency slot (2)")
    ap.add_argument("--logprob-requests", type=int, default=None, help="requests per /logprob client (16)")
    ap.add_argument("--encoding", default="json", help="POST /logprob body encoding (bench.load_client.ENCODINGS)")
    ap.add_argument("--no-hf", action="store_true", help="skip Hugging Face generate")
    ap.add_argument("--threads", type=int, default=1, help="intra-op threads per runtime, server and HF")
    ap.add_argument("--quick", action="store_true", help="a smoke run: few tokens, levels 1 and 16")
    ap.add_argument("--note", default="", help="a label for the report, e.g. 'machine shared and loaded'")
    ap.add_argument("--render", type=Path, help="re-render a saved load.json (markdown, targets, plot); no run")
    ap.add_argument("--exported", type=Path, default=ROOT / "exported", help="the current tree's models")
    ap.add_argument("--out", type=Path, default=ROOT / "bench" / "results")
    return ap.parse_args(argv)


def make_plan(args: argparse.Namespace) -> Plan:
    q = QUICK if args.quick else {}

    def pick(value, key, default):
        return value if value is not None else q.get(key, default)

    return Plan(concurrency=pick(args.concurrency, "concurrency", CONCURRENCY), request_rate=args.request_rate,
                tokens=pick(args.tokens, "tokens", TOKENS), audio_tokens=pick(args.audio_tokens, "audio_tokens",
                                                                             AUDIO_TOKENS),
                waves=pick(args.waves, "waves", 2), logprob_requests=pick(args.logprob_requests, "logprob_requests",
                                                                          16),
                encoding=args.encoding, quick=args.quick, repeats=args.repeats)


def measure(args: argparse.Namespace, plan: Plan, trees: list[Tree], report: dict, tmp: Path) -> None:
    names = sorted(set(args.models) | set(args.logprob_models))
    settings = {"ARSERVE_MAX_CONCURRENT_STREAMS": str(max(plan.concurrency) + 8),
                # every client of the benchmark comes from one address: lift the per-client cap (a tree older
                # than it ignores the variable)
                "ARSERVE_MAX_STREAMS_PER_CLIENT": str(max(plan.concurrency) + 8),
                "ARSERVE_MAX_BATCH": str(max(64, *plan.concurrency, *LOGPROB_BATCHES))}
    with contextlib.ExitStack() as stack:
        urls = {}
        for tree in trees:
            env = {**os.environ, "PYTHONPATH": str(tree.root)}
            check_imports_from(tree, env)
            log.info("serving %s (%s) from %s", tree.label, tree.commit, tree.root)
            urls[tree.label] = stack.enter_context(serve(models_folder(tree, names, tmp), args.threads, cwd=tree.root,
                                                         PYTHONPATH=str(tree.root), **settings))

        def manifests(model: str) -> list[tuple[Tree, dict]]:
            found = [(t, t.manifest(model)) for t in trees]
            missing = [t.label for t, m in found if m is None]
            if missing:
                log.warning("%s: not in %s, measured without it", model, ", ".join(missing))
            return [(t, m) for t, m in found if m is not None]

        for model in args.models:
            levels = [(c, f"/sample {model} x{c}",
                       lambda tree, m, c=c: sample_level(urls[tree.label], tree, m, c, plan)) for c in plan.concurrency]
            report["sample"] += rounds(manifests(model), levels, plan.repeats, "output_tokens_per_s")
        for model in args.logprob_models:
            levels = [((c, b), f"/logprob {model} {c} clients x{b}",
                       lambda tree, m, c=c, b=b: logprob_level(urls[tree.label], tree, m, c, b, plan))
                      for b in LOGPROB_BATCHES for c in plan.concurrency]
            report["logprob"] += rounds(manifests(model), levels, plan.repeats, "examples_per_s")


def rounds(served: list[tuple[Tree, dict]], levels: list, repeats: int, key: str) -> list[dict]:
    """Each level(tree, manifest) of a model, `repeats` rounds, on every tree. A round runs every level, so that
    the rounds of one level are spread over the model's whole measurement, and the trees alternate (ABBA) from
    level to level and round to round: a drift in the machine's load hits every level and tree alike. Per level
    and tree: the round of median throughput, with every round's throughput."""
    runs: dict[tuple, list[dict]] = {}
    flip = 0
    for r in range(repeats):
        for level_key, what, level in levels:
            for tree, m in served[:: (-1) ** flip]:
                log.info("%s on %s (round %d of %d)", what, tree.label, r + 1, repeats)
                runs.setdefault((level_key, tree.label), []).append(level(tree, m))
            flip += 1
    out = []
    for rows in runs.values():
        ranked = sorted(rows, key=lambda row: row[key])
        out.append({**ranked[(len(ranked) - 1) // 2], "rounds": [row[key] for row in rows]})
    return out


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s", stream=sys.stderr)
    logging.getLogger("httpx").setLevel(logging.WARNING)
    if args.render:  # the tables, targets and plot again from a saved report, measuring nothing
        report = json.loads(args.render.read_text())
        report["targets"] = targets(report)
        return write(report, args.render)
    plan = make_plan(args)
    current = Tree("current", ROOT, git("rev-parse", "--short", "HEAD")
                   + ("+changes" if git("status", "--porcelain", "--untracked-files=no") else ""), args.exported)
    unknown = [m for m in {*args.models, *args.logprob_models} if current.manifest(m) is None]
    if unknown:
        sys.exit(f"no exported model {', '.join(sorted(unknown))} under {args.exported}")
    t0, load0 = time.perf_counter(), os.getloadavg()[0]
    report: dict = {"sample": [], "logprob": [], "peer": [], "targets": []}
    with contextlib.ExitStack() as stack:
        trees = [current]
        if args.baseline:
            trees.append(stack.enter_context(baseline_tree(args.baseline, args.exported)))
        text = [m for m in args.models if (current.manifest(m)["family"], current.manifest(m)["modality"])
                == ("transformer", "text")]
        if text and not args.no_hf:
            hf_batches = QUICK["hf_batches"] if args.quick else HF_BATCHES
            report["peer"] = hf_rows(current, text[0], plan.tokens, hf_batches,
                                     QUICK["hf_repeats"] if args.quick else 3, args.threads)
        tmp = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="arserve-load-")))
        measure(args, plan, trees, report, tmp)
    families = {}
    for m in {*args.models, *args.logprob_models}:
        manifest = current.manifest(m)
        families[m] = (manifest["family"], manifest["modality"])
    report["meta"] = {
        "mode": "quick" if args.quick else "full", "command": "python -m bench.load " + " ".join(sys.argv[1:]),
        "machine": machine(), "finished_utc": datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC"),
        "seconds": time.perf_counter() - t0, "loadavg": [load0, os.getloadavg()[0]], "note": args.note,
        "trees": {t.label: t.commit for t in trees}, "concurrency": plan.concurrency,
        "request_rate": plan.request_rate, "threads": args.threads, "families": families,
        "plan": {k: v for k, v in plan.__dict__.items()},
    }
    report["targets"] = targets(report)
    args.out.mkdir(parents=True, exist_ok=True)
    write(report, args.out / ("load-quick.json" if args.quick else "load.json"))


def write(report: dict, path: Path) -> None:
    """The report as JSON at path, and beside it as markdown (printed too) and, with matplotlib, a PNG plot."""
    report["meta"]["plot"] = plot(report, path.with_suffix(".png"))
    path.write_text(json.dumps(report, indent=1) + "\n")
    md = markdown(report)
    path.with_suffix(".md").write_text(md + "\n")
    print(md)


if __name__ == "__main__":
    main()
