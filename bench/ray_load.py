"""Ray Serve with 1 and 2 replicas, measured by the load benchmark's own client, beside plain uvicorn.

    RAY_USAGE_STATS_ENABLED=0 python -m bench.ray_load [--concurrency 16] [--out bench/results]

A real local Ray cluster of two nodes on 127.0.0.1 (one CPU each, as tests/test_ray_serve.py starts it) serves
app/ray_serve.py with 1, then 2 replicas; plain `python -m app.serve` is measured in the same run. Each
configuration gets the same clients (bench.load_client, in its own process): aggregate GET /sample tokens/s
at `--concurrency` streams and POST /logprob examples/s from single-example clients. Writes ray.json and ray.md.
Needs the `ray` extra (pip install -e '.[ray]' -c constraints/ray.txt).
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
from pathlib import Path

os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")  # loopback clusters: see tests/test_ray_serve.py

from bench.common import ROOT, free_port, machine, serve, wait_ready  # noqa: E402
from bench.load import reduce_logprob, reduce_sample, run_client  # noqa: E402

MODELS = ("lstm-shakespeare", "fvsbn-mnist")


def measure(url: str, concurrency: int, tokens: int) -> dict:
    sample = {"kind": "sample", "url": url, "model": "lstm-shakespeare", "concurrency": concurrency,
              "requests": 2 * concurrency, "request_rate": None, "seed": 0, "warmup": 1,
              "params": {"max_len": tokens, "chunk": 1, "prompt": "ROMEO:"}}
    logprob = {"kind": "logprob", "url": url, "model": "fvsbn-mnist", "concurrency": concurrency,
               "requests": 16 * concurrency, "batch": 1, "seed": 0, "warmup": 1, "encoding": "json",
               "inputs": {"vocab_size": 2, "length": 784, "dtype": "int64"}}
    return {"sample": reduce_sample(run_client(sample), None), "logprob": reduce_logprob(run_client(logprob))}


def ray_cluster(model_dir: Path):
    import ray
    from ray.cluster_utils import Cluster

    node = {"num_cpus": 1, "node_ip_address": "127.0.0.1", "include_dashboard": False}
    cluster = Cluster(initialize_head=True, head_node_args=node)
    cluster.add_node(**node)
    env = {"ARSERVE_MODEL_DIR": str(model_dir), "ARSERVE_LOG_LEVEL": "warning", "RAY_USAGE_STATS_ENABLED": "0",
           "ARSERVE_MAX_STREAMS_PER_CLIENT": "64", "ARSERVE_MAX_CONCURRENT_STREAMS": "64", "PYTHONPATH": str(ROOT)}
    ray.init(address=cluster.address, runtime_env={"env_vars": env}, include_dashboard=False, log_to_driver=False)
    return cluster


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--concurrency", type=int, default=16)
    ap.add_argument("--tokens", type=int, default=200, help="tokens per stream")
    ap.add_argument("--out", type=Path, default=ROOT / "bench" / "results")
    ap.add_argument("--note", default="")
    args = ap.parse_args()
    results: dict[str, dict] = {}
    with tempfile.TemporaryDirectory() as tmp:
        model_dir = Path(tmp)
        for name in MODELS:
            (model_dir / name).symlink_to(ROOT / "exported" / name)
        with serve(model_dir, ARSERVE_MAX_STREAMS_PER_CLIENT="64", ARSERVE_MAX_CONCURRENT_STREAMS="64") as url:
            results["uvicorn (python -m app.serve)"] = measure(url, args.concurrency, args.tokens)
        import ray
        from ray import serve as ray_serve

        from app.ray_serve import Arserve

        cluster = ray_cluster(model_dir)
        try:
            port = free_port()
            ray_serve.start(http_options={"host": "127.0.0.1", "port": port})
            url = f"http://127.0.0.1:{port}"
            for replicas in (1, 2):
                ray_serve.run(Arserve.options(num_replicas=replicas, max_ongoing_requests=80).bind(),
                              name="arserve", route_prefix="/")
                wait_ready(url, 180)
                results[f"Ray Serve, {replicas} replica(s)"] = measure(url, args.concurrency, args.tokens)
        finally:
            try:
                ray_serve.shutdown()
            finally:
                ray.shutdown()
                cluster.shutdown()
    report = {"meta": {"machine": machine(), "concurrency": args.concurrency, "tokens": args.tokens,
                       "note": args.note, "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())},
              "results": results}
    lines = [f"`python -m bench.ray_load --concurrency {args.concurrency}` on {report['meta']['machine']}, "
             f"{report['meta']['date']}. {args.note}".strip(), "",
             f"| server | GET /sample tokens/s ({args.concurrency} streams, lstm-shakespeare) | errors "
             f"| POST /logprob examples/s ({args.concurrency} single-example clients, fvsbn-mnist) | errors |",
             "|---|---:|---:|---:|---:|"]
    for name, r in results.items():
        lines.append(f"| {name} | {r['sample']['output_tokens_per_s']:,.0f} | {r['sample']['errors']} "
                     f"| {r['logprob']['examples_per_s']:,.0f} | {r['logprob']['errors']} |")
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "ray.json").write_text(json.dumps(report, indent=1))
    (args.out / "ray.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
