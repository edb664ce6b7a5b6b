"""Kafka client configuration and topic set-up, in one place.

Every client shares ``KafkaSettings.client_config()`` (bootstrap, SASL/TLS, passthrough
options); this module adds what each role needs: the stream consumer (cooperative-sticky, no
auto-commit, read_committed), the transactional or idempotent producer, and plain readers.
"""

from __future__ import annotations

import logging
from typing import Any

from confluent_kafka import KafkaError, KafkaException
from confluent_kafka.admin import AdminClient, NewTopic  # type: ignore[attr-defined]

from heimdall_stream.config import Settings
from heimdall_stream.errors import ConfigurationError

log = logging.getLogger(__name__)

# Prefetched input per partition is bounded so a flood cannot grow memory without limit.
QUEUED_KBYTES = 16_384
DLQ_HEADROOM = 64 * 1024


def consumer_config(settings: Settings) -> dict[str, Any]:
    """The stream consumer: group member, manual offsets, read_committed input."""
    kafka = settings.kafka
    config = {
        **kafka.client_config(),
        "group.id": kafka.group_id,
        "client.id": f"heimdall-stream-{settings.instance_id}",
        "enable.auto.commit": False,
        "enable.auto.offset.store": False,
        "auto.offset.reset": "earliest",
        "isolation.level": "read_committed",
        "partition.assignment.strategy": "cooperative-sticky",
        "session.timeout.ms": kafka.session_timeout_ms,
        "max.poll.interval.ms": max(300_000, kafka.session_timeout_ms),
        "queued.max.messages.kbytes": QUEUED_KBYTES,
        "fetch.max.bytes": max(settings.limits.max_message_bytes * 2, 52_428_800),
    }
    if kafka.static_membership:
        config["group.instance.id"] = settings.instance_id
    return config


def producer_config(settings: Settings) -> dict[str, Any]:
    """Results and dead letters: transactional for exactly_once, idempotent for at_least_once."""
    kafka = settings.kafka
    config: dict[str, Any] = {
        **kafka.client_config(),
        "client.id": f"heimdall-stream-{settings.instance_id}",
        "enable.idempotence": True,
        "acks": "all",
        "linger.ms": 5,
        "message.max.bytes": max(kafka.dlq_max_value_bytes + DLQ_HEADROOM, 1_048_576),
        "transaction.timeout.ms": kafka.transaction_timeout_ms,
    }
    if kafka.delivery == "exactly_once":
        config["transactional.id"] = f"{kafka.transactional_id_prefix}-{settings.instance_id}"
    return config


def reader_config(settings: Settings, group_id: str | None = None) -> dict[str, Any]:
    """A plain read_committed reader (control topic, demo, tests)."""
    config: dict[str, Any] = {
        **settings.kafka.client_config(),
        "enable.auto.commit": False,
        "auto.offset.reset": "earliest",
        "isolation.level": "read_committed",
        "group.id": group_id or f"heimdall-reader-{settings.instance_id}",
    }
    return config


def ensure_topics(settings: Settings, partitions: int = 6, timeout_s: float = 30.0) -> None:
    """Create the service's topics if they do not exist (control topic compacted)."""
    kafka = settings.kafka
    admin = AdminClient(kafka.client_config())
    wanted = [
        NewTopic(kafka.input_topic, num_partitions=partitions, replication_factor=-1),
        NewTopic(kafka.output_topic, num_partitions=partitions, replication_factor=-1),
        NewTopic(
            kafka.dlq_topic,
            num_partitions=1,
            replication_factor=-1,
            config={"retention.ms": str(14 * 24 * 3600 * 1000)},
        ),
        NewTopic(
            kafka.control_topic, num_partitions=1, replication_factor=-1, config={"cleanup.policy": "compact"}
        ),
        NewTopic(
            kafka.status_topic, num_partitions=1, replication_factor=-1, config={"cleanup.policy": "compact"}
        ),
    ]
    for topic, future in admin.create_topics(wanted, request_timeout=timeout_s).items():
        try:
            future.result(timeout=timeout_s)
            log.info("created topic %s", topic)
        except KafkaException as exc:
            error = exc.args[0]
            if error.code() != KafkaError.TOPIC_ALREADY_EXISTS:
                raise ConfigurationError(f"cannot create topic {topic}: {error.str()}") from exc


def check_connectivity(settings: Settings, timeout_s: float = 15.0) -> None:
    """Fail fast with a clear error when the brokers cannot be reached or refuse us."""
    from confluent_kafka.admin import AdminClient

    errors: list[str] = []

    def on_error(error: KafkaError) -> None:
        errors.append(error.str())

    admin = AdminClient({**settings.kafka.client_config(), "error_cb": on_error})  # type: ignore[dict-item]
    try:
        admin.list_topics(timeout=timeout_s)
    except KafkaException as exc:
        detail = "; ".join(errors[-3:]) or exc.args[0].str()
        raise ConfigurationError(
            f"cannot reach Kafka at {settings.kafka.bootstrap_servers}: {detail}"
        ) from exc
