"""POST /logprob throughput (issue #13's scoring targets) and the issue #12 WaveNet request, in one run.

    python -m bench.scoring [--exported exported] [--rounds 5] [--baseline DIR] [--crowd-models A,B] [--big]
                            [--out bench/results/scoring]

- bulk: FVSBN examples/s through HTTP (packed body, and JSON) against the same ONNX Runtime backend in-process
  (app.engine.scoring.score), at batch 16 and 64.
- crowd: FVSBN and MADE (the issue's targets: cheap models, where a request's fixed cost dominates) and PixelRNN
  (a costly pass, where merging requests pays), 16 concurrent clients that each send one example per request
  against one client that sends batches of 16 (JSON and packed), each client a closed loop of
  app.client.AsyncArserveClient requests.
- --baseline DIR: the bulk figures and the crowd's JSON figures again from the app/ of another source tree (e.g.
  `git archive` of main), served beside this one in the same run.
- --big: the issue's 64 inputs x 20,000 WaveNet samples, packed, against a server whose work budget lets it
  through: seconds, the server's RSS before / after / after a repeat, tokens a stream of the same model made
  meanwhile.

Every configuration runs once per round, rounds interleaved, medians reported: the machines these run on are
shared and noisy, so only figures from the same rounds are compared.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import httpx
import numpy as np

from app.client import ArserveClient, AsyncArserveClient
from app.engine.scoring import score
from app.runtime import backends
from app.runtime.manifest import load_manifest
from bench.common import machine, serve, server_process

CROWD_MODELS = ["fvsbn-mnist", "made2000-mnist", "pixelrnn-mnist"]  # all take 784 binary pixels
CLIENTS = 16  # concurrent single-example clients, and the batch of the one batching client
REQUESTS = 12  # requests per client per round in the crowd figures
BULK_REQUESTS = 20  # requests per round in the bulk figures


@contextlib.contextmanager
def only(exported: Path, names: list[str]) -> Iterator[Path]:
    """A model folder holding only the named models (symlinks): a server that starts fast."""
    with tempfile.TemporaryDirectory() as tmp:
        for name in names:
            (Path(tmp) / name).symlink_to((exported / name).resolve())
        yield Path(tmp)


def per_second(fn: Callable[[], None], count: int) -> float:
    t0 = time.perf_counter()
    fn()
    return count / (time.perf_counter() - t0)


def bulk_round(url: str, backend, x: np.ndarray) -> dict[str, float]:
    """examples/s of BULK_REQUESTS requests of len(x) rows: in-process, packed HTTP, JSON HTTP."""
    n = BULK_REQUESTS * len(x)
    rows = x.tolist()
    with ArserveClient(url) as c:
        c.logprob_array("fvsbn-mnist", x)  # connection and first-call warm-up
        return {
            "in-process": per_second(lambda: [score(backend, x, 0) for _ in range(BULK_REQUESTS)], n),
            "http packed": per_second(lambda: [c.logprob_array("fvsbn-mnist", x) for _ in range(BULK_REQUESTS)], n),
            "http json": per_second(lambda: [c.logprob("fvsbn-mnist", rows) for _ in range(BULK_REQUESTS)], n),
        }


async def crowd(url: str, model: str, x: np.ndarray, clients: int, per_request: int, packed: bool) -> float:
    """examples/s of `clients` closed-loop clients, each sending REQUESTS requests of `per_request` examples."""

    async def one(c: AsyncArserveClient, k: int) -> None:
        for i in range(REQUESTS):
            rows = x[(k * REQUESTS + i) % len(x) :][:per_request]
            if packed:
                await c.logprob_array(model, rows)
            else:
                await c.logprob(model, rows.tolist())

    limits = httpx.Limits(max_connections=clients)
    async with AsyncArserveClient(url, timeout=120, limits=limits) as c:
        await asyncio.gather(*(c.logprob(model, x[:1].tolist()) for _ in range(clients)))  # open the connections
        t0 = time.perf_counter()
        await asyncio.gather(*(one(c, k) for k in range(clients)))
        return clients * REQUESTS * per_request / (time.perf_counter() - t0)


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of a process so far (/proc/PID/stat)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def crowd_round(servers: dict[str, tuple[str, subprocess.Popen]], x: np.ndarray, models: list[str]) -> dict[str, float]:
    """examples/s of each crowd, and the server's CPU ms per request meanwhile (steadier than examples/s on a
    shared machine: it does not count the time the server waited for a core)."""
    out = {}
    for label, (url, proc) in servers.items():
        pid = proc.pid
        for model in models:
            for packed in ((False, True) if label == "this" else (False,)):
                form = "packed" if packed else "json"
                for clients, per_request in ((CLIENTS, 1), (1, CLIENTS)):
                    name = f"{label} {model} {form} " + ("16 clients x 1" if clients > 1 else "1 client x 16")
                    cpu = cpu_seconds(pid)
                    out[name] = asyncio.run(crowd(url, model, x, clients, per_request, packed))
                    # the warm-up round of crowd() counted too: one request per client
                    out[f"{name} cpu"] = 1000 * (cpu_seconds(pid) - cpu) / (clients * (REQUESTS + 1))
    return out


def medians(rounds: list[dict[str, float]]) -> dict[str, float]:
    return {k: statistics.median(r[k] for r in rounds) for k in rounds[0]}


def rss_mb(url: str) -> float:
    text = httpx.get(f"{url}/metrics", timeout=30).text
    line = next(s for s in text.splitlines() if s.startswith("process_resident_memory_bytes"))
    return float(line.split()[-1]) / 2**20


def big(exported: Path) -> dict[str, float]:
    """The issue's 64 x 20,000 WaveNet request, twice, with a stream of the same model running meanwhile."""
    x = np.random.default_rng(0).integers(0, 256, (64, 20000)).astype(np.uint8)
    budget = json.dumps({"wavenet-fsdd": x.size})
    with only(exported, ["wavenet-fsdd"]) as folder, serve(folder, ARSERVE_MODEL_MAX_SCORED_POSITIONS=budget,
                                                           ARSERVE_REQUEST_TIMEOUT_S="900") as url:
        arrivals: list[tuple[float, int]] = []

        def stream() -> None:
            with ArserveClient(url, timeout=900) as c:
                for e in c.sample("wavenet-fsdd", max_len=20000, seed=1, chunk=20):
                    if e.event == "token":
                        arrivals.append((time.monotonic(), len(e.data["tokens"])))

        with ArserveClient(url, timeout=900) as c:
            c.logprob_array("wavenet-fsdd", x[:1, :2000])
            reader = threading.Thread(target=stream, daemon=True)
            reader.start()
            while not arrivals:
                time.sleep(0.05)
            out = {"RSS before (MB)": rss_mb(url)}
            t0 = time.monotonic()
            c.logprob_array("wavenet-fsdd", x)
            t1 = time.monotonic()
            out["first request (s)"] = t1 - t0
            out["RSS after it (MB)"] = rss_mb(url)
            c.logprob_array("wavenet-fsdd", x)
            out["repeat (s)"] = time.monotonic() - t1
            out["RSS after the repeat (MB)"] = rss_mb(url)
            out["stream tokens during the first (tokens)"] = sum(n for t, n in arrivals if t0 <= t <= t1)
            out["stream tokens/s during the first"] = out["stream tokens during the first (tokens)"] / (t1 - t0)
        return out


def report(figures: dict[str, dict[str, float]], command: str) -> str:
    lines = [f"`{command}` on {machine()}", ""]
    bulk = {k: v for k, v in figures.items() if k.startswith("bulk")}
    for title, f in bulk.items():
        lines += [f"### {title} (examples/s)", "", "| path | examples/s | vs in-process |", "|---|---:|---:|"]
        lines += [f"| {k} | {v:,.0f} | {v / f['in-process']:.2f} |" for k, v in f.items()]
        lines.append("")
    if "crowd" in figures:
        f = figures["crowd"]
        lines += ["### 16 single-example clients vs one client sending batches of 16 (examples/s)", "",
                  "| server | model | body | 16 clients x 1 | 1 client x 16 | ratio |", "|---|---|---|---:|---:|---:|"]
        for key, v in f.items():
            if key.endswith("16 clients x 1"):
                label, model, form = key.split()[:3]
                batch = f[key.replace("16 clients x 1", "1 client x 16")]
                lines.append(f"| {label} | {model} | {form} | {v:,.0f} | {batch:,.0f} | {v / batch:.2f} |")
        lines += ["", "### The server's CPU per request meanwhile (ms; user + system, all threads)", "",
                  "| server | model | body | 16 clients x 1 example | 1 client x 16 examples | per example, 16 / 1 |",
                  "|---|---|---|---:|---:|---:|"]
        for key, v in f.items():
            if key.endswith("16 clients x 1 cpu"):
                label, model, form = key.split()[:3]
                batch = f[key.replace("16 clients x 1", "1 client x 16")]
                lines.append(f"| {label} | {model} | {form} | {v:.2f} | {batch:.2f} | {batch / 16 / v:.2f} |")
        lines.append("")
    if "big" in figures:
        lines += ["### wavenet-fsdd, 64 inputs x 20,000 samples (packed, budget raised to let it through)", "",
                  "| figure | value |", "|---|---:|"]
        lines += [f"| {k} | {v:,.1f} |" for k, v in figures["big"].items()]
    return "\n".join(lines) + "\n"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--exported", type=Path, default=Path("exported"))
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--baseline", type=Path, help="another source tree whose app/ serves the bulk figures and the "
                                                  "crowd's JSON figures too")
    ap.add_argument("--crowd-models", default=",".join(CROWD_MODELS), help="models of the crowd figures")
    ap.add_argument("--big", action="store_true", help="also the issue's 64 x 20,000 WaveNet request (minutes)")
    ap.add_argument("--out", type=Path, help="write <out>.md and <out>.json")
    args = ap.parse_args()
    rng = np.random.default_rng(0)
    folder = args.exported / "fvsbn-mnist"
    backend = backends.load("onnx", folder, load_manifest(folder), 1)
    x = rng.integers(0, 2, (256, 784), dtype=np.int64)  # (256, 784) binary inputs for both 784-pixel models
    figures: dict[str, dict[str, float]] = {}
    with contextlib.ExitStack() as stack:
        models = stack.enter_context(only(args.exported, CROWD_MODELS))
        servers = {"this": stack.enter_context(server_process(models))}
        if args.baseline:
            servers["baseline"] = stack.enter_context(server_process(models, cwd=args.baseline))
        urls = {label: url for label, (url, _) in servers.items()}
        rounds: dict[str, list[dict[str, float]]] = {"crowd": []}
        for r in range(args.rounds):
            for label, url in urls.items():  # bulk: each server beside its own in-process figure
                for rows in (16, 64):
                    key = f"bulk {rows} rows per request" + ("" if label == "this" else f", {label}")
                    rounds.setdefault(key, []).append(bulk_round(url, backend, x[:rows]))
            rounds["crowd"].append(crowd_round(servers, x, args.crowd_models.split(",")))
            print(f"round {r + 1}/{args.rounds} done", flush=True)
        figures.update({k: medians(v) for k, v in rounds.items()})
    if args.big:
        figures["big"] = big(args.exported)
    command = " ".join(["python -m bench.scoring", *sys.argv[1:]])
    text = report(figures, command)
    print(text)
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.with_suffix(".md").write_text(text)
        args.out.with_suffix(".json").write_text(json.dumps({"command": command, "machine": machine(),
                                                             "figures": figures}, indent=1))


if __name__ == "__main__":
    main()
