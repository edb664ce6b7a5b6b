"""The consumer on real Kafka, Redis and MLflow: exactly-once results, dedup, DLQ, metrics."""

from __future__ import annotations

import uuid
from collections import Counter

import numpy as np
import pytest
import shapely.geometry
from confluent_kafka import Consumer, TopicPartition
from prometheus_client.parser import text_string_to_metric_families

from heimdall_stream.geojson import feature_of_kind
from heimdall_stream.models.quality import IN_DISTRIBUTION_QUALITY
from tests.integration.conftest import (
    committed_offsets,
    read_topic,
    results_of,
    scrape,
    send_captures,
    wait_for,
)

pytestmark = pytest.mark.integration


def _messages_in(bootstrap: str, topic: str) -> int:
    """Messages in a topic written without transactions: the sum of its high watermarks."""
    consumer = Consumer({"bootstrap.servers": bootstrap, "group.id": f"size-{uuid.uuid4().hex}"})
    try:
        partitions = consumer.list_topics(topic, timeout=30).topics[topic].partitions
        marks = [consumer.get_watermark_offsets(TopicPartition(topic, p), timeout=30) for p in partitions]
    finally:
        consumer.close()
    return sum(high for _low, high in marks)


def test_n_captures_give_exactly_n_results_with_geometry_and_lineage(make_settings, start_consumer):
    settings = make_settings()
    consumer = start_consumer(settings)
    truth = send_captures(settings, 60, duplicate_fraction=0.25, seed=1)
    sent = _messages_in(settings.kafka.bootstrap_servers, settings.kafka.input_topic)
    inputs = read_topic(settings.kafka.bootstrap_servers, settings.kafka.input_topic, expected=sent, idle=0.5)
    assert len(inputs) == sent
    messages = read_topic(settings.kafka.bootstrap_servers, settings.kafka.output_topic, expected=60)
    # A repeat of the last captures may be counted after the last result: wait until every input
    # was either localized or skipped as a duplicate.
    wait_for(
        lambda: (
            consumer.metric("heimdall_dedup_hits_total")
            + consumer.metric_sum("heimdall_results_produced_total")
            >= len(inputs)
        ),
        60,
        "not every input was accounted for",
    )
    consumer.stop()

    results = results_of(messages)
    counts = Counter(r.capture_id for r in results)
    assert set(counts) == set(truth)
    assert max(counts.values()) == 1, "a duplicate produced a second result"
    first_seen = {}
    for message in inputs:
        capture_id = message.key().decode()
        first_seen.setdefault(capture_id, (message.partition(), message.offset()))
    for message, loc in zip(messages, results, strict=True):
        assert message.key().decode() == loc.capture_id
        assert (loc.lineage.source_partition, loc.lineage.source_offset) == first_seen[loc.capture_id]
        assert 1 <= loc.lineage.batch_size <= 16
        polygon = shapely.geometry.shape(feature_of_kind(loc.geojson, "ellipse")["geometry"])
        assert polygon.is_valid and polygon.contains(shapely.geometry.Point(loc.longitude, loc.latitude))
        assert loc.model_name.startswith("it_localization_") and loc.model_version
        assert all(value > 0 for value in (loc.timings.end_to_end_ms, loc.timings.inference_ms))
        assert 0.0 <= loc.quality <= 1.0
    doubtful = sum(loc.quality < IN_DISTRIBUTION_QUALITY for loc in results)
    assert consumer.metric_sum("heimdall_doubtful_results_total") == doubtful
    assert consumer.metric("heimdall_dedup_hits_total") == len(inputs) - 60
    assert consumer.metric("heimdall_captures_consumed_total") == len(inputs)


def test_malformed_input_goes_to_the_dlq_and_valid_captures_around_it_are_processed(
    make_settings, start_consumer
):
    settings = make_settings(limits={"max_message_bytes": 1_048_576})
    consumer = start_consumer(settings)
    truth = send_captures(settings, 30, malformed_fraction=1.0, seed=2)
    results = results_of(
        read_topic(settings.kafka.bootstrap_servers, settings.kafka.output_topic, expected=len(truth))
    )
    letters = read_topic(settings.kafka.bootstrap_servers, settings.kafka.dlq_topic, expected=30)
    consumer.stop()

    assert {r.capture_id for r in results} == set(truth)
    assert len(letters) == 30
    reasons = Counter()
    for letter in letters:
        headers = dict(letter.headers())
        assert headers["heimdall.source.topic"].decode() == settings.kafka.input_topic
        assert int(headers["heimdall.source.offset"]) >= 0
        assert headers["heimdall.instance.id"].decode() == settings.instance_id
        assert headers["heimdall.error.message"]
        reasons[headers["heimdall.error.reason"].decode()] += 1
        if "heimdall.value-omitted" not in headers:
            assert letter.value()  # the original bytes, unchanged
    assert reasons.keys() >= {"wrong_schema", "truncated_iq", "non_finite", "unknown_receiver", "oversized"}
    assert sum(consumer.metric("heimdall_dead_letters_total", reason=r) for r in reasons) == 30


def test_garbage_keeps_its_original_bytes_in_the_dlq(make_settings, start_consumer):
    settings = make_settings()
    consumer = start_consumer(settings)
    from confluent_kafka import Producer

    producer = Producer({"bootstrap.servers": settings.kafka.bootstrap_servers})
    garbage = bytes(np.random.default_rng(3).integers(0, 256, 500, dtype=np.uint8))
    producer.produce(settings.kafka.input_topic, key=b"junk", value=garbage)
    producer.flush(10)
    letters = read_topic(settings.kafka.bootstrap_servers, settings.kafka.dlq_topic, expected=1)
    consumer.stop()
    assert len(letters) == 1 and letters[0].value() == garbage and letters[0].key() == b"junk"


def test_metrics_endpoint_parses_and_names_every_required_metric(make_settings, start_consumer):
    settings = make_settings()
    consumer = start_consumer(settings)
    send_captures(settings, 10, seed=4)
    read_topic(settings.kafka.bootstrap_servers, settings.kafka.output_topic, expected=10)
    text = scrape(consumer.service.port)
    consumer.stop()
    names = {family.name for family in text_string_to_metric_families(text)}
    required = {
        "heimdall_captures_consumed",
        "heimdall_results_produced",
        "heimdall_dead_letters",
        "heimdall_dedup_hits",
        "heimdall_cache_hits",
        "heimdall_cache_misses",
        "heimdall_cache_hit_ratio",
        "heimdall_inference_duration_seconds",
        "heimdall_end_to_end_latency_seconds",
        "heimdall_batch_size",
        "heimdall_in_flight_captures",
        "heimdall_consumer_lag",
        "heimdall_model_reloads",
        "heimdall_model_version_weight",
        "heimdall_redis_up",
    }
    assert required <= names, required - names
    assert 'heimdall_results_produced_total{model_version="1"} 10.0' in text


def test_cached_results_are_served_for_repeated_inputs(make_settings, start_consumer):
    settings = make_settings()
    consumer = start_consumer(settings)
    # The 2 distinct transmissions first, and their predictions cached (after_commit saves them
    # before it counts the results) before the repeats: a repeat scored in the same batch as its
    # first copy, or beside it on the other worker, would find nothing cached yet.
    send_captures(settings, 2, pool=2, seed=5)
    wait_for(
        lambda: consumer.metric_sum("heimdall_results_produced_total") >= 2,
        60,
        "the first 2 results committed and cached",
    )
    send_captures(settings, 6, pool=2, seed=5)  # the same 2 transmissions, under fresh ids
    results = results_of(
        read_topic(settings.kafka.bootstrap_servers, settings.kafka.output_topic, expected=8)
    )
    consumer.stop()
    assert len(results) == 8
    hits = sum(r.cache_hit for r in results)
    assert hits == 6, f"{hits} cache hits for 8 captures of 2 transmissions (expected 6)"
    assert consumer.metric("heimdall_cache_hit_ratio") > 0


@pytest.mark.parametrize("overlap", [False, True])
def test_at_least_once_mode_delivers_every_capture_and_commits_its_offsets_while_running(
    make_settings, start_consumer, overlap
):
    settings = make_settings(kafka={"delivery": "at_least_once"}, batching={"overlap_commit": overlap})
    consumer = start_consumer(settings)
    truth = send_captures(settings, 20, seed=6)
    results = results_of(
        read_topic(settings.kafka.bootstrap_servers, settings.kafka.output_topic, expected=20)
    )
    # Committed once delivered, about every second while running: not only when stopping.
    wait_for(lambda: sum(committed_offsets(settings).values()) == 20, 60, "every input offset committed")
    consumer.stop()
    assert {r.capture_id for r in results} == set(truth)


def test_a_malformed_copy_never_stands_in_for_the_valid_capture(make_settings, start_consumer):
    from confluent_kafka import Producer

    from heimdall_stream.lab.faults import nan_samples, unknown_receiver
    from heimdall_stream.lab.simulator import IqSimulator
    from heimdall_stream.network import load_network
    from heimdall_stream.wire.codec import capture_codec

    settings = make_settings()
    producer = Producer(
        {"bootstrap.servers": settings.kafka.bootstrap_servers, "message.max.bytes": 8_000_000}
    )
    rng = np.random.default_rng(0)
    sim = IqSimulator(load_network(), seed=77)
    captures = [sim.generate(i).capture for i in range(10)]
    for capture in captures:  # same capture_id, same key and partition: malformed first, then valid
        key = capture.capture_id.encode()
        producer.produce(settings.kafka.input_topic, key=key, value=nan_samples(capture, rng))
        producer.produce(settings.kafka.input_topic, key=key, value=unknown_receiver(capture, rng))
        producer.produce(settings.kafka.input_topic, key=key, value=capture_codec().encode(capture))
    producer.flush(30)
    consumer = start_consumer(settings)
    results = results_of(
        read_topic(settings.kafka.bootstrap_servers, settings.kafka.output_topic, expected=10)
    )
    letters = read_topic(settings.kafka.bootstrap_servers, settings.kafka.dlq_topic, expected=20)
    consumer.stop()
    assert sorted(r.capture_id for r in results) == sorted(c.capture_id for c in captures)
    assert len(letters) == 20
    assert consumer.metric("heimdall_dedup_hits_total") == 0
