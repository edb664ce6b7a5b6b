"""Prometheus metrics of ``heimdall-stream calibrate``, on the registry its ``/metrics`` serves.

Coverage is exported as two counters per model version and confidence, ``scored`` and ``hits``,
so Prometheus computes it over any window (``increase(hits) / increase(scored)``: the alert
rule does); the ``coverage_ratio`` gauge is the same over the newest ``coverage_window`` scored
truths, for a glance at ``/metrics``.  The error distribution is a histogram in metres, and
the Mahalanobis distance one in sigmas (its shape says whether the covariance is too narrow
or too wide).
"""

from __future__ import annotations

from collections import deque

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

from heimdall_stream.calibration.coverage import Score

ERROR_BUCKETS_M = (100, 250, 500, 1_000, 2_000, 5_000, 10_000, 20_000, 50_000, 100_000, 200_000)
DISTANCE_BUCKETS = (0.5, 1.0, 1.5, 2.0, 2.5, 3.0, 4.0, 6.0, 10.0)
VERSION = ("model_name", "model_version")


def confidence_label(confidence: float) -> str:
    """The ``confidence`` label value: ``0.6827``, ``0.95`` (no float noise)."""
    return f"{confidence:g}"


class CalibrationMetrics:
    """Every metric the calibrator exports."""

    def __init__(self, registry: CollectorRegistry, coverage_window: int) -> None:
        self.registry = registry
        self.coverage_window = coverage_window
        self.records = Counter(
            "heimdall_calibration_records_total",
            "Records read, by topic kind (results, truths).",
            ["kind"],
            registry=registry,
        )
        self.bad_records = Counter(
            "heimdall_calibration_bad_records_total",
            "Records that cannot be used, left on their topic, by kind and reason (decode reasons, "
            "bad_position, bad_time, key_mismatch).",
            ["kind", "reason"],
            registry=registry,
        )
        self.matched = Counter(
            "heimdall_calibration_matched_total",
            "Results joined with their ground truth.",
            VERSION,
            registry=registry,
        )
        self.scored = Counter(
            "heimdall_calibration_scored_total",
            "Joined results judged at a confidence (they carry their radius for it).",
            [*VERSION, "confidence"],
            registry=registry,
        )
        self.hits = Counter(
            "heimdall_calibration_hits_total",
            "Joined results whose truth lies inside their ellipse at that confidence.",
            [*VERSION, "confidence"],
            registry=registry,
        )
        self.unscorable = Counter(
            "heimdall_calibration_unscorable_total",
            "Joined results not judged, by reason (no_radius: written before results carried it; "
            "bad_covariance).",
            [*VERSION, "reason"],
            registry=registry,
        )
        self.coverage = Gauge(
            "heimdall_calibration_coverage_ratio",
            "Share of the newest scored truths inside the ellipse at that confidence.",
            [*VERSION, "confidence"],
            registry=registry,
        )
        self.error = Histogram(
            "heimdall_calibration_error_meters",
            "Distance from the estimate to the ground truth.",
            VERSION,
            buckets=ERROR_BUCKETS_M,
            registry=registry,
        )
        self.distance = Histogram(
            "heimdall_calibration_mahalanobis_distance",
            "Mahalanobis distance of the truth from the estimate, in the covariance's sigmas.",
            VERSION,
            buckets=DISTANCE_BUCKETS,
            registry=registry,
        )
        self.unmatched = Counter(
            "heimdall_calibration_unmatched_total",
            "Results or truths that left the join without a partner, by side and reason "
            "(expired, late, evicted, duplicate).",
            ["side", "reason"],
            registry=registry,
        )
        self.pending = Gauge(
            "heimdall_calibration_pending",
            "Results or truths waiting for their partner.",
            ["side"],
            registry=registry,
        )
        self.watermark = Gauge(
            "heimdall_calibration_watermark_seconds",
            "Newest event time seen (Unix seconds): unmatched entries older than the window expire.",
            registry=registry,
        )
        self._recent: dict[tuple[str, str, str], deque[bool]] = {}

    def record_score(self, model_name: str, model_version: str, score: Score) -> None:
        """Count one joined result: error, distance, and a hit or miss per confidence it was scored at."""
        version = (model_name, model_version)
        self.matched.labels(*version).inc()
        self.error.labels(*version).observe(score.error_m)
        self.distance.labels(*version).observe(score.distance)
        for confidence, hit in score.hits:
            label = confidence_label(confidence)
            self.scored.labels(*version, label).inc()
            if hit:
                self.hits.labels(*version, label).inc()
            recent = self._recent.setdefault((*version, label), deque(maxlen=self.coverage_window))
            recent.append(hit)
            self.coverage.labels(*version, label).set(sum(recent) / len(recent))
        if score.unscored:
            self.unscorable.labels(*version, "no_radius").inc()
