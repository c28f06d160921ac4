"""Prometheus metrics, one registry per app (so that several apps, e.g. in tests, never collide)."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, ProcessCollector, generate_latest


class Metrics:
    def __init__(self):
        r = self.registry = CollectorRegistry()
        self.requests = Counter("arserve_requests_total", "HTTP requests by endpoint, model and status",
                                ["endpoint", "model", "status"], registry=r)
        self.latency = Histogram("arserve_request_seconds", "time to answer a request (a stream: until it ends)",
                                 ["endpoint", "model"], registry=r,
                                 buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300))
        self.tokens = Counter("arserve_tokens_generated_total", "tokens drawn by sample requests (prefix excluded)",
                              ["model"], registry=r)
        self.active_streams = Gauge("arserve_active_streams", "GET and POST /sample generations in progress",
                                    ["model"], registry=r)
        self.queue_depth = Gauge("arserve_queue_depth", "jobs waiting for a model's worker thread", ["model"],
                                 registry=r)
        self.step_rows = Histogram("arserve_step_batch_rows", "streams advanced together by one batched step",
                                   ["model"], registry=r, buckets=(1, 2, 4, 8, 16, 32, 64, 128))
        self.score_rows = Histogram("arserve_score_batch_rows", "rows scored by one log_prob call (POST /logprob)",
                                    ["model"], registry=r, buckets=(1, 2, 4, 8, 16, 32, 64, 128, 256))
        self.score_requests = Histogram("arserve_score_batch_requests", "POST /logprob requests merged into one "
                                        "log_prob call", ["model"], registry=r, buckets=(1, 2, 4, 8, 16, 32, 64))
        ProcessCollector(registry=r)  # process_resident_memory_bytes & co: what a big request costs, from outside

    def add_model(self, model: str) -> None:
        """Export every per-model series from the start (at 0), not from the first request."""
        for metric in (self.tokens, self.active_streams, self.queue_depth, self.step_rows, self.score_rows,
                       self.score_requests):
            metric.labels(model)

    def render(self) -> bytes:
        return generate_latest(self.registry)
