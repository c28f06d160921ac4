"""Prometheus metrics, one registry per app (so that several apps, e.g. in tests, never collide)."""

from __future__ import annotations

import time

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, ProcessCollector, generate_latest

LATENCY_BUCKETS = (0.0005, 0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30)


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
        # What bench.load measures from the client side, as the server sees it (GET /sample streams)
        self.ttft = Histogram("arserve_time_to_first_token_seconds", "request received to first token event sent",
                              ["model"], registry=r, buckets=LATENCY_BUCKETS)
        self.inter_token = Histogram("arserve_inter_token_seconds", "gap between a stream's token events sent, per "
                                     "token they carry (events sent together: 0 after the first)", ["model"],
                                     registry=r, buckets=(0, *LATENCY_BUCKETS))
        self.queue_wait = Histogram("arserve_queue_wait_seconds", "request received to its stream admitted by the "
                                    "model's worker", ["model"], registry=r, buckets=LATENCY_BUCKETS)

        ProcessCollector(registry=r)  # process_resident_memory_bytes & co: what a big request costs, from outside

    def add_model(self, model: str) -> None:
        """Export every per-model series from the start (at 0), not from the first request."""
        for metric in (self.tokens, self.active_streams, self.queue_depth, self.step_rows, self.score_rows,
                       self.score_requests, self.ttft, self.inter_token, self.queue_wait):
            metric.labels(model)

    def render(self) -> bytes:
        return generate_latest(self.registry)


class StreamTimer:
    """Feeds one GET /sample stream's time to first token, inter-token gaps and queue wait to the histograms."""

    def __init__(self, metrics: Metrics, model: str, received: float):
        self.received = received  # time.perf_counter() when the request was taken in
        self.last: float | None = None  # when the previous token event was written
        # the children, looked up once (labels() takes a lock and a dict lookup per call)
        self.ttft, self.inter_token = metrics.ttft.labels(model), metrics.inter_token.labels(model)
        self.queue_wait = metrics.queue_wait.labels(model)

    def token_event(self, tokens: int) -> None:
        now = time.perf_counter()
        if self.last is None:
            self.ttft.observe(now - self.received)
        else:
            self.inter_token.observe((now - self.last) / tokens)
        self.last = now

    def admitted(self, at: float) -> None:
        """The worker took the stream in at `at` (perf_counter)."""
        self.queue_wait.observe(max(at - self.received, 0.0))
