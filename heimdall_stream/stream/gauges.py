"""Gauges the stream loop refreshes: consumer lag per partition, the model set in force, its load.

Kept apart from the loop (``stream.app``) because they only read its state: the consumer's
positions and cached watermarks (no broker round trip), the model set being served, and how
busy the loop is (``stream.loop_load``).
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterable

from confluent_kafka import Consumer, KafkaException, TopicPartition

from heimdall_stream.health import Health
from heimdall_stream.metrics import Metrics
from heimdall_stream.models.routing import ModelSet
from heimdall_stream.stream.loop_load import LoopLoad


def update_lag(consumer: Consumer, assigned: Iterable[tuple[str, int]], metrics: Metrics) -> None:
    """Set ``consumer_lag`` of every assigned partition from its position and high watermark."""
    partitions = [TopicPartition(t, p) for t, p in sorted(assigned)]
    if not partitions:
        return
    try:
        positions = consumer.position(partitions)
    except KafkaException:
        return
    for tp in positions:
        try:
            # The high watermark of the last fetch response: no broker round trip in the loop.
            _low, high = consumer.get_watermark_offsets(tp, cached=True)
        except KafkaException:
            continue
        if tp.offset >= 0:
            metrics.consumer_lag.labels(tp.topic, str(tp.partition)).set(max(high - tp.offset, 0))


def update_loop(load: LoopLoad, metrics: Metrics) -> None:
    """The loop's busy share, and whether it scores small batches itself."""
    metrics.loop_busy.set(load.share())
    metrics.loop_inline.set(1 if load.inline else 0)


def publish_model_metrics(models: ModelSet, metrics: Metrics, health: Health) -> None:
    """Model gauges (weights, generation) and /readyz detail for the model set now served."""
    metrics.model_loaded.set(1)
    metrics.ready.set(1)
    for model, weight in models.primaries:
        metrics.model_weight.labels(model.name, model.version).set(weight)
    for model in models.shadows:
        metrics.model_weight.labels(model.name, model.version).set(0.0)
    # Generation 0 is the model named in configuration, before any deployment applies.
    metrics.model_generation.labels(models.model_name).set(models.generation)
    health.update(
        model_loaded=True,
        generation=models.generation,
        models={m.label: w for m, w in models.primaries},
        shadows=[m.label for m in models.shadows],
    )


def retire_model_metrics(previous: ModelSet, metrics: Metrics) -> None:
    """Drop the weight series of a model set no longer served (a swap publishes the new one)."""
    for model in previous.models:
        with contextlib.suppress(KeyError):  # a series never set
            metrics.model_weight.remove(model.name, model.version)
