"""The stream loop's read: no message is held across a rebalance that seeks its partition back."""

from __future__ import annotations

from typing import Any
from unittest import mock

from confluent_kafka import TopicPartition
from prometheus_client import CollectorRegistry

import heimdall_stream.stream.app as app_module
from heimdall_stream.config import Settings
from heimdall_stream.health import Health
from heimdall_stream.metrics import Metrics
from heimdall_stream.processing.records import InputRecord


class _Message:
    def __init__(self, topic: str, partition: int, offset: int) -> None:
        self._where = (topic, partition, offset)

    def error(self) -> None:
        return None

    def topic(self) -> str:
        return self._where[0]

    def partition(self) -> int:
        return self._where[1]

    def offset(self) -> int:
        return self._where[2]

    def key(self) -> bytes:
        return b"k"

    def value(self) -> bytes:
        return b"v"

    def timestamp(self) -> tuple[int, int]:
        return (0, 0)


class _RebalancingConsumer:
    """A consumer whose queue holds in[0]@10, then the loss of in[1] (served on the next call).

    As librdkafka does, a call that serves the rebalance returns nothing the seek made stale;
    after the seek in[0] is read again from offset 7, one message per poll.
    """

    def __init__(self, *_args: Any, **_kwargs: Any) -> None:
        self.app: Any = None
        self.served = False
        self.seeks: list[tuple[str, int, int]] = []
        self.next_offset = 7

    def _serve(self) -> None:
        self.served = True
        self.app._on_lost(self, [TopicPartition("in", 1)])

    def poll(self, timeout: float) -> _Message:
        if not self.served:
            return _Message("in", 0, 10)  # fetched before the rebalance op behind it
        self.next_offset += 1
        return _Message("in", 0, self.next_offset - 1)

    def consume(self, num_messages: int, timeout: float) -> list[_Message]:
        if not self.served:
            self._serve()
        return []

    def seek(self, tp: TopicPartition) -> None:
        self.seeks.append((tp.topic, tp.partition, tp.offset))

    def consumer_group_metadata(self) -> str:
        return "group"


def test_a_rebalance_served_while_reading_leaves_nothing_ahead_of_its_seek() -> None:
    with mock.patch.object(app_module, "Consumer", _RebalancingConsumer):
        settings = Settings(batching={"max_batch_size": 32, "max_wait_ms": 1000, "workers": 1})
        app = app_module.StreamApp(settings, mock.Mock(), mock.Mock(), Metrics(CollectorRegistry()), Health())
    consumer = app.consumer
    consumer.app = app
    app.delivery.consumer = consumer
    app._assigned = {("in", 0), ("in", 1)}
    for offset in (7, 8, 9):  # consumed earlier, waiting in the batch being filled
        app.batcher.add(InputRecord("in", 0, offset, b"k", b"v", consumed_at=0.0))
    try:
        for _ in range(2):
            for message in app._consume():
                app._accept(message, 0.0, 0.0)
        assert consumer.seeks == [("in", 0, 7)]
        # Read again from the seek point, in order: offset 10 never comes before 7-9.
        assert [(r.partition, r.offset) for r in app.batcher.take(force=True)] == [(0, 7), (0, 8)]
    finally:
        app.pipeline.close()


def test_a_batch_is_scored_on_the_loop_only_below_the_full_batch_size() -> None:
    # With max_batch_size <= inline_max_captures every batch would be small enough, the pipeline
    # would be empty again after each one's commit, and the workers would never run: a full
    # batch always goes to them.
    def inline_limit(max_batch_size: int, inline: int = 4) -> int:
        batching = {"max_batch_size": max_batch_size, "inline_max_captures": inline, "workers": 1}
        with mock.patch.object(app_module, "Consumer", _RebalancingConsumer):
            app = app_module.StreamApp(
                Settings(batching=batching), mock.Mock(), mock.Mock(), Metrics(CollectorRegistry()), Health()
            )
        app.pipeline.close()
        return app.pipeline.inline_max_captures

    assert inline_limit(32) == 4
    assert inline_limit(4) == 3
    assert inline_limit(1) == 0
    assert inline_limit(32, inline=0) == 0
