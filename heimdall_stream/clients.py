"""Kafka client configuration and topic set-up, in one place.

Every client shares ``KafkaSettings.client_config()`` (bootstrap, SASL/TLS, passthrough
options); this module adds what each role needs: the stream consumer (cooperative-sticky, no
auto-commit, read_committed), the transactional or idempotent producer of results, the
idempotent producer every other writer uses (control plane, simulator, demo), plain readers and
admin clients.  Every configuration carries the ``logger`` key, so librdkafka's own log goes
through Python logging (``heimdall.librdkafka``, see ``heimdall_stream.logs``) and is served
by the client's poll() instead of being printed on stderr by librdkafka's threads.
"""

from __future__ import annotations

import logging
import re
import time
from typing import Any

from confluent_kafka import KafkaError, KafkaException
from confluent_kafka.admin import AdminClient, NewTopic  # type: ignore[attr-defined]

from heimdall_stream.config import Settings
from heimdall_stream.errors import ConfigurationError
from heimdall_stream.logs import librdkafka_logger

log = logging.getLogger(__name__)

DLQ_HEADROOM = 64 * 1024
# Errors that retrying cannot fix: stop at once instead of waiting out the connect timeout.
REFUSALS = frozenset({KafkaError._AUTHENTICATION, KafkaError._SSL, KafkaError.SASL_AUTHENTICATION_FAILED})
CONNECT_PROBE_S = 1.0
# What a broker that enforces ACLs answers when the principal lacks the right.
AUTHORIZATION_ERRORS = frozenset(
    {
        KafkaError.TOPIC_AUTHORIZATION_FAILED,
        KafkaError.GROUP_AUTHORIZATION_FAILED,
        KafkaError.TRANSACTIONAL_ID_AUTHORIZATION_FAILED,
        KafkaError.CLUSTER_AUTHORIZATION_FAILED,
    }
)
# "(after 0ms in state CONNECT, 3 identical error(s) suppressed)": differs between attempts.
_ATTEMPT = re.compile(r"\s*\(after \d+ms in state [^)]*\)")
# Simulated captures can exceed librdkafka's 1 MB default; this is well above the consumer's
# own 4 MiB input limit, so the producer never refuses what the consumer would judge.
SIMULATOR_MAX_MESSAGE_BYTES = 16 * 1024 * 1024
# First retry of a refused transactional request, ms (see producer_config).
TRANSACTION_RETRY_BACKOFF_MS = 10


def base_config(settings: Settings) -> dict[str, Any]:
    """What every client shares: bootstrap, SASL/TLS, passthrough options and the logger."""
    return {**settings.kafka.client_config(), "logger": librdkafka_logger()}


def admin_config(settings: Settings) -> dict[str, Any]:
    """An admin client (topic creation, group descriptions)."""
    return base_config(settings)


def consumer_config(settings: Settings) -> dict[str, Any]:
    """The stream consumer: group member, manual offsets, read_committed input.

    Exactly once commits offsets in the output transaction, at least once from the loop once
    the outputs are acknowledged (``stream.acked_offsets``): never librdkafka on its own.
    """
    kafka = settings.kafka
    config = {
        **base_config(settings),
        "group.id": kafka.group_id,
        "client.id": f"heimdall-stream-{settings.instance_id}",
        "enable.auto.commit": False,
        "enable.auto.offset.store": False,
        "auto.offset.reset": "earliest",
        "isolation.level": "read_committed",
        "partition.assignment.strategy": "cooperative-sticky",
        "session.timeout.ms": kafka.session_timeout_ms,
        "max.poll.interval.ms": max(300_000, kafka.session_timeout_ms),
        # Prefetched input is bounded so a flood cannot grow memory without limit.
        "queued.max.messages.kbytes": kafka.prefetch_kbytes,
        # Once that bound is reached librdkafka stops fetching for fetch.queue.backoff.ms, 1,000 ms
        # by default: with ~280 KB captures the queue holds a few dozen, drained in well under a
        # second, and the consumer then starves for the rest of it.  10 ms keeps it fed.
        "fetch.queue.backoff.ms": 10,
        # librdkafka's default, 1 MiB per partition (about three captures), on purpose: the queue
        # bound above may be overshot by one fetch of every partition at once, and with 4 MiB that
        # was 24 MiB more resident memory on 6 partitions for no throughput (the short backoff
        # above keeps the queue fed with small fetches as well).
        "fetch.message.max.bytes": min(1024 * 1024, kafka.prefetch_kbytes * 1024),
        "fetch.max.bytes": max(settings.limits.max_message_bytes * 2, 52_428_800),
    }
    if kafka.static_membership:
        config["group.instance.id"] = settings.instance_id
    return config


def idempotent_producer_config(
    settings: Settings, *, linger_ms: int | None = None, max_message_bytes: int | None = None
) -> dict[str, Any]:
    """Any producer of the project: idempotent, every in-sync replica acknowledges.

    Idempotence keeps librdkafka's own retries from writing a message twice or out of order;
    ``acks=all`` (which idempotence needs anyway) is spelt out so nobody lowers it by accident.
    ``linger_ms`` and ``max_message_bytes`` are set only when given (librdkafka's defaults else).
    """
    config: dict[str, Any] = {
        **base_config(settings),
        "enable.idempotence": True,
        "acks": "all",
    }
    if linger_ms is not None:
        config["linger.ms"] = linger_ms
    if max_message_bytes is not None:
        config["message.max.bytes"] = max_message_bytes
    return config


def capture_producer_config(settings: Settings) -> dict[str, Any]:
    """The simulator's and demo's producer of captures: lingers a little, allows large captures.

    Whether a capture is too large is the consumer's decision (it dead-letters it with reason
    ``oversized``), so this producer's own limit stays well above ``limits.max_message_bytes``.
    """
    return idempotent_producer_config(settings, linger_ms=5, max_message_bytes=SIMULATOR_MAX_MESSAGE_BYTES)


def producer_config(settings: Settings) -> dict[str, Any]:
    """Results and dead letters: transactional for exactly_once, idempotent for at_least_once."""
    kafka = settings.kafka
    config: dict[str, Any] = {
        **idempotent_producer_config(settings, linger_ms=5),
        "client.id": f"heimdall-stream-{settings.instance_id}",
        "message.max.bytes": max(kafka.dlq_max_value_bytes + DLQ_HEADROOM, 1_048_576),
        "transaction.timeout.ms": kafka.transaction_timeout_ms,
    }
    if kafka.delivery == "exactly_once":
        config["transactional.id"] = f"{kafka.transactional_id_prefix}-{settings.instance_id}"
        # A transaction begun just after the previous commit is refused (CONCURRENT_TRANSACTIONS)
        # until the broker has written that commit's markers, and librdkafka retries after
        # retry.backoff.ms, 100 ms by default, doubling: that was the commit's p99 of 100-250 ms
        # at half load.  The Java client retries these after 20 ms.  The cap stays
        # retry.backoff.max.ms (1 s), so retries during an outage still back off.  A value in
        # KAFKA__CLIENT_OPTIONS wins.
        config.setdefault("retry.backoff.ms", TRANSACTION_RETRY_BACKOFF_MS)
    return config


def reader_config(settings: Settings, group_id: str | None = None) -> dict[str, Any]:
    """A plain read_committed reader (control topic, demo, tests)."""
    config: dict[str, Any] = {
        **base_config(settings),
        "enable.auto.commit": False,
        "auto.offset.reset": "earliest",
        "isolation.level": "read_committed",
        "group.id": group_id or f"heimdall-reader-{settings.instance_id}",
    }
    return config


def ensure_topics(settings: Settings, partitions: int = 6, timeout_s: float = 30.0) -> None:
    """Create the service's topics if they do not exist (control topic compacted).

    Replication comes from ``kafka.replication_factor`` and ``kafka.min_insync_replicas``
    (the broker's defaults when unset); an existing topic is left as it is.
    """
    kafka = settings.kafka
    admin = AdminClient(admin_config(settings))
    replication = kafka.replication_factor
    common = (
        {} if kafka.min_insync_replicas is None else {"min.insync.replicas": str(kafka.min_insync_replicas)}
    )
    specs = [
        (kafka.input_topic, partitions, {}),
        (kafka.output_topic, partitions, {}),
        (settings.join.topic, partitions, {}),
        (kafka.dlq_topic, 1, {"retention.ms": str(14 * 24 * 3600 * 1000)}),
        (kafka.control_topic, 1, {"cleanup.policy": "compact"}),
        (kafka.status_topic, 1, {"cleanup.policy": "compact"}),
    ]
    wanted = [
        NewTopic(name, num_partitions=count, replication_factor=replication, config={**common, **config})
        for name, count, config in specs
    ]
    for topic, future in admin.create_topics(wanted, request_timeout=timeout_s).items():
        try:
            future.result(timeout=timeout_s)
            log.info("created topic %s", topic)
        except KafkaException as exc:
            error = exc.args[0]
            if error.code() != KafkaError.TOPIC_ALREADY_EXISTS:
                raise ConfigurationError(f"cannot create topic {topic}: {error.str()}") from exc
    admin.poll(0)  # hands librdkafka's queued log lines to the logger


def check_connectivity(settings: Settings, timeout_s: float | None = None) -> set[str]:
    """Fail fast with a clear error when the brokers cannot be reached or refuse us.

    Returns the names of the topics the cluster has (the metadata answer of the check).
    Gives up after ``timeout_s`` (default ``HEIMDALL_KAFKA__CONNECT_TIMEOUT_S``) with a
    ``ConfigurationError`` that names the variable to set and the address it tried.

    librdkafka retries a refused login or a failed TLS handshake forever in the background;
    here the first such error ends the check at once (``ConfigurationError``), so wrong
    credentials or a wrong CA never turn into a silent retry loop.
    """
    kafka = settings.kafka
    timeout = kafka.connect_timeout_s if timeout_s is None else timeout_s
    errors: list[KafkaError] = []
    # The errors reach error_cb and end up in the one message raised below; librdkafka's own
    # log would report every failed connection attempt (many per second) as well.
    probe = {**base_config(settings), "error_cb": errors.append, "log_level": 0}
    admin = AdminClient(probe)
    deadline = time.monotonic() + timeout
    while True:
        try:
            metadata = admin.list_topics(timeout=min(CONNECT_PROBE_S, max(deadline - time.monotonic(), 0.1)))
            return set(metadata.topics)
        except KafkaException as exc:
            last = exc.args[0]
        admin.poll(0)  # serves error_cb
        refused = [e for e in errors if e.code() in REFUSALS]
        if refused:
            raise ConfigurationError(_refusal_message(settings, refused[-1]))
        if time.monotonic() >= deadline:
            raise ConfigurationError(_unreachable_message(settings, timeout, errors, last))


def check_topics(settings: Settings, present: set[str]) -> None:
    """Fail at start when a topic the consumer writes to or follows does not exist.

    ``present`` is what ``check_connectivity`` found.  A missing output or dead-letter topic
    would otherwise abort every transaction and rewind the same batch forever;
    ``heimdall-stream topics`` creates them.
    """
    kafka = settings.kafka
    needed = [kafka.input_topic, kafka.output_topic, kafka.dlq_topic]
    if settings.model.control_enabled:
        needed += [kafka.control_topic, kafka.status_topic]
    if settings.join.enabled:
        needed.append(settings.join.topic)
    missing = [topic for topic in needed if topic not in present]
    if missing:
        raise ConfigurationError(
            f"topic(s) {', '.join(missing)} do not exist on {kafka.bootstrap_servers}"
            f"{hidden_topics_hint(settings, 'them')}; "
            "create them with `heimdall-stream topics` (or your platform's topic tooling)"
        )


def hidden_topics_hint(settings: Settings, pronoun: str) -> str:
    """Why a topic may look missing: with ACLs, one the principal may not access is hidden."""
    user = settings.kafka.sasl_username
    return f" (or user {user!r} has no ACL on {pronoun}: the broker hides such topics)" if user else ""


def refused_writes(settings: Settings, failures: list[tuple[str, Any]]) -> ConfigurationError | None:
    """The first failed delivery (topic, KafkaError) that an ACL refused, as a clear error."""
    refusals = (denied(settings, error, f"Write on {topic}") for topic, error in failures)
    return next((refusal for refusal in refusals if refusal is not None), None)


def denied(settings: Settings, error: KafkaError, what: str) -> ConfigurationError | None:
    """A clear error when ``error`` is the broker refusing ``what`` to this principal (ACLs)."""
    if error.code() not in AUTHORIZATION_ERRORS:
        return None
    user = settings.kafka.sasl_username or "ANONYMOUS"
    return ConfigurationError(
        f"Kafka denied user {user!r} {what}: {error.str()}; this principal has no ACL for it "
        "(deploy/README.md, 'Least privilege', lists who may do what)"
    )


def _unreachable_message(
    settings: Settings, timeout_s: float, errors: list[KafkaError], last: KafkaError
) -> str:
    """What was tried, what librdkafka said (each distinct reason once), and what to set."""
    kafka = settings.kafka
    detail = "; ".join(dict.fromkeys(_ATTEMPT.sub("", e.str()) for e in errors[-5:])) or last.str()
    hint = ""
    if kafka.security_protocol in (None, "PLAINTEXT") and "APIVERSION_QUERY" in detail:
        hint = " (the listener may expect TLS or SASL: check HEIMDALL_KAFKA__SECURITY_PROTOCOL)"
    return (
        f"cannot reach Kafka at {kafka.bootstrap_servers} within {timeout_s:g} s: {detail}{hint}; "
        "set HEIMDALL_KAFKA__BOOTSTRAP_SERVERS to brokers this host can reach "
        "(HEIMDALL_KAFKA__CONNECT_TIMEOUT_S waits longer)"
    )


def _refusal_message(settings: Settings, error: KafkaError) -> str:
    kafka = settings.kafka
    if error.code() == KafkaError._SSL:
        return (
            f"TLS handshake with Kafka at {kafka.bootstrap_servers} failed (check "
            f"HEIMDALL_KAFKA__SSL_CA_LOCATION={kafka.ssl_ca_location}): {error.str()}"
        )
    return (
        f"Kafka at {kafka.bootstrap_servers} refused the credentials of user {kafka.sasl_username!r} "
        f"({kafka.sasl_mechanism}): {error.str()}"
    )
