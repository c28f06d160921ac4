"""A bounded soak: mixed load on a real server (`python -m app.serve`) for some minutes, the server's RSS sampled.

    python -m bench.soak                  # 5 minutes on the shipped models in exported/
    python -m bench.soak --minutes 16 --out bench/results/soak.json    # and soak.png beside it
    python -m bench.soak --server-env ARSERVE_MALLOC_ARENA_MAX=0       # a setting changed for the server

The mix, from `--clients` threads each looping until the deadline: streams read to the end, streams dropped
after a few events, POST /sample, POST /logprob of 1-8 inputs, /models, /metrics, and bad requests (unknown
model, a malformed body, a body over ARSERVE_MAX_BODY_BYTES). It prints RSS every `--every` seconds, in all and
by kind of mapping (malloc's main heap, glibc's thread arenas, other anonymous maps, files: rss_by_kind), then a
summary: requests by status, 5xx count, RSS after warm-up (first sample after the first minute, or a fifth of the
run) and at the end, the range over the last ten minutes, and which kind grew. The figures that matter are the
growth after warm-up and that range.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import random
import sys
import threading
import time
from collections import Counter
from pathlib import Path

import httpx

from bench.common import ROOT, server_process

TEXT = {"lstm-shakespeare", "transformer-shakespeare", "attnrnn-shakespeare", "finite-shakespeare"}
IMAGES = {"nade-mnist", "fvsbn-mnist", "made2000-mnist"}  # the cheap image models


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


ARENA_HEAP = 64 * 2**20  # glibc maps each thread arena's heap 64 MB-aligned (HEAP_MAX_SIZE on 64-bit)


def rss_by_kind(pid: int) -> dict[str, float]:
    """The process's resident MB by kind of mapping (/proc/PID/smaps): the main malloc heap (brk), glibc's
    per-thread arena heaps, other anonymous maps (big mallocs: numpy arrays, ONNX Runtime's arena chunks; thread
    stacks) and files (code, mapped model files). Says which allocator a growth comes from."""
    out = {"heap": 0.0, "thread arenas": 0.0, "other anon": 0.0, "files": 0.0}
    kind = "files"
    for line in Path(f"/proc/{pid}/smaps").read_text().splitlines():
        head = line.split()
        if "-" in head[0] and not head[0].endswith(":"):  # a mapping: start-end perms offset dev inode [path]
            start = int(head[0].split("-")[0], 16)
            path = head[5] if len(head) > 5 else ""
            if path == "[heap]":
                kind = "heap"
            elif path:
                kind = "files" if path.startswith("/") else "other anon"  # [stack], [vdso], ...
            else:
                kind = "thread arenas" if start % ARENA_HEAP == 0 else "other anon"
        elif head[0] == "Rss:":
            out[kind] += int(head[1]) / 1024
    return {k: round(v, 1) for k, v in out.items()}


class Load(threading.Thread):
    def __init__(self, url: str, deadline: float, seed: int, models: list[str], statuses: Counter,
                 lock: threading.Lock):
        super().__init__(daemon=True)
        self.url, self.deadline, self.rng, self.models = url, deadline, random.Random(seed), models
        self.statuses, self.lock = statuses, lock

    def count(self, status: int | str) -> None:
        with self.lock:
            self.statuses[status] += 1

    def run(self) -> None:
        with httpx.Client(base_url=self.url, timeout=60) as http:
            while time.monotonic() < self.deadline:
                action = self.rng.choice([self.stream, self.stream_dropped, self.generate, self.score, self.score,
                                          self.cheap, self.bad])
                try:
                    action(http)
                except httpx.HTTPError as e:
                    self.count(type(e).__name__)

    def text_model(self) -> str:
        return self.rng.choice(sorted(TEXT & set(self.models)))

    def stream(self, http: httpx.Client) -> None:
        params = {"model": self.text_model(), "max_len": self.rng.randint(16, 200), "chunk": self.rng.choice([1, 8])}
        with http.stream("GET", "/sample", params=params) as r:
            for _ in r.iter_bytes():
                pass
        self.count(r.status_code)

    def stream_dropped(self, http: httpx.Client) -> None:
        with http.stream("GET", "/sample", params={"model": self.text_model(), "max_len": 1000}) as r:
            for i, _ in enumerate(r.iter_lines()):
                if i > 10:
                    break
        self.count(r.status_code)

    def generate(self, http: httpx.Client) -> None:
        model = self.rng.choice(sorted((IMAGES | TEXT) & set(self.models)))
        body = {"model": model, "seed": self.rng.randrange(2**31)}
        if model in TEXT:
            body["max_len"] = 64
        self.count(http.post("/sample", json=body).status_code)

    def score(self, http: httpx.Client) -> None:
        if self.rng.random() < 0.5:
            inputs = ["".join(self.rng.choice("abcdefgh ") for _ in range(self.rng.randint(10, 256)))
                      for _ in range(self.rng.randint(1, 8))]
            body = {"model": self.text_model(), "inputs": inputs, "per_position": self.rng.random() < 0.3}
        else:
            inputs = [[self.rng.randint(0, 1) for _ in range(784)] for _ in range(self.rng.randint(1, 8))]
            body = {"model": self.rng.choice(sorted(IMAGES & set(self.models))), "inputs": inputs}
        self.count(http.post("/logprob", json=body).status_code)

    def cheap(self, http: httpx.Client) -> None:
        self.count(http.get(self.rng.choice(["/models", "/metrics", "/healthz", "/readyz"])).status_code)

    def bad(self, http: httpx.Client) -> None:
        kind = self.rng.randrange(3)
        if kind == 0:
            r = http.post("/logprob", json={"model": "nope", "inputs": [[0]]})
        elif kind == 1:
            r = http.post("/logprob", content=b'{"model": "nade-mnist", "inputs": [[0, 1',
                          headers={"content-type": "application/json"})
        else:
            r = http.post("/logprob", content=b"[" + b"0," * (5 * 2**20) + b"0]",
                          headers={"content-type": "application/json"})  # 10 MB: over the default 8 MiB cap
        self.count(r.status_code)


def plot(samples: list[dict], title: str, path: Path) -> None:
    """RSS over time, in all and by kind of mapping (needs matplotlib, the bench extra)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    minutes = [s["t"] / 60 for s in samples]
    fig, ax = plt.subplots(figsize=(8, 4.5))
    ax.plot(minutes, [s["rss_mb"] for s in samples], label="RSS", linewidth=2)
    for kind in samples[0]["by_kind"]:
        ax.plot(minutes, [s["by_kind"][kind] for s in samples], label=kind, linewidth=1)
    ax.set(xlabel="minutes of mixed load", ylabel="MB resident", title=title, ylim=(0, None))
    ax.grid(alpha=0.3)
    ax.legend(loc="center right", fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def summarize(samples: list[dict], statuses: Counter, args: argparse.Namespace) -> dict:
    warm_at = min(60.0, 60 * args.minutes / 5)
    warm = next(s for s in samples if s["t"] >= warm_at)
    tail = [s for s in samples if s["t"] >= samples[-1]["t"] - 600]  # the last 10 minutes
    end = samples[-1]
    server_errors = sum(n for s, n in statuses.items() if isinstance(s, int) and s >= 500)
    return {"minutes": args.minutes, "clients": args.clients, "server_env": args.server_env,
            "requests": sum(statuses.values()),
            "statuses": {str(k): v for k, v in sorted(statuses.items(), key=str)}, "server_errors": server_errors,
            "rss_start_mb": samples[0]["rss_mb"], "rss_after_warmup_mb": warm["rss_mb"],
            "rss_end_mb": end["rss_mb"], "rss_growth_after_warmup_mb": round(end["rss_mb"] - warm["rss_mb"], 1),
            "rss_max_mb": max(s["rss_mb"] for s in samples),
            "last_10_min_range_mb": [min(s["rss_mb"] for s in tail), max(s["rss_mb"] for s in tail)],
            "growth_by_kind_after_warmup_mb": {k: round(end["by_kind"][k] - warm["by_kind"][k], 1)
                                               for k in end["by_kind"]}}


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(prog="python -m bench.soak", description=__doc__.splitlines()[0])
    ap.add_argument("--minutes", type=float, default=5.0)
    ap.add_argument("--clients", type=int, default=8)
    ap.add_argument("--every", type=float, default=15.0, help="seconds between RSS samples")
    ap.add_argument("--exported", type=Path, default=ROOT / "exported")
    ap.add_argument("--server-env", action="append", default=[], metavar="NAME=VALUE",
                    help="an environment variable for the server (repeatable), e.g. MALLOC_ARENA_MAX=2")
    ap.add_argument("--out", type=Path, help="write the samples and the summary as JSON here (and a .png beside)")
    args = ap.parse_args(argv)

    statuses: Counter = Counter()
    lock = threading.Lock()
    samples: list[dict] = []
    env = dict(kv.split("=", 1) for kv in args.server_env)
    with server_process(args.exported, threads=1, ARSERVE_MAX_CONCURRENT_STREAMS="16", **env) as (url, proc):
        models = [m["name"] for m in httpx.get(f"{url}/models", timeout=30).json()["models"]]
        start = time.monotonic()
        deadline = start + 60 * args.minutes
        clients = [Load(url, deadline, seed, models, statuses, lock) for seed in range(args.clients)]
        for c in clients:
            c.start()

        def sample(t: float) -> None:
            samples.append({"t": round(t, 1), "rss_mb": round(rss_mb(proc.pid), 1), "by_kind": rss_by_kind(proc.pid),
                            "requests": sum(statuses.values())})
            kinds = " ".join(f"{v:9.1f}" for v in samples[-1]["by_kind"].values())
            print(f"{t:7.0f} {samples[-1]['rss_mb']:9.1f} {kinds} {samples[-1]['requests']:9d}", flush=True)

        print(f"{'t (s)':>7} {'RSS (MB)':>9} " + " ".join(f"{k[:9]:>9}" for k in rss_by_kind(proc.pid))
              + f" {'requests':>9}")
        sample(0.0)
        while time.monotonic() < deadline:
            time.sleep(min(args.every, max(0.0, deadline - time.monotonic())))
            sample(time.monotonic() - start)
        for c in clients:
            c.join(120)
    summary = summarize(samples, statuses, args)
    print(json.dumps(summary, indent=1))
    if args.out:
        args.out.write_text(json.dumps({"command": " ".join(["python -m bench.soak", *(argv or sys.argv[1:])]),
                                        "summary": summary, "samples": samples}, indent=1))
        with contextlib.suppress(ImportError):
            env_note = f", {' '.join(args.server_env)}" if args.server_env else ""
            plot(samples, f"server RSS, {args.clients} clients, {args.minutes:g} min{env_note}",
                 args.out.with_suffix(".png"))


if __name__ == "__main__":
    main()
