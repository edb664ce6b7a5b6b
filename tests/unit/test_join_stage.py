"""The join in the batch path (no Kafka): sets scored like captures, refused parts carried along."""

from __future__ import annotations

import dataclasses

from prometheus_client import CollectorRegistry

from heimdall_stream.config import LimitsSettings, Settings
from heimdall_stream.join.checkpoint import Checkpoint
from heimdall_stream.join.stage import JoiningProcessor, JoinStage
from heimdall_stream.lab.per_receiver import part_value
from heimdall_stream.lab.simulator import IqSimulator
from heimdall_stream.metrics import Metrics
from heimdall_stream.models.inference import load_model
from heimdall_stream.models.registry import file_sha256
from heimdall_stream.models.routing import ModelSet
from heimdall_stream.processing.cache import ResultCache
from heimdall_stream.processing.dedup import Deduplicator
from heimdall_stream.processing.records import InputRecord
from heimdall_stream.processing.store import InMemoryStore
from heimdall_stream.stream.delivery import dead_letter_message, next_offsets
from tests.helpers import NETWORK, tiny_features_model

TOPIC = "rx"


def _stage_and_processor(tmp_path):
    path = tmp_path / "model.onnx"
    path.write_bytes(tiny_features_model())
    model = load_model(path, name="tiny", version="1", uri="models:/tiny/1", sha256=file_sha256(path))
    models = ModelSet.single(model)
    settings = Settings(join={"enabled": True, "topic": TOPIC, "min_receivers": 3}, limits=LimitsSettings())
    metrics = Metrics(CollectorRegistry())
    stage = JoinStage(settings, metrics, next_offsets, clock=lambda: 1.0)
    store = InMemoryStore()
    processor = JoiningProcessor(
        stage,
        lambda: models,
        Deduplicator(store, 100, metrics),
        ResultCache(store),
        metrics,
        limits=settings.limits,
        confidence=0.95,
        batch_prefix="t",
    )
    stage.joiner.assign(0, None, 0.0)
    return stage, processor, metrics


def _records(capture, receivers, first_offset, expected):
    return [
        InputRecord(
            TOPIC,
            0,
            first_offset + i,
            capture.capture_id.encode(),
            part_value(capture, r, capture.capture_id, expected=expected),
            0.0,
        )
        for i, r in enumerate(receivers)
    ]


def test_a_set_is_scored_like_a_capture_and_refused_parts_ride_along(tmp_path):
    stage, processor, metrics = _stage_and_processor(tmp_path)
    capture = IqSimulator(NETWORK, seed=3).generate(0).capture
    capture = dataclasses.replace(capture, capture_id="tx-1")
    receivers = list(capture.receivers)
    records = _records(capture, receivers[:1] + receivers[:1] + receivers[1:], 0, len(receivers))
    emitted = list(stage.accept(records[0]))
    assert not emitted and not stage.tick()
    assert metrics.registry.get_sample_value("heimdall_join_open_sets") == 1  # refreshed by tick
    emitted += [out for record in records[1:] for out in stage.accept(record)]
    assert len(emitted) == 2  # the repeat (dead letter) and the set
    letters_only = processor.process(emitted[:1])
    assert [letter.reason for letter in letters_only.dead_letters] == [
        "duplicate"
    ] and not letters_only.results
    scored = processor.process(emitted)
    assert [r.localization.capture_id for r in scored.results] == ["tx-1"]
    assert sorted(scored.results[0].localization.receivers_used) == sorted(r.receiver_id for r in receivers)
    # Waiting for its commit, the set keeps its parts and offsets but not its decoded samples.
    (set_record,) = [r for r in scored.records if r.parts]
    assert set_record.capture is None and scored.results[0].record.capture is None
    assert len(set_record.parts) == len(receivers)
    offsets = stage.commit_offsets(scored.records)
    (tp,) = offsets
    assert (tp.topic, tp.partition, tp.offset) == (TOPIC, 0, len(records))
    assert Checkpoint.parse(tp.offset, tp.metadata).done == ()
    processor.after_commit(scored)
    assert metrics.registry.get_sample_value("heimdall_join_sets_total", {"outcome": "complete"}) == 1
    assert (
        metrics.registry.get_sample_value("heimdall_join_parts_rejected_total", {"reason": "duplicate"}) == 1
    )
    stage.tick()
    assert metrics.registry.get_sample_value("heimdall_join_open_sets") == 0


def test_whole_captures_keep_their_own_offsets_beside_the_join(tmp_path):
    stage, _, _ = _stage_and_processor(tmp_path)
    whole = InputRecord("captures", 2, 41, b"k", b"v", 0.0)
    assert [(tp.topic, tp.partition, tp.offset) for tp in stage.commit_offsets([whole])] == [
        ("captures", 2, 42)
    ]


def test_a_set_refused_after_assembly_is_dead_lettered_as_its_parts(tmp_path):
    stage, processor, metrics = _stage_and_processor(tmp_path)
    capture = IqSimulator(NETWORK, seed=4).generate(0).capture
    receivers = list(capture.receivers)
    receivers[2] = dataclasses.replace(receivers[2], sample_rate_hz=receivers[2].sample_rate_hz / 2)
    capture = dataclasses.replace(capture, capture_id="tx-2", receivers=tuple(receivers))
    records = _records(capture, receivers, 10, len(receivers))
    (emitted,) = [out for record in records for out in stage.accept(record)]
    # The set travels decoded, made of the parts' own records; it has no bytes of its own.
    assert emitted.value is None and emitted.capture is not None and emitted.capture.capture_id == "tx-2"
    assert [part.offset for part in emitted.parts] == [r.offset for r in records]
    scored = processor.process([emitted])
    assert not scored.results
    assert [(d.record.offset, d.record.value, d.reason) for d in scored.dead_letters] == [
        (r.offset, r.value, "sample_rate_mismatch") for r in records
    ]
    value, headers = dead_letter_message(scored.dead_letters[1], Settings())
    assert value == records[1].value and ("heimdall.source.offset", b"11") in headers
    (tp,) = stage.commit_offsets(scored.records)
    assert (tp.topic, tp.partition, tp.offset) == (TOPIC, 0, 10 + len(records))
    processor.after_commit(scored)
    assert metrics.registry.get_sample_value("heimdall_join_sets_total", {"outcome": "complete"}) == 1
    dead = metrics.registry.get_sample_value(
        "heimdall_dead_letters_total", {"reason": "sample_rate_mismatch"}
    )
    assert dead == len(records)
