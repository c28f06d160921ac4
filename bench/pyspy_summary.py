"""Where a live server's CPU goes, per thread, from a py-spy raw profile (docs/benchmarks-load.md).

    py-spy record -r 200 -d 12 -f raw --threads -o prof.txt --pid <server pid>   # under load
    python -m bench.pyspy_summary prof.txt

Per thread: samples, busy samples (not waiting in select/epoll, a queue or a condition) and the busy samples by
layer, judged from the innermost frames (ONNX Runtime, h11, uvicorn, starlette/fastapi, asyncio, app/http,
app/engine, ...). Sampled, so shares, not times.
"""

from __future__ import annotations

import argparse
import collections
import re

IDLE = ("select (selectors.py", "wait (threading.py", "_wait_for_jobs", "get (queue.py", "_worker (concurrent")
LAYERS = [
    ("ONNX Runtime / model", ("run_with_iobinding", "onnxruntime", "InferenceSession.run", "log_prob (app/runtime",
                              "direct_run")),  # (the step's session.run without the wrapper: app/runtime/backends.py)
    ("h11 parse/write", ("h11", "httptools")),
    ("uvicorn", ("uvicorn",)),
    ("starlette/fastapi", ("starlette", "fastapi")),
    ("json", ("orjson", "json/")),
    ("pydantic", ("pydantic",)),
    ("asyncio", ("asyncio",)),
    ("app/http", ("app/http",)),
    ("app/engine", ("app/engine",)),
    ("metrics", ("prometheus",)),
]


def summarize(path: str) -> dict[str, tuple[int, int, collections.Counter]]:
    total, idle = collections.Counter(), collections.Counter()
    layers: dict[str, collections.Counter] = collections.defaultdict(collections.Counter)
    for line in open(path):
        stack, n = line.rsplit(" ", 1)
        frames = stack.split(";")
        thread = re.sub(r"\(.*?\)", "", frames[0]).replace("thread", "").strip(" :")
        total[thread] += int(n)
        inner = ";".join(frames[-4:])
        if any(k in ";".join(frames[-3:]) for k in IDLE):
            idle[thread] += int(n)
            continue
        layers[thread][next((name for name, keys in LAYERS if any(k in inner for k in keys)), "other")] += int(n)
    return {t: (total[t], total[t] - idle[t], layers[t]) for t in total}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("profile", help="py-spy record -f raw --threads output")
    ap.add_argument("--top", type=int, default=8, help="layers shown per thread")
    args = ap.parse_args()
    for thread, (samples, busy, by_layer) in sorted(summarize(args.profile).items(), key=lambda kv: -kv[1][1]):
        if busy == 0:
            continue
        print(f"{thread}: {samples} samples, busy {busy} ({100 * busy / samples:.0f}%)")
        for name, n in by_layer.most_common(args.top):
            print(f"    {name:22s} {n:6d}  {100 * n / busy:5.1f}% of busy")


if __name__ == "__main__":
    main()
