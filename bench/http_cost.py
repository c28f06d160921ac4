"""What the HTTP side costs the event loop: its CPU per POST /logprob request and per streamed token.

    python -m bench.http_cost [--baseline DIR] [--requests 400] [--streams 16] [--out bench/results/http/cost]

The app (app.main.create_app, its lifespan run) is driven in-process through raw ASGI calls, without sockets
or uvicorn, and the figure is the CPU time of the thread that runs the event loop (time.thread_time), divided
by the requests or tokens: the middlewares, routing, validation, the service layer and the response writing,
but neither the model (its own threads) nor uvicorn's h11 parser. Wall-clock throughput on a shared machine moves
with everyone else's load; a thread's CPU time much less, so this is the figure that compares two trees run one
after the other. `--baseline DIR`: the same for the app/ of another source tree (e.g. `git archive` of main),
each tree in a process of its own, rounds interleaved, medians reported.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
LOGPROB_MODEL, STREAM_MODEL = "fvsbn-mnist", "transformer-shakespeare"


async def call(app, method: str, path: str, query: bytes = b"", body: bytes = b"",
               content_type: bytes = b"application/json") -> tuple[int, bytes]:
    """One request through the ASGI app; (status, body). The connection stays open (receive blocks) until the
    answer is complete, as a client that reads it does."""
    headers = [(b"host", b"bench"), (b"content-type", content_type), (b"content-length", str(len(body)).encode())]
    scope = {"type": "http", "asgi": {"version": "3.0"}, "http_version": "1.1", "method": method, "scheme": "http",
             "path": path, "raw_path": path.encode(), "query_string": query, "root_path": "", "headers": headers,
             "client": ("127.0.0.1", 50000), "server": ("127.0.0.1", 80)}
    sent, done, status, chunks = False, asyncio.Event(), 0, []

    async def receive() -> dict:
        nonlocal sent
        if not sent:
            sent = True
            return {"type": "http.request", "body": body, "more_body": False}
        await done.wait()
        return {"type": "http.disconnect"}

    async def send(message: dict) -> None:
        nonlocal status
        if message["type"] == "http.response.start":
            status = message["status"]
        elif message["type"] == "http.response.body":
            chunks.append(message.get("body", b""))
            if not message.get("more_body", False):
                done.set()

    await app(scope, receive, send)
    done.set()
    return status, b"".join(chunks)


async def measure(requests: int, streams: int) -> dict[str, float]:
    import numpy as np

    from app.main import create_app

    app = create_app()
    async with app.router.lifespan_context(app):
        await app.state.loading
        x = np.random.default_rng(0).integers(0, 2, (16, 784))
        one = json.dumps({"model": LOGPROB_MODEL, "inputs": x[:1].tolist()}).encode()
        sixteen = json.dumps({"model": LOGPROB_MODEL, "inputs": x.tolist()}).encode()
        packed = x.astype(np.uint8).tobytes()
        query = f"model={LOGPROB_MODEL}&shape=16,784&dtype=uint8".encode()
        forms = {
            "POST /logprob, JSON, 1 example (µs/request)": lambda: call(app, "POST", "/logprob", body=one),
            "POST /logprob, JSON, 16 examples (µs/request)": lambda: call(app, "POST", "/logprob", body=sixteen),
            "POST /logprob, packed, 16 examples (µs/request)": lambda: call(
                app, "POST", "/logprob", query, packed, b"application/octet-stream"),
        }
        out = {}
        for name, request in forms.items():
            status, body = await request()  # warm-up
            assert status == 200, body[:300]
            t0 = time.thread_time()
            for _ in range(requests):
                await request()
            out[name] = 1e6 * (time.thread_time() - t0) / requests

        async def stream(seed: int) -> int:
            q = f"model={STREAM_MODEL}&max_len=255&chunk=1&top_k=40&seed={seed}".encode()
            status, body = await call(app, "GET", "/sample", q)
            assert status == 200 and b"event: done" in body, body[-300:]
            return body.count(b"event: token\n")

        await stream(0)
        t0 = time.thread_time()
        tokens = sum(await asyncio.gather(*(stream(s) for s in range(streams))))
        out[f"GET /sample, {streams} streams of {STREAM_MODEL} (µs/token)"] = 1e6 * (time.thread_time() - t0) / tokens
    return out


def child(args: argparse.Namespace) -> None:
    sys.path.insert(0, os.getcwd())  # the tree this process measures: its app/, not the installed one
    print(json.dumps(asyncio.run(measure(args.requests, args.streams))))


def run_tree(tree: Path, args: argparse.Namespace, models: Path) -> dict[str, float]:
    env = {**os.environ, "ARSERVE_MODEL_DIR": str(models), "ARSERVE_LOG_LEVEL": "warning",
           "ARSERVE_ORT_INTRA_OP_THREADS": "1", "OMP_NUM_THREADS": "1", "ARSERVE_MAX_CONCURRENT_STREAMS": "64",
           "ARSERVE_MAX_STREAMS_PER_CLIENT": "64"}
    cmd = [sys.executable, str(Path(__file__).resolve()), "--child", "--requests", str(args.requests),
           "--streams", str(args.streams)]
    out = subprocess.run(cmd, cwd=tree, env=env, capture_output=True, text=True, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--baseline", type=Path, help="another source tree whose app/ is measured the same way")
    ap.add_argument("--requests", type=int, default=400, help="requests per POST /logprob form")
    ap.add_argument("--streams", type=int, default=16, help="concurrent GET /sample streams")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--exported", type=Path, default=ROOT / "exported")
    ap.add_argument("--out", type=Path, help="write <out>.md and <out>.json")
    ap.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        return child(args)
    from bench.common import machine
    from bench.scoring import only

    trees = {"this": ROOT, **({"baseline": args.baseline.resolve()} if args.baseline else {})}
    rounds: dict[str, list[dict[str, float]]] = {label: [] for label in trees}
    with only(args.exported, [LOGPROB_MODEL, STREAM_MODEL]) as models:
        for r in range(args.rounds):
            for label in (list(trees) if r % 2 == 0 else list(trees)[::-1]):
                rounds[label].append(run_tree(trees[label], args, models))
            print(f"round {r + 1}/{args.rounds} done", flush=True)
    figures = {label: {k: statistics.median(x[k] for x in rs) for k in rs[0]} for label, rs in rounds.items()}
    command = " ".join(["python -m bench.http_cost", *sys.argv[1:]])
    lines = [f"`{command}` on {machine()}; load average {os.getloadavg()[0]:.1f} at the end", "",
             "| event-loop CPU | " + " | ".join(trees) + (" | this / baseline |" if len(trees) > 1 else ""),
             "|---|" + "---:|" * (len(trees) + (len(trees) > 1))]
    for k in figures["this"]:
        row = f"| {k} | " + " | ".join(f"{figures[label][k]:,.0f}" for label in trees)
        if "baseline" in figures:
            row += f" | {figures['this'][k] / figures['baseline'][k]:.2f}"
        lines.append(row + " |")
    text = "\n".join(lines) + "\n"
    print(text)
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.with_suffix(".md").write_text(text)
        args.out.with_suffix(".json").write_text(json.dumps({"command": command, "machine": machine(),
                                                             "figures": figures, "rounds": rounds}, indent=1))


if __name__ == "__main__":
    main()
