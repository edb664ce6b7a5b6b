"""Prometheus metrics of the predict API, on the instance's registry (scraped at ``/metrics``)."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

from heimdall_stream.metrics import BATCH_BUCKETS, LATENCY_BUCKETS


class ApiMetrics:
    """Requests by route and status, their duration, captures by outcome, queue and batch sizes."""

    def __init__(self, registry: CollectorRegistry) -> None:
        self.requests = Counter(
            "heimdall_api_requests_total",
            "Predict API requests answered, by route and HTTP status (429/503: shed under load).",
            ["route", "status"],
            registry=registry,
        )
        self.duration = Histogram(
            "heimdall_api_request_duration_seconds",
            "Predict API request duration, body read to answer, by route.",
            ["route"],
            buckets=LATENCY_BUCKETS,
            registry=registry,
        )
        self.captures = Counter(
            "heimdall_api_captures_total",
            "Captures in predict API requests by outcome: ok, or the dead-letter or refusal reason "
            "(a request refused as a whole, e.g. 413, 429 or 503 when shed, counts once, under its reason).",
            ["outcome"],
            registry=registry,
        )
        self.batch_size = Histogram(
            "heimdall_api_batch_size",
            "Captures per micro-batch formed from concurrent requests.",
            buckets=BATCH_BUCKETS,
            registry=registry,
        )
        self.queued = Gauge(
            "heimdall_api_queued_captures",
            "Captures waiting for a predict API worker.",
            registry=registry,
        )
