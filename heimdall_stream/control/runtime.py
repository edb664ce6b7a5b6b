"""The control plane's runtime: the thread that follows the control topic and applies deployments.

Every instance reads ``heimdall.model-control`` from the beginning (assign, no consumer group),
applies the newest valid deployment for its model (``control.protocol.verify``), then follows
the topic live.  A deployment's versions are fetched, checked and warmed up on this thread; the
app swaps the whole model set between two batches.  Whatever happens, the instance publishes a
``ModelStatus`` (key = instance id) to ``heimdall.model-status`` whose ``state`` says what
became of it; a failure leaves the previous model set serving.

A deployment that fails only because the registry is unreachable (``RegistryUnavailableError``)
stays ``PENDING``: the status says so once, and the load is retried on a ``Backoff``
(``REGISTRY_RETRY_FIRST_S`` doubling up to ``REGISTRY_RETRY_MAX_S``) until it succeeds or a newer
deployment replaces it.  Any other failure (bad URI, sha256 mismatch, broken contract) is final
(``REFUSED``).
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from datetime import UTC, datetime

from confluent_kafka import OFFSET_BEGINNING, Consumer, KafkaError, Producer, TopicPartition

from heimdall_stream.clients import idempotent_producer_config, reader_config
from heimdall_stream.config import Settings
from heimdall_stream.control.protocol import verify
from heimdall_stream.errors import (
    ControlMessageError,
    DecodeError,
    HeimdallError,
    RegistryUnavailableError,
)
from heimdall_stream.metrics import Metrics
from heimdall_stream.models.inference import LoadedModel
from heimdall_stream.models.loading import ModelSource, load_version
from heimdall_stream.models.registry import ModelRegistry
from heimdall_stream.models.routing import ModelSet
from heimdall_stream.retry import Backoff
from heimdall_stream.wire.codec import deployment_codec, status_codec
from heimdall_stream.wire.messages import ApplyState, LoadedVersion, ModelDeployment, ModelStatus

log = logging.getLogger(__name__)
APPLY_TIMEOUT_S = 120.0
REGISTRY_RETRY_FIRST_S = 2.0
REGISTRY_RETRY_MAX_S = 30.0


class ControlPlane:
    """Follows the control topic on its own thread and hands applied model sets to the app.

    ``source`` (the MLflow registry by default), ``clock`` (monotonic seconds) and ``backoff``
    (the registry retry delays) are parameters so that a test can drive the retries.
    """

    def __init__(
        self,
        settings: Settings,
        metrics: Metrics,
        current: Callable[[], ModelSet],
        offer: Callable[[ModelSet], threading.Event],
        *,
        withdraw: Callable[[threading.Event], bool] = lambda _swapped: False,
        apply_timeout_s: float = APPLY_TIMEOUT_S,
        source: ModelSource | None = None,
        clock: Callable[[], float] = time.monotonic,
        backoff: Backoff | None = None,
    ) -> None:
        self.settings = settings
        self.metrics = metrics
        self._current = current
        self._offer = offer
        self._withdraw = withdraw
        self._apply_timeout_s = apply_timeout_s
        key = settings.model.control_hmac_key
        self._key = key.get_secret_value().encode() if key else None
        self._source = source or ModelRegistry(settings.mlflow.tracking_uri, settings.mlflow.cache_dir)
        self._clock = clock
        self._backoff = backoff or Backoff(REGISTRY_RETRY_FIRST_S, REGISTRY_RETRY_MAX_S)
        self._producer = Producer(idempotent_producer_config(settings))
        self._stop = threading.Event()
        self._reapply = threading.Event()
        self._last: ModelDeployment | None = None
        self._requested = 0
        # A deployment waiting for the registry to come back, and when to try it again.
        self._pending: ModelDeployment | None = None
        self._pending_force = False
        self._retry_at = 0.0
        self._thread = threading.Thread(target=self._run, name="heimdall-control", daemon=True)
        self.caught_up = threading.Event()

    def start(self) -> None:
        """Report the configured model, then follow the control topic."""
        self._publish_status(self._current(), ApplyState.APPLIED)
        self._thread.start()

    def stop(self) -> None:
        """Stop following; waits for an apply in progress."""
        self._stop.set()
        self._thread.join(APPLY_TIMEOUT_S)
        self._producer.flush(10)

    def request_reapply(self) -> None:
        """Re-apply the deployment in force, re-resolving aliases (SIGHUP)."""
        self._reapply.set()

    # ------------------------------------------------------------------ the thread

    def _run(self) -> None:
        consumer = Consumer(
            {
                **reader_config(self.settings, f"heimdall-control-{self.settings.instance_id}"),
                "enable.partition.eof": True,
            }
        )
        consumer.assign([TopicPartition(self.settings.kafka.control_topic, 0, OFFSET_BEGINNING)])
        newest: ModelDeployment | None = None
        try:
            while not self._stop.is_set():
                message = consumer.poll(0.5)
                if message is not None:
                    error = message.error()
                    if error is not None and error.code() == KafkaError._PARTITION_EOF:
                        if not self.caught_up.is_set():
                            self.caught_up.set()
                            if newest is not None:  # only the newest state matters at start-up
                                self._apply(newest)
                    elif error is None:
                        deployment = self._accept(message.value())
                        if deployment is not None:
                            if self.caught_up.is_set():
                                self._apply(deployment)
                            else:
                                newest = deployment
                self.retry_pending()
                if self._reapply.is_set():
                    self._reapply.clear()
                    if self._last is not None:
                        log.info("re-applying generation %d (aliases re-resolved)", self._last.generation)
                        self._apply(self._last, force=True)
                    else:
                        self._reload_configured()
        finally:
            consumer.close()

    def retry_pending(self) -> None:
        """Try the deployment that waits for the registry again, if its retry time has come."""
        if self._pending is not None and self._clock() >= self._retry_at:
            self._apply(self._pending, force=self._pending_force)

    def _accept(self, value: bytes | None) -> ModelDeployment | None:
        """Decode and verify a control message; count and report what is rejected."""
        applied = self._current().generation
        try:
            deployment = deployment_codec().decode(value or b"")
        except DecodeError as exc:
            self._reject(ControlMessageError(f"malformed control message: {exc}", reason="malformed"))
            return None
        self._requested = max(self._requested, deployment.generation)
        try:
            verify(deployment, self._key, self._current().model_name, applied)
        except ControlMessageError as exc:
            if exc.reason != "other_model":
                self._reject(exc)
            return None
        return deployment

    def _reject(self, error: ControlMessageError) -> None:
        self.metrics.control_rejections.labels(error.reason).inc()
        log.warning("control message rejected: %s", error)
        if self.caught_up.is_set():  # history replayed at start-up is not news
            self._publish_status(self._current(), ApplyState.REJECTED, f"rejected: {error}")

    def _apply(self, deployment: ModelDeployment, *, force: bool = False) -> None:
        previous = self._current()
        if self._pending is not None and deployment is not self._pending:
            if deployment.generation < self._pending.generation:
                return
            self._pending = None  # a newer (or re-applied) deployment supersedes the waiting one
        if not force and deployment.generation <= previous.generation:
            return
        try:
            model_set = self._load(deployment)
        except RegistryUnavailableError as exc:
            self._wait_for_registry(deployment, force, previous, exc)
            return
        except HeimdallError as exc:
            self._pending = None
            self.metrics.model_reloads.labels("failure").inc()
            log.error(
                "generation %d not applied, keeping %d: %s", deployment.generation, previous.generation, exc
            )
            self._publish_status(
                previous, ApplyState.REFUSED, f"generation {deployment.generation} not applied: {exc}"
            )
            return
        self._pending = None
        if not self._swapped_in_time(model_set):
            self._publish_status(
                previous,
                ApplyState.REFUSED,
                f"generation {deployment.generation} loaded but not swapped in time",
            )
            return
        self._last = deployment
        self.metrics.model_reloads.labels("success").inc()
        log.info(
            "applied generation %d: %s%s",
            deployment.generation,
            ", ".join(f"{m.version}={w:g}" for m, w in model_set.primaries),
            f" shadows {[m.version for m in model_set.shadows]}" if model_set.shadows else "",
        )
        self._publish_status(model_set, ApplyState.APPLIED)

    def _swapped_in_time(self, model_set: ModelSet) -> bool:
        """Offer ``model_set`` and wait for the stream loop to put it in force.

        On a timeout the offer is withdrawn: left behind, the loop would take it later and
        serve a set whose status already said it was not applied.  If the loop took it in the
        meantime, it is in force (or about to be) and counts as swapped.
        """
        swapped = self._offer(model_set)
        if swapped.wait(self._apply_timeout_s):
            return True
        if self._withdraw(swapped):
            return False
        return swapped.wait(self._apply_timeout_s)

    def _wait_for_registry(
        self, deployment: ModelDeployment, force: bool, previous: ModelSet, exc: RegistryUnavailableError
    ) -> None:
        """Keep the deployment pending and schedule the next attempt (status reported once)."""
        self.metrics.model_reloads.labels("failure").inc()
        first = self._pending is not deployment
        if first:
            self._pending, self._pending_force = deployment, force
            self._backoff.reset()
        delay = self._backoff.next_delay()
        self._retry_at = self._clock() + delay
        log.warning(
            "generation %d waits for the registry, keeping %d; retry in %.0f s: %s",
            deployment.generation,
            previous.generation,
            delay,
            exc,
        )
        if first:
            self._publish_status(
                previous,
                ApplyState.PENDING,
                f"generation {deployment.generation} waits for the registry (retrying): {exc}",
            )

    def _load(self, deployment: ModelDeployment) -> ModelSet:
        primaries = tuple((self._load_one(v.model_uri), v.weight) for v in deployment.versions)
        shadows = tuple(self._load_one(uri) for uri in deployment.shadow)
        return ModelSet(deployment.model_name, deployment.generation, primaries, shadows)

    def _load_one(self, uri: str) -> LoadedModel:
        # An alias may have moved since it was cached: applying the old resolution would report
        # a change that did not happen, so the control plane waits for the registry instead.
        model, _ = load_version(self._source, uri, self.settings, stale_alias_ok=False)
        return model

    def _reload_configured(self) -> None:
        """SIGHUP without any deployment: re-resolve the configured URI (e.g. a moved alias)."""
        current = self._current()
        try:
            model = self._load_one(self.settings.model.uri)
        except HeimdallError as exc:
            self.metrics.model_reloads.labels("failure").inc()
            self._publish_status(
                current, ApplyState.REFUSED, f"reload of {self.settings.model.uri} failed: {exc}"
            )
            return
        serving = current.primaries[0][0]
        if len(current.primaries) == 1 and (model.version, model.sha256) == (serving.version, serving.sha256):
            return
        if self._swapped_in_time(ModelSet.single(model, current.generation)):
            self.metrics.model_reloads.labels("success").inc()
            self._publish_status(self._current(), ApplyState.APPLIED)

    def _status_delivered(self, error: KafkaError | None, _message: object) -> None:
        if error is not None:  # operators would see a stale status: count it and say so
            self.metrics.kafka_errors.labels(error.name()).inc()
            log.warning("model status not delivered to %s: %s", self.settings.kafka.status_topic, error.str())

    def _publish_status(self, model_set: ModelSet, state: ApplyState, error: str | None = None) -> None:
        versions = tuple(
            LoadedVersion(m.uri, m.version, m.sha256, w, False) for m, w in model_set.primaries
        ) + tuple(LoadedVersion(m.uri, m.version, m.sha256, 0.0, True) for m in model_set.shadows)
        status = ModelStatus(
            instance_id=self.settings.instance_id,
            model_name=model_set.model_name,
            generation=model_set.generation,
            versions=versions,
            reported_at=datetime.now(UTC),
            error=error,
            requested_generation=max(self._requested, model_set.generation),
            state=state,
        )
        self._producer.produce(
            self.settings.kafka.status_topic,
            key=self.settings.instance_id.encode(),
            value=status_codec().encode(status),
            on_delivery=self._status_delivered,
        )
        self._producer.poll(0)
