"""What ONNX Runtime's CPU arena keeps after big log_prob calls, under three settings (docs/scoring.md).

    python -m bench.arena [--exported exported] [--model wavenet-fsdd] [--length 20000] [--calls 4]

Each setting runs in its own process (RSS is per process): the default arena, the arena disabled
(`SessionOptions.enable_cpu_mem_arena = False`), and the arena shrunk after each call (run option
`memory.enable_memory_arena_shrinkage`, what app.runtime.backends does for big calls). Prints, for 1 and 2 rows
per call, the RSS above the process's start after each call, the seconds each call took and the peak RSS.
"""

from __future__ import annotations

import argparse
import resource
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

MODES = ("arena", "no arena", "shrink")


def rss_mb() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS"):
            return int(line.split()[1]) / 1024
    raise RuntimeError("no VmRSS in /proc/self/status")


def measure(folder: Path, mode: str, rows: int, length: int, calls: int) -> str:
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.intra_op_num_threads = opts.inter_op_num_threads = 1
    opts.enable_cpu_mem_arena = mode != "no arena"
    session = ort.InferenceSession(str(folder / "score.onnx"), opts, providers=["CPUExecutionProvider"])
    run_options = ort.RunOptions()
    if mode == "shrink":
        run_options.add_run_config_entry("memory.enable_memory_arena_shrinkage", "cpu:0")
    x = np.random.default_rng(0).integers(0, 256, (rows, length), dtype=np.int64)  # (rows, length)
    start, after = rss_mb(), []
    for _ in range(calls):
        t0 = time.perf_counter()
        session.run(None, {session.get_inputs()[0].name: x}, run_options)
        after.append(f"{rss_mb() - start:.0f} MB / {time.perf_counter() - t0:.2f} s")
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    return f"| {mode} | {rows} | {', '.join(after)} | {peak:.0f} MB |"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--exported", type=Path, default=Path("exported"))
    ap.add_argument("--model", default="wavenet-fsdd")
    ap.add_argument("--length", type=int, default=20000)
    ap.add_argument("--calls", type=int, default=4)
    ap.add_argument("--mode", choices=MODES, help="(internal) measure one setting in this process")
    ap.add_argument("--rows", type=int, default=1)
    args = ap.parse_args()
    folder = args.exported / args.model
    if args.mode:
        print(measure(folder, args.mode, args.rows, args.length, args.calls))
        return
    print(f"{args.model}, rows of {args.length} tokens, {args.calls} identical calls per process\n")
    print("| setting | rows per call | RSS above start / seconds, after each call | peak RSS |\n|---|---:|---|---:|")
    for rows in (1, 2):
        for mode in MODES:
            cmd = [sys.executable, "-m", "bench.arena", "--mode", mode, "--rows", str(rows), *sys.argv[1:]]
            print(subprocess.run(cmd, capture_output=True, text=True, check=True).stdout.strip(), flush=True)


if __name__ == "__main__":
    main()
