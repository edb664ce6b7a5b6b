"""The ground-truth topic: created on request, partitioned like the results topic."""

from __future__ import annotations

import logging

from confluent_kafka import KafkaError, KafkaException
from confluent_kafka.admin import AdminClient, NewTopic  # type: ignore[attr-defined]

from heimdall_stream.clients import admin_config
from heimdall_stream.config import Settings
from heimdall_stream.errors import ConfigurationError

log = logging.getLogger(__name__)


def create_truth_topic(settings: Settings, timeout_s: float = 30.0) -> None:
    """Create ``CALIBRATION__TRUTH_TOPIC`` with the results topic's partition count, if missing."""
    admin = AdminClient(admin_config(settings))
    results = settings.kafka.output_topic
    metadata = admin.list_topics(results, timeout=timeout_s).topics.get(results)
    partitions = len(metadata.partitions) if metadata is not None and metadata.partitions else 1
    topic = settings.calibration.truth_topic
    future = admin.create_topics([NewTopic(topic, num_partitions=partitions, replication_factor=-1)])[topic]
    try:
        future.result(timeout=timeout_s)
        log.info("created topic %s (%d partitions)", topic, partitions)
    except KafkaException as exc:
        error = exc.args[0]
        if error.code() != KafkaError.TOPIC_ALREADY_EXISTS:
            raise ConfigurationError(f"cannot create topic {topic}: {error.str()}") from exc
    admin.poll(0)  # hands librdkafka's queued log lines to the logger
