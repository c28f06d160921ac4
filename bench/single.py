"""One stream per generating model through HTTP, this tree beside a baseline commit in the same run (issue #19).

`python -m bench --baseline COMMIT` (default BASELINE, the commit before the concurrency and single-stream work):
bench.load's client and ABBA rounds at concurrency 1 on both trees, each served by its own `python -m app.serve`.
Per model: tokens/s and median time to first token on each tree, and their ratios. WaveNet streams AUDIO_CHUNK
samples per event and is also given as a real-time factor. For text models, the time to first token is also
read with a plain socket (raw_ttft_ms): what the server takes, without the Python client's own 2-4 ms.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import socket
import statistics
import tempfile
import time
from pathlib import Path
from urllib.parse import urlencode, urlsplit

from bench import load
from bench.common import ROOT, Context, Figure, serve

log = logging.getLogger(__name__)

BASELINE = "53532cb"  # app/ regrouped by part, before the concurrency (#13) and single-stream (#19) work
MODELS = ["transformer-shakespeare", "lstm-shakespeare", "igpt-mnist", "wavenet-fsdd"]
AUDIO_CHUNK = 128  # samples per SSE event (16 ms at 8 kHz): issue #19's one-stream target is at chunk >= 100
REPEATS, QUICK_REPEATS = 3, 1
RAW_REQUESTS, RAW_WARMUP = 30, 5  # streams per text model read by the raw-socket client


def raw_ttft_ms(url: str, query: dict, requests: int, warmup: int) -> float:
    """Median time to the first token event of GET /sample read over a plain socket: one keep-alive connection,
    the request written in one send, bytes read as they come. It leaves out what a Python HTTP client adds
    (httpx's request building, its pool and SSE parsing: 2-4 ms per request here, on the same 2 cores as the
    server), so it is the time the server and the network stack take."""
    parts = urlsplit(url)
    request = (f"GET /sample?{urlencode(query)} HTTP/1.1\r\nHost: {parts.netloc}\r\n\r\n").encode()
    times = []
    with socket.create_connection((parts.hostname, parts.port)) as sock:
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        for i in range(warmup + requests):
            t0, first, data = time.perf_counter(), None, b""
            sock.sendall(request)
            while not data.endswith(b"\r\n0\r\n\r\n"):  # the chunked body's end
                chunk = sock.recv(1 << 16)
                if not chunk:
                    raise RuntimeError(f"{query['model']}: the server closed the connection")
                data += chunk
                if first is None and b"event: token" in data:
                    first = time.perf_counter()
            if not data.startswith(b"HTTP/1.1 200") or first is None:
                raise RuntimeError(f"{query['model']}: {data[:200]!r}")
            if i >= warmup:
                times.append(first - t0)
    return 1000 * statistics.median(times)


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
        text = [m for m in models if current.manifest(m)["modality"] == "text"]
        raw = {}
        if text:
            url = stack.enter_context(serve(ctx.exported, ctx.threads))
            n = 3 if ctx.quick else RAW_REQUESTS
            for model in text:
                raw[model] = raw_ttft_ms(url, {"model": model, **load.sample_params(current.manifest(model), plan)[0]},
                                         n, 1 if ctx.quick else RAW_WARMUP)
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
        if model in raw:
            figures.append(Figure("single", f"{model} 1 stream ttft, raw socket", raw[model], "ms",
                                  {**cfg, "requests": RAW_REQUESTS, "client": "one keep-alive socket, no HTTP library",
                                   "rounds": None}))
        if then is not None:
            base = {**cfg, "rounds": then["rounds"]}
            figures += [Figure("single", f"{model} 1 stream at baseline", then["output_tokens_per_s"], "tokens/s",
                               base),
                        Figure("single", f"{model} 1 stream / baseline", tps / then["output_tokens_per_s"], "x", cfg),
                        Figure("single", f"{model} 1 stream ttft / baseline", ttft / then["ttft_ms"]["median"], "x",
                               cfg)]
    return figures
