"""Configuration: one frozen ``Settings`` object, the only place that reads the environment.

Every knob is an environment variable with the prefix ``HEIMDALL_`` and ``__`` between a
section and its field, e.g. ``HEIMDALL_KAFKA__BOOTSTRAP_SERVERS`` or
``HEIMDALL_BATCHING__MAX_BATCH_SIZE``.  Secrets are ``SecretStr`` so that they never show in
``repr``, logs or exceptions.  ``HEIMDALL_KAFKA__CLIENT_OPTIONS`` is a JSON object passed
through to librdkafka unchanged (SASL/TLS settings included).
"""

from __future__ import annotations

import os
import socket
from pathlib import Path
from typing import Any, Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    SecretStr,
    ValidationError,
    field_validator,
    model_validator,
)
from pydantic_settings import BaseSettings, SettingsConfigDict, SettingsError

from heimdall_stream.errors import ConfigurationError
from heimdall_stream.service_settings import ApiSettings, CalibrationSettings, JoinSettings, MapSettings

DeliveryMode = Literal["exactly_once", "at_least_once"]
# The sections of the services beside the stream live in service_settings; named here too, so
# ``from heimdall_stream.config import ApiSettings`` works like for every other section.
__all__ = [
    "ApiSettings",
    "BatchingSettings",
    "CalibrationSettings",
    "DeliveryMode",
    "JoinSettings",
    "KafkaSettings",
    "LimitsSettings",
    "MapSettings",
    "MemorySettings",
    "MetricsSettings",
    "MlflowSettings",
    "ModelSettings",
    "RedisSettings",
    "Settings",
    "load_settings",
]


class _Section(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


class KafkaSettings(_Section):
    """Brokers, topics, the consumer group and client security."""

    bootstrap_servers: str = Field("localhost:9092", description="Kafka bootstrap servers.")
    input_topic: str = Field("heimdall.iq.captures", description="Topic of IqCapture records.")
    output_topic: str = Field("heimdall.localizations", description="Topic of Localization results.")
    dlq_topic: str = Field("heimdall.iq.captures.dlq", description="Dead-letter topic for bad input.")
    control_topic: str = Field("heimdall.model-control", description="Compacted ModelDeployment topic.")
    status_topic: str = Field("heimdall.model-status", description="ModelStatus reports topic.")
    group_id: str = Field("heimdall-stream", description="Consumer group id.")
    transactional_id_prefix: str = Field(
        "heimdall-stream", description="Prefix of the producer's transactional.id (+ instance id)."
    )
    delivery: DeliveryMode = Field("exactly_once", description="exactly_once or at_least_once.")
    static_membership: bool = Field(
        False, description="Set group.instance.id to the instance id so a quick restart keeps partitions."
    )
    session_timeout_ms: int = Field(10_000, ge=1_000, description="Consumer group session timeout.")
    connect_timeout_s: float = Field(
        5.0,
        gt=0,
        description="How long a command waits at start for the brokers to answer before it stops "
        "with an error naming HEIMDALL_KAFKA__BOOTSTRAP_SERVERS.",
    )
    prefetch_kbytes: int = Field(
        16_384,
        ge=1_024,
        description="Most input librdkafka prefetches (queued.max.messages.kbytes: the consumer's "
        "queue, whatever the number of partitions; a fetch may overshoot it by one partition fetch).",
    )
    transaction_timeout_ms: int = Field(30_000, ge=1_000, description="Producer transaction timeout.")
    replication_factor: int = Field(
        -1,
        ge=-1,
        description="Replication factor of the topics `heimdall-stream topics` creates; -1 takes the "
        "broker's default.replication.factor (3 on a production cluster, 1 on a single local broker).",
    )
    min_insync_replicas: int | None = Field(
        None,
        ge=1,
        description="min.insync.replicas of the topics `heimdall-stream topics` creates (2 with "
        "replication factor 3: one broker may be down, acks=all still needs two copies); "
        "unset takes the broker's default.",
    )
    abort_retries: int = Field(8, ge=0, description="Aborts in a row before the instance stops (exit 3).")
    abort_backoff_first_s: float = Field(0.5, gt=0, description="First wait before an aborted batch reruns.")
    abort_backoff_max_s: float = Field(30.0, gt=0, description="Longest wait between two aborted runs.")
    dlq_max_value_bytes: int = Field(
        983_040,
        ge=1024,
        description="Largest original value copied into a dead letter; a larger one is omitted "
        "(header heimdall.value-omitted). Keep it under the DLQ topic's max.message.bytes.",
    )
    security_protocol: str | None = Field(None, description="PLAINTEXT, SSL, SASL_PLAINTEXT or SASL_SSL.")
    sasl_mechanism: str | None = Field(None, description="e.g. SCRAM-SHA-512 or PLAIN.")
    sasl_username: str | None = Field(None, description="SASL user name.")
    sasl_password: SecretStr | None = Field(None, description="SASL password (secret).")
    ssl_ca_location: str | None = Field(None, description="CA bundle for TLS.")
    client_options: dict[str, str] = Field(
        default_factory=dict, description="librdkafka options passed through unchanged."
    )

    @model_validator(mode="after")
    def _abort_backoff_in_order(self) -> KafkaSettings:
        if self.abort_backoff_first_s > self.abort_backoff_max_s:
            raise ValueError(
                f"abort_backoff_first_s ({self.abort_backoff_first_s}) exceeds abort_backoff_max_s "
                f"({self.abort_backoff_max_s})"
            )
        return self

    def client_config(self) -> dict[str, Any]:
        """The librdkafka configuration shared by every client (secrets revealed here only)."""
        config: dict[str, Any] = {"bootstrap.servers": self.bootstrap_servers}
        optional = {
            "security.protocol": self.security_protocol,
            "sasl.mechanism": self.sasl_mechanism,
            "sasl.username": self.sasl_username,
            "ssl.ca.location": self.ssl_ca_location,
        }
        config.update({k: v for k, v in optional.items() if v is not None})
        if self.sasl_password is not None:
            config["sasl.password"] = self.sasl_password.get_secret_value()
        config.update(self.client_options)
        return config


class RedisSettings(_Section):
    """Dedup and result-cache store."""

    url: str = Field(
        "redis://localhost:6379/0", description="Redis URL, without the password; rediss:// for TLS."
    )
    password: SecretStr | None = Field(None, description="Redis password (secret).")
    ssl_ca_certs: str | None = Field(
        None, description="CA bundle that signs the Redis server certificate (rediss:// URLs only)."
    )
    key_prefix: str = Field("heimdall:", description="Prefix of every key this service writes.")
    dedup_ttl_s: int = Field(
        86_400, ge=1, description="How long a processed capture_id suppresses duplicates."
    )
    cache_ttl_s: int = Field(3_600, ge=1, description="Result cache TTL.")
    socket_timeout_s: float = Field(
        0.5, gt=0, description="Per-command timeout; beyond it Redis counts as down."
    )
    retry_interval_s: float = Field(2.0, gt=0, description="How often to probe Redis again while degraded.")

    recent_ids: int = Field(
        100_000,
        ge=0,
        description="Committed capture ids also remembered in process (about 170 B each for a "
        "40-character id: 17 MB at the default), so repeats are caught while Redis is down or after "
        "it lost its keyspace; 0 turns this off.",
    )

    @model_validator(mode="after")
    def _tls_options_need_tls(self) -> RedisSettings:
        if self.ssl_ca_certs and not self.url.startswith("rediss://"):
            raise ValueError("redis.ssl_ca_certs is set but redis.url is not a rediss:// (TLS) URL")
        return self


class MlflowSettings(_Section):
    """Model registry and on-disk model cache."""

    tracking_uri: str = Field("http://localhost:5000", description="MLflow tracking/registry URI.")
    cache_dir: Path = Field(
        Path.home() / ".cache" / "heimdall-stream" / "models",
        description="On-disk cache of downloaded models, keyed by version and sha256.",
    )


class ModelSettings(_Section):
    """Which model serves, and how onnxruntime runs it."""

    uri: str = Field(
        "models:/localization_model@champion", description="Model served when no deployment exists."
    )
    intra_op_threads: int = Field(1, ge=0, description="onnxruntime intra-op threads (0 = default).")
    inter_op_threads: int = Field(1, ge=0, description="onnxruntime inter-op threads (0 = default).")
    cpu_mem_arena: bool = Field(
        False,
        description="onnxruntime's CPU memory arena. On, a session keeps the memory of its largest "
        "run (times the runs ever made at once by the workers) reserved for good: a little less "
        "allocation work per run, several hundred MB more RSS for a model with large activations "
        "(the IQ benchmark CNN at batch 32). Off (default), activations are allocated per run.",
    )
    max_run_input_kbytes: int = Field(
        1024,
        ge=0,
        description="Most model input per onnxruntime run: a batch with more is run in slices of "
        "whole captures (same results). Activation memory grows with the rows of a run, so this "
        "bounds it: an IQ model runs one capture of 7 x 10,000 samples (560 KB) at a time. For the "
        "IQ benchmark CNN that took the backlog peak RSS from 439-462 to 325-335 MB (4096 KB, 7 "
        "captures a run, before) with no throughput difference measurable in the service, though "
        "alone a run of 7 costs 13 % less a capture (9.3 against 10.7 ms). A features model's "
        "batch always fits in one run. 0 = the whole batch in one run.",
    )
    warm_up_batch_size: int = Field(
        2,
        ge=1,
        le=4096,
        description="Captures in the inference run made before readiness: onnxruntime initialises "
        "lazily in any run, and two rows in one run refuse at load a graph that hard-codes one "
        "(a model whose rows exceed max_run_input_kbytes / 2 runs them one at a time; its fixed "
        "batch dimension, if any, is refused by the contract check). At the "
        "serving batch size the first full batch is about 20 ms faster once, but that run's "
        "activations become the process's peak memory at start-up and stay with malloc (W1: "
        "+50 MB peak, +26 MB resident), which a lightly loaded consumer never needs.",
    )
    confidence: float = Field(0.95, gt=0, lt=1, description="Confidence level of the emitted ellipse.")
    control_hmac_key: SecretStr | None = Field(
        None, description="Key that signs ModelDeployment messages (secret)."
    )
    control_enabled: bool = Field(
        True, description="Follow the model-control topic (deployments, weights, shadows, rollbacks)."
    )

    @field_validator("control_hmac_key")
    @classmethod
    def _empty_key_is_no_key(cls, value: SecretStr | None) -> SecretStr | None:
        # An empty key would "sign" with b"": treat it as missing, so nothing is signed with it.
        return value if value is not None and value.get_secret_value() else None


def _usable_cores() -> int:
    """The cores this process may run on (its CPU affinity, not the machine's count)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1


class BatchingSettings(_Section):
    """Micro-batching and backpressure."""

    max_batch_size: int = Field(32, ge=1, le=4096, description="Most captures in one batch.")
    max_wait_ms: float = Field(
        0.0,
        ge=0,
        description="How long a batch may wait to fill while a worker is free (0 = hand it over at "
        "once: the lowest latency; while every worker is busy, captures accumulate anyway, so batches "
        "grow with the load).",
    )
    workers: int = Field(
        default_factory=_usable_cores,
        ge=1,
        le=256,
        description="Batches scored at once on worker threads (default: the cores this process may "
        "use). The FFTs and onnxruntime release the GIL, so workers run on every core; batches are "
        "still committed in the order they were consumed.",
    )
    inline_max_captures: int = Field(
        4,
        ge=0,
        le=4096,
        description="A batch of at most this many (and fewer than max_batch_size) is scored on the loop "
        "thread when the pipeline holds none and the loop has time (stream.loop_load; 0 = never).",
    )
    overlap_commit: bool = Field(
        False,
        description="Commit each transaction (at_least_once: flush the outputs) on a thread of its own "
        "while the loop goes on consuming and scoring (still one at a time, in consumption order). "
        "false = the loop commits and consumes nothing meanwhile. Off by default: it lowered W1's p50 "
        "at half load but not W2's, whose p99 it raised (README Latency at half load).",
    )


class MemorySettings(_Section):
    """How the process allocates memory (applied at start-up, see stream.preload and stream.allocator)."""

    allocator: Literal["auto", "jemalloc", "glibc"] = Field(
        "glibc",
        description="`heimdall-stream run`'s malloc. glibc (default) is the faster; jemalloc "
        "(preloaded, the process re-executes itself once) holds 20-45 % less memory for up to 10 % "
        "less throughput and a longer p50 (README Memory); auto = jemalloc when its library is "
        "found, else glibc; jemalloc = refuse to start without it. The glibc settings below apply "
        "only on glibc.",
    )
    jemalloc_library: str = Field(
        "",
        description="Path of libjemalloc.so.2; empty = look in the usual places "
        "(/usr/lib/<arch>/, /usr/lib64/, /usr/lib/, /usr/local/lib/).",
    )

    malloc_arena_max: int = Field(
        2,
        ge=0,
        description="glibc malloc arenas (mallopt M_ARENA_MAX). Each thread that allocates gets one, up "
        "to 8 per core, and keeps what it freed: fewer arenas share that memory. 0 = glibc's default.",
    )
    malloc_mmap_threshold_kbytes: int = Field(
        0,
        ge=0,
        description="Blocks at least this large get their own mapping, returned to the system when "
        "freed (mallopt M_MMAP_THRESHOLD; fixing it stops glibc from raising it up to 32 MB): "
        "less resident memory, more page faults per batch. 0 = glibc's default (dynamic).",
    )
    trim_interval_ms: int = Field(
        0,
        ge=0,
        description="While batches flow, give the free memory inside malloc's arenas back to the "
        "system (malloc_trim) this often. At 100 ms peak RSS fell by 50-80 MB (W1) but throughput "
        "about halved on a VM where page faults are dear (every batch faults fresh pages in); at "
        "1 s it saved nothing measurable. 0 = never (default).",
    )


class LimitsSettings(_Section):
    """Bounds on input, enforced before any allocation that scales with the message."""

    max_message_bytes: int = Field(4 * 1024 * 1024, ge=1024, description="Largest accepted capture.")
    max_receivers: int = Field(32, ge=1, description="Most receivers in one capture.")
    max_samples: int = Field(131_072, ge=16, description="Most IQ samples per receiver.")


class MetricsSettings(_Section):
    """The HTTP endpoint with /metrics, /healthz and /readyz."""

    host: str = Field("0.0.0.0", description="Address the metrics server binds.")
    port: int = Field(9108, ge=0, le=65535, description="Port of /metrics, /healthz, /readyz (0 = any).")


class Settings(BaseSettings):
    """Every setting of heimdall-stream; built once at start-up and then immutable."""

    model_config = SettingsConfigDict(
        env_prefix="HEIMDALL_", env_nested_delimiter="__", frozen=True, extra="ignore"
    )

    instance_id: str = Field(
        default_factory=lambda: f"{socket.gethostname()}-{os.getpid()}",
        description="Names this process in status reports, DLQ headers and transactional ids.",
    )
    log_level: str = Field("INFO", description="Log level: DEBUG, INFO, WARNING, ERROR or CRITICAL.")
    log_format: Literal["text", "json"] = Field(
        "text", description="Log lines as text, or as one JSON object each (librdkafka's included)."
    )
    kafka: KafkaSettings = Field(default_factory=KafkaSettings, description=KafkaSettings.__doc__)
    redis: RedisSettings = Field(default_factory=RedisSettings, description=RedisSettings.__doc__)
    mlflow: MlflowSettings = Field(default_factory=MlflowSettings, description=MlflowSettings.__doc__)
    model: ModelSettings = Field(default_factory=ModelSettings, description=ModelSettings.__doc__)
    batching: BatchingSettings = Field(default_factory=BatchingSettings, description=BatchingSettings.__doc__)
    limits: LimitsSettings = Field(default_factory=LimitsSettings, description=LimitsSettings.__doc__)
    memory: MemorySettings = Field(default_factory=MemorySettings, description=MemorySettings.__doc__)
    join: JoinSettings = Field(default_factory=JoinSettings, description=JoinSettings.__doc__)
    metrics: MetricsSettings = Field(default_factory=MetricsSettings, description=MetricsSettings.__doc__)
    api: ApiSettings = Field(default_factory=ApiSettings, description=ApiSettings.__doc__)
    map: MapSettings = Field(default_factory=MapSettings, description=MapSettings.__doc__)
    calibration: CalibrationSettings = Field(
        default_factory=CalibrationSettings, description=CalibrationSettings.__doc__
    )

    @field_validator("log_level")
    @classmethod
    def _known_level(cls, value: str) -> str:
        level = value.upper()
        if level not in {"DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL"}:
            raise ValueError(f"unknown log level {value!r}")
        return level


def load_settings() -> Settings:
    """The settings from the environment, or a ``ConfigurationError`` naming each bad variable.

    pydantic's own message spans several lines per error; commands report one line, so each
    problem is said as ``HEIMDALL_<SECTION>__<FIELD>: <what is wrong>``.
    """
    try:
        return Settings()
    except ValidationError as exc:
        problems = "; ".join(
            f"{_variable(error['loc'])}: {error['msg']}" for error in exc.errors(include_url=False)
        )
        raise ConfigurationError(f"invalid settings: {problems}") from None
    except SettingsError as exc:  # a value that is not even JSON, e.g. KAFKA__CLIENT_OPTIONS
        cause = f" ({exc.__cause__})" if exc.__cause__ is not None else ""
        raise ConfigurationError(f"invalid settings: {exc}{cause}") from None


def _variable(location: tuple[int | str, ...]) -> str:
    """The environment variable of a pydantic error location, e.g. HEIMDALL_KAFKA__DELIVERY."""
    parts = [str(part) for part in location if not isinstance(part, int)]
    return "HEIMDALL_" + "__".join(parts).upper() if parts else "HEIMDALL_*"
