"""Prometheus metrics of `splice serve` (`GET /metrics`), in a registry of their own per app."""

from __future__ import annotations

from collections.abc import Callable

from prometheus_client import CONTENT_TYPE_LATEST as CONTENT_TYPE  # noqa: F401  (the /metrics media type)
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest


class ServeMetrics:
    """Requests and errors by endpoint, batch sizes, queue depth and request latency."""

    def __init__(self, queue_depth: Callable[[], float]):
        self.registry = CollectorRegistry()
        self.requests = Counter(
            "splice_requests", "HTTP requests by endpoint and status code", ["endpoint", "status"],
            registry=self.registry,
        )  # fmt: skip
        self.errors = Counter(
            "splice_errors", "Requests answered with an error, by endpoint and reason", ["endpoint", "reason"],
            registry=self.registry,
        )  # fmt: skip
        self.batch_size = Histogram(
            "splice_batch_size", "Inputs per generation batch", buckets=(1, 2, 4, 8, 16, 32, 64, 128),
            registry=self.registry,
        )  # fmt: skip
        self.latency = Histogram(
            "splice_request_latency_seconds", "Request latency by endpoint", ["endpoint"], registry=self.registry,
            buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30),
        )  # fmt: skip
        self.queue_depth = Gauge("splice_queue_depth", "Inputs waiting for generation", registry=self.registry)
        self.queue_depth.set_function(queue_depth)

    def render(self) -> bytes:
        """The text exposition of every metric."""
        return generate_latest(self.registry)
