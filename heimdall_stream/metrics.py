"""Prometheus metrics, all built against an injected ``CollectorRegistry``.

Names start with ``heimdall_``; counters end in ``_total``; durations are histograms in
``_seconds``; ``model_version`` labels the series where the version matters.
"""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)
INFERENCE_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0)
STAGE_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0)
BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256)


class Metrics:
    """Every metric the consumer exports."""

    def __init__(self, registry: CollectorRegistry) -> None:
        self.registry = registry
        self.captures_consumed = Counter(
            "heimdall_captures_consumed_total",
            "Capture messages read from the input topic.",
            registry=registry,
        )
        self.results_produced = Counter(
            "heimdall_results_produced_total",
            "Localization results committed to the output topic.",
            ["model_version"],
            registry=registry,
        )
        self.dead_letters = Counter(
            "heimdall_dead_letters_total",
            "Messages sent to the dead-letter topic, by reason.",
            ["reason"],
            registry=registry,
        )
        self.dedup_hits = Counter(
            "heimdall_dedup_hits_total",
            "Captures skipped because their capture_id was already done.",
            registry=registry,
        )
        self.dedup_memory_hits = Counter(
            "heimdall_dedup_memory_hits_total",
            "Repeats caught only by the in-process recent-id memory (Redis down, restarted empty or "
            "evicted); each would have been a duplicate result.",
            registry=registry,
        )
        self.doubtful_results = Counter(
            "heimdall_doubtful_results_total",
            "Results whose capture failed the consistency check (quality under 0.5: unlike the "
            "model's training, or time differences without a sharp correlation peak).",
            ["model_version"],
            registry=registry,
        )
        self.cache_hits = Counter(
            "heimdall_cache_hits_total",
            "Results served from the result cache.",
            ["model_version"],
            registry=registry,
        )
        self.cache_misses = Counter(
            "heimdall_cache_misses_total",
            "Result cache look-ups that missed.",
            ["model_version"],
            registry=registry,
        )
        self.cache_hit_ratio = Gauge(
            "heimdall_cache_hit_ratio", "Cache hits / look-ups since start.", registry=registry
        )
        self.inference_latency = Histogram(
            "heimdall_inference_duration_seconds",
            "onnxruntime time per batch.",
            ["model_version"],
            buckets=INFERENCE_BUCKETS,
            registry=registry,
        )
        self.end_to_end_latency = Histogram(
            "heimdall_end_to_end_latency_seconds",
            "From captured_at to the result being committed.",
            ["model_version"],
            buckets=LATENCY_BUCKETS,
            registry=registry,
        )
        self.processing_latency = Histogram(
            "heimdall_processing_duration_seconds",
            "From consumption to commit of a capture.",
            buckets=LATENCY_BUCKETS,
            registry=registry,
        )
        self.stage_duration = Histogram(
            "heimdall_stage_duration_seconds",
            "Where the time goes, per stage: broker (message timestamp to consumption, per capture), "
            "queue (consumed to a worker starting its batch, per capture), decode, features, inference, "
            "finish (per batch), commit_wait (scored to its transaction starting) and commit (the "
            "transaction, per batch).",
            ["stage"],
            buckets=STAGE_BUCKETS,
            registry=registry,
        )
        self.batch_size = Histogram(
            "heimdall_batch_size",
            "Captures per inference batch.",
            ["model_version"],
            buckets=BATCH_BUCKETS,
            registry=registry,
        )
        self.in_flight = Gauge(
            "heimdall_in_flight_captures", "Captures consumed but not yet committed.", registry=registry
        )
        self.loop_busy = Gauge(
            "heimdall_loop_busy_ratio",
            "Share of the stream loop's time spent working, not waiting for input or a worker "
            "(last seconds, smoothed); near 1 the loop, not the workers, limits throughput.",
            registry=registry,
        )
        self.loop_inline = Gauge(
            "heimdall_loop_inline_scoring",
            "1 while the stream loop may score small batches itself (it has time for them; a batch "
            "still goes to the workers while others are held), 0 while it hands them to the workers "
            "(trying inline scoring again, for half a second or one batch, every 10 s).",
            registry=registry,
        )
        self.consumer_lag = Gauge(
            "heimdall_consumer_lag",
            "High watermark minus position, per assigned partition.",
            ["topic", "partition"],
            registry=registry,
        )
        self.model_reloads = Counter(
            "heimdall_model_reloads_total", "Model (re)loads by outcome.", ["outcome"], registry=registry
        )
        self.model_weight = Gauge(
            "heimdall_model_version_weight",
            "Traffic weight of each deployed model version (0 = shadow).",
            ["model_name", "model_version"],
            registry=registry,
        )
        self.model_generation = Gauge(
            "heimdall_model_generation",
            "Deployment generation in force.",
            ["model_name"],
            registry=registry,
        )
        self.control_rejections = Counter(
            "heimdall_control_rejections_total",
            "Model-control messages rejected, by reason.",
            ["reason"],
            registry=registry,
        )
        self.shadow_position_delta = Histogram(
            "heimdall_shadow_position_delta_meters",
            "Distance between shadow and primary positions.",
            ["model_version"],
            buckets=(10, 50, 100, 250, 500, 1000, 2500, 5000, 10_000, 25_000, 50_000, 100_000),
            registry=registry,
        )
        self.shadow_overlap = Histogram(
            "heimdall_shadow_ellipse_overlap",
            "Bhattacharyya overlap of shadow and primary Gaussians (1 = same).",
            ["model_version"],
            buckets=(0.01, 0.05, 0.1, 0.25, 0.5, 0.75, 0.9, 0.95, 0.99, 1.0),
            registry=registry,
        )
        self.shadow_latency = Histogram(
            "heimdall_shadow_inference_duration_seconds",
            "Shadow inference time per batch.",
            ["model_version"],
            buckets=INFERENCE_BUCKETS,
            registry=registry,
        )
        self.shadow_errors = Counter(
            "heimdall_shadow_errors_total",
            "Shadow batches or comparisons that failed.",
            ["model_version"],
            registry=registry,
        )
        self.ready = Gauge(
            "heimdall_ready",
            "1 while the instance is ready (model warmed up, loop running).",
            registry=registry,
        )
        self.model_loaded = Gauge(
            "heimdall_model_loaded", "1 when a model is loaded and warmed up.", registry=registry
        )
        self.model_from_cache = Gauge(
            "heimdall_model_served_from_cache",
            "1 when the model came from the on-disk cache because the registry was unreachable.",
            registry=registry,
        )
        self.redis_up = Gauge(
            "heimdall_redis_up", "1 when Redis answers; 0 while dedup and cache are off.", registry=registry
        )
        self.redis_errors = Counter(
            "heimdall_redis_errors_total",
            "Redis commands that failed (dedup and cache skipped).",
            registry=registry,
        )
        self.redis_restarts = Counter(
            "heimdall_redis_restarts_total",
            "Redis server restarts noticed (new run_id): dedup marks written before may be gone.",
            registry=registry,
        )
        self.transactions = Counter(
            "heimdall_transactions_total",
            "Kafka transactions (or at-least-once flushes) by outcome.",
            ["outcome"],
            registry=registry,
        )
        self.consecutive_aborts = Gauge(
            "heimdall_consecutive_aborts",
            "Transactions aborted in a row since the last commit (the instance stops past "
            "HEIMDALL_KAFKA__ABORT_RETRIES, counting transactions{outcome=gave_up}).",
            registry=registry,
        )
        self.kafka_errors = Counter(
            "heimdall_kafka_errors_total",
            "Errors reported by the Kafka clients, by code.",
            ["code"],
            registry=registry,
        )
        self.rebalances = Counter(
            "heimdall_rebalances_total",
            "Partition assignment changes, by kind.",
            ["kind"],
            registry=registry,
        )
        self.paused = Gauge(
            "heimdall_partitions_paused",
            "1 while input partitions are paused for backpressure.",
            registry=registry,
        )
        # The per-receiver join (join/): parts as read (again after an abort or a rebalance, like
        # captures_consumed); the sets below once the transaction carrying them commits.
        self.join_parts = Counter(
            "heimdall_join_parts_consumed_total",
            "ReceiverCapture parts read from the receivers topic (re-reads after an abort count again).",
            registry=registry,
        )
        self.join_sets = Counter(
            "heimdall_join_sets_total",
            "Sets the join closed, by outcome: complete (every expected receiver), partial (window "
            "closed, enough receivers), expired (window closed, too few: dead-lettered), evicted "
            "(closed early at a state bound).",
            ["outcome"],
            registry=registry,
        )
        self.join_parts_rejected = Counter(
            "heimdall_join_parts_rejected_total",
            "Parts dead-lettered by the join, by reason (late, duplicate, mismatch, too_few, bad_key, "
            "decode ...).",
            ["reason"],
            registry=registry,
        )
        self.join_wait = Histogram(
            "heimdall_join_wait_seconds",
            "From a set's first part being consumed to the set being emitted.",
            buckets=LATENCY_BUCKETS,
            registry=registry,
        )
        self.join_open_sets = Gauge(
            "heimdall_join_open_sets", "Sets waiting for receivers or their window.", registry=registry
        )
        self.join_pending_bytes = Gauge(
            "heimdall_join_pending_bytes", "Sample bytes held by the waiting sets.", registry=registry
        )
        self._hits = 0
        self._lookups = 0

    def record_cache(self, model_version: str, hits: int, misses: int) -> None:
        """Count cache hits and misses and update the hit-ratio gauge."""
        if hits:
            self.cache_hits.labels(model_version).inc(hits)
        if misses:
            self.cache_misses.labels(model_version).inc(misses)
        self._hits += hits
        self._lookups += hits + misses
        if self._lookups:
            self.cache_hit_ratio.set(self._hits / self._lookups)
