"""Operator side of the control plane: publish signed deployments, read instance status.

Used by ``heimdall-stream deploy`` and ``heimdall-stream status``.  Live instances are the
members of the consumer group (Kafka knows who is alive); their latest ``ModelStatus`` says what
each has applied.  Builds on ``control.protocol`` only: deploying and reading status never load
onnxruntime or MLflow.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable
from datetime import UTC, datetime

from confluent_kafka import OFFSET_BEGINNING, Consumer, KafkaError, Producer, TopicPartition
from confluent_kafka.admin import AdminClient

from heimdall_stream.clients import admin_config, denied, idempotent_producer_config, reader_config
from heimdall_stream.config import Settings
from heimdall_stream.control.protocol import Outcome, next_generation, outcome, signed
from heimdall_stream.errors import ConfigurationError, DecodeError
from heimdall_stream.wire.codec import deployment_codec, status_codec
from heimdall_stream.wire.messages import ModelDeployment, ModelStatus, WeightedVersion

CLIENT_ID_PREFIX = "heimdall-stream-"


def parse_versions(specs: tuple[str, ...]) -> tuple[WeightedVersion, ...]:
    """``models:/name/3=0.9`` → WeightedVersion; a spec without ``=`` takes weight 1."""
    versions = []
    for spec in specs:
        uri, sep, weight = spec.rpartition("=")
        if not sep:
            uri, weight = spec, "1"
        try:
            versions.append(WeightedVersion(uri, float(weight)))
        except ValueError as exc:
            raise ConfigurationError(f"bad --version {spec!r}: expected URI=WEIGHT") from exc
    return tuple(versions)


def read_compacted(settings: Settings, topic: str, timeout_s: float = 15.0) -> list[bytes]:
    """Every value on partition 0 of a (small, compacted) topic, from the beginning to the end."""
    # A group of its own that never commits: assign() reads, the group id is only required.
    consumer = Consumer(
        {**reader_config(settings, f"heimdall-cli-{uuid.uuid4().hex}"), "enable.partition.eof": True}
    )
    consumer.assign([TopicPartition(topic, 0, OFFSET_BEGINNING)])
    values: list[bytes] = []
    deadline = time.monotonic() + timeout_s
    try:
        while time.monotonic() < deadline:
            message = consumer.poll(0.5)
            if message is None:
                continue
            error = message.error()
            if error is not None:
                if error.code() == KafkaError._PARTITION_EOF:
                    break
                continue
            value = message.value()
            if value is not None:
                values.append(value)
    finally:
        consumer.close()
    return values


def deployments(settings: Settings) -> list[ModelDeployment]:
    """Every deployment on the control topic that decodes (one per model once compacted)."""
    found = []
    for value in read_compacted(settings, settings.kafka.control_topic):
        try:
            found.append(deployment_codec().decode(value))
        except DecodeError:
            continue
    return found


def publish_deployment(
    settings: Settings,
    model_name: str,
    versions: tuple[WeightedVersion, ...],
    shadows: tuple[str, ...],
    issued_by: str,
) -> ModelDeployment:
    """Sign and publish the next generation of a model's deployment."""
    key = settings.model.control_hmac_key
    if key is None:
        raise ConfigurationError("HEIMDALL_MODEL__CONTROL_HMAC_KEY is needed to sign a deployment")
    deployment = signed(
        ModelDeployment(
            model_name=model_name,
            generation=next_generation(deployments(settings), model_name),
            versions=versions,
            shadow=shadows,
            issued_by=issued_by,
            issued_at=datetime.now(UTC),
        ),
        key.get_secret_value().encode(),
    )
    producer = Producer(idempotent_producer_config(settings))
    failures: list[KafkaError] = []
    topic = settings.kafka.control_topic
    producer.produce(
        topic,
        key=model_name.encode(),
        value=deployment_codec().encode(deployment),
        on_delivery=lambda error, _message: failures.append(error) if error is not None else None,
    )
    if producer.flush(30):
        raise ConfigurationError(f"could not publish to {topic}")
    if failures:  # flush() also counts a message whose delivery failed as done
        raise denied(settings, failures[0], f"Write on {topic}") or ConfigurationError(
            f"could not publish to {topic}: {failures[0].str()}"
        )
    return deployment


def statuses(settings: Settings) -> dict[str, ModelStatus]:
    """The latest status of every instance that ever reported."""
    latest: dict[str, ModelStatus] = {}
    for value in read_compacted(settings, settings.kafka.status_topic):
        try:
            status = status_codec().decode(value)
        except DecodeError:
            continue
        latest[status.instance_id] = status
    return latest


def live_instances(settings: Settings, timeout_s: float = 10.0) -> set[str]:
    """Instance ids of the consumer group's current members."""
    admin = AdminClient(admin_config(settings))
    futures = admin.describe_consumer_groups([settings.kafka.group_id], request_timeout=timeout_s)
    group = futures[settings.kafka.group_id].result(timeout=timeout_s)
    return {
        member.client_id.removeprefix(CLIENT_ID_PREFIX)
        for member in group.members
        if member.client_id.startswith(CLIENT_ID_PREFIX)
    }


def wait_applied(
    settings: Settings,
    model_name: str,
    generation: int,
    timeout_s: float,
    progress: Callable[[int, int], None] | None = None,
) -> tuple[set[str], dict[str, str]]:
    """Wait until every live instance applied ``generation`` (or reported why not).

    Returns the instances that applied it and the errors of those that did not.  An instance
    whose state is ``PENDING`` (registry unreachable, retrying) is waited for; if the timeout
    comes first, its error is returned.
    """
    deadline = time.monotonic() + timeout_s
    applied: set[str] = set()
    errors: dict[str, str] = {}
    pending: dict[str, str] = {}
    while time.monotonic() < deadline:
        live = live_instances(settings)
        applied, errors, pending = set(), {}, {}
        for instance, status in statuses(settings).items():
            if instance not in live or status.model_name != model_name:
                continue
            found = outcome(status, generation)
            if found is Outcome.APPLIED:
                applied.add(instance)
            elif found is Outcome.PENDING:
                pending[instance] = status.error or "pending"
            elif found is Outcome.REFUSED:
                errors[instance] = status.error or status.state.lower()
        if progress is not None:
            progress(len(applied), len(live))
        if live and len(applied) + len(errors) >= len(live):
            break
        time.sleep(1.0)
    return applied, {**pending, **errors}
