"""Start-up of ``heimdall-stream run``: settings → model → store → metrics → the loop (+ predict API).

Fails fast, with one clear message, when Kafka is unreachable or refuses the credentials,
when a topic it needs is missing, when no model can be had (neither from MLflow nor from the
on-disk cache), or when Redis refuses the password.  An unreachable Redis is not fatal: the
consumer starts degraded.
"""

from __future__ import annotations

import gc
import logging
import signal
import threading
from collections.abc import Callable
from functools import partial
from types import FrameType
from typing import TYPE_CHECKING

import redis
from prometheus_client import CollectorRegistry

from heimdall_stream.clients import check_connectivity, check_topics
from heimdall_stream.config import Settings
from heimdall_stream.control.runtime import ControlPlane
from heimdall_stream.errors import ConfigurationError
from heimdall_stream.health import Health, serve
from heimdall_stream.join.stage import JoiningProcessor, JoinStage
from heimdall_stream.metrics import Metrics
from heimdall_stream.models.inference import LoadedModel
from heimdall_stream.models.loading import load_version
from heimdall_stream.models.registry import ModelRegistry
from heimdall_stream.models.routing import ModelSet
from heimdall_stream.processing.cache import ResultCache
from heimdall_stream.processing.dedup import Deduplicator
from heimdall_stream.processing.processor import BatchProcessor
from heimdall_stream.processing.store import RedisStore
from heimdall_stream.stream.allocator import tune_malloc
from heimdall_stream.stream.app import StreamApp
from heimdall_stream.stream.delivery import next_offsets
from heimdall_stream.stream.swap import ModelSwap

if TYPE_CHECKING:
    from heimdall_stream.api.server import ApiServer

log = logging.getLogger(__name__)


class ConsumerService:
    """One consumer instance: its metrics endpoint, model, store and loop."""

    def __init__(self, settings: Settings, registry: CollectorRegistry | None = None) -> None:
        self.settings = settings
        self.registry = registry or CollectorRegistry()
        self.metrics = Metrics(self.registry)
        self.health = Health()
        self._server = serve(settings.metrics.host, settings.metrics.port, self.registry, self.health)
        self.port = int(self._server.server_address[1])
        self.control: ControlPlane | None = None
        self.api: ApiServer | None = None
        log.info("metrics, /healthz and /readyz on port %d", self.port)

    def run(self, stop: threading.Event, on_started: Callable[[], object] | None = None) -> None:
        """Connect, load the model, and consume until ``stop`` is set.

        ``on_started`` runs once everything is built, just before the loop starts.
        """
        control: ControlPlane | None = None
        api: ApiServer | None = None
        try:
            check_topics(self.settings, check_connectivity(self.settings))
            model = self.load_model()
            store = self._store()
            models = ModelSwap(ModelSet.single(model))
            join = None
            if self.settings.join.enabled:
                join = JoinStage(self.settings, self.metrics, next_offsets)
            app = StreamApp(
                self.settings,
                self.processor(models, store, join),
                models,
                self.metrics,
                self.health,
                store_healthy=lambda: store.healthy,
                join=join,
            )
            if self.settings.model.control_enabled:
                control = ControlPlane(
                    self.settings, self.metrics, models.current, models.offer, withdraw=models.withdraw
                )
                control.start()
                self.control = control
            if self.settings.api.enabled:
                api = self.api = self._start_api(models, store)
            if on_started is not None:
                on_started()
            app.run(stop)
        finally:
            if api is not None:
                api.stop()
            if control is not None:
                control.stop()
            self._server.shutdown()
            self._server.server_close()

    def processor(
        self, models: ModelSwap, store: RedisStore, join: JoinStage | None = None
    ) -> BatchProcessor:
        """The batch path of this instance, on the given model sets and store (and join)."""
        settings = self.settings
        return (BatchProcessor if join is None else partial(JoiningProcessor, join))(
            models.current,
            Deduplicator(store, settings.redis.recent_ids, self.metrics),
            ResultCache(store),
            self.metrics,
            limits=settings.limits,
            confidence=settings.model.confidence,
            batch_prefix=settings.instance_id,
        )

    def _start_api(self, models: ModelSwap, store: RedisStore) -> ApiServer:
        """The predict API beside the loop: the same model set and store, threads of its own."""
        from heimdall_stream.api.server import ApiServer  # uvicorn is imported only when enabled

        api = ApiServer(self.settings, models.current, store, self.metrics, self.registry)
        api.start()
        return api

    def request_reapply(self) -> None:
        """Re-apply the deployment in force and re-resolve aliases (SIGHUP)."""
        if self.control is not None:
            self.control.request_reapply()

    def load_model(self) -> LoadedModel:
        """Fetch (or take from the cache) and load the configured model."""
        settings, metrics = self.settings, self.metrics
        registry = ModelRegistry(settings.mlflow.tracking_uri, settings.mlflow.cache_dir)
        try:
            model, fetched = load_version(registry, settings.model.uri, settings)
        except Exception:
            metrics.model_reloads.labels("failure").inc()
            raise
        metrics.model_reloads.labels("success").inc()
        metrics.model_from_cache.set(1 if fetched.from_cache else 0)
        self.health.update(model_from_cache=fetched.from_cache)
        if fetched.from_cache:
            log.warning("MLflow unreachable: serving %s from the on-disk cache", model.label)
        log.info("loaded %s (sha256 %s, %s input)", model.label, model.sha256[:12], model.contract.input_kind)
        return model

    def _store(self) -> RedisStore:
        store = RedisStore(self.settings.redis, self.metrics)
        try:
            if not store.check():
                log.warning(
                    "Redis unreachable at start (%s): running without dedup and cache", store.last_error
                )
        except redis.AuthenticationError as exc:
            raise ConfigurationError(f"Redis refused the credentials: {exc}") from exc
        return store


def run_service(settings: Settings) -> None:
    """Run the consumer in the main thread until SIGTERM or SIGINT."""
    stop = threading.Event()

    def on_signal(signum: int, _frame: FrameType | None) -> None:
        log.info("received %s: finishing the current batch", signal.Signals(signum).name)
        stop.set()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    # Before any thread, client or model exists: it only governs later allocations.
    tune_malloc(settings.memory.malloc_arena_max, settings.memory.malloc_mmap_threshold_kbytes)
    service = ConsumerService(settings)
    signal.signal(signal.SIGHUP, lambda _signum, _frame: service.request_reapply())
    service.run(stop, on_started=_freeze_start_up)


def _freeze_start_up() -> None:
    """Keep what start-up built (modules, the model, clients) out of the collector's walks.

    It lives as long as the process, so a full collection need walk only what batches
    allocate.  Only here, where the process is the consumer: frozen objects are never
    collected, so a consumer started inside another program (a test runner) would leave its
    reference cycles (clients and their callbacks) behind when it stops.
    """
    gc.collect()
    gc.freeze()
