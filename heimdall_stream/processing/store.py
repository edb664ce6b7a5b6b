"""The dedup-mark and result-cache store: Redis in production, memory in tests, one protocol.

Redis is an optimisation here, never a dependency of correctness: when a command fails, the
store goes *degraded* (dedup and cache are skipped, a metric and ``/readyz`` say so) and probes
Redis again after ``retry_interval_s``, backing off (doubling, with jitter) up to four times
that while the outage lasts; when Redis answers, it recovers by itself.  The Redis store notices
a restart by the server's ``run_id``, read on every new connection (redis-py reconnects silently
after a restart), and counts it, because every mark written before it is gone.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any, Protocol

import redis
from redis.backoff import NoBackoff
from redis.retry import Retry

from heimdall_stream.config import RedisSettings
from heimdall_stream.metrics import Metrics
from heimdall_stream.retry import Backoff

Clock = Callable[[], float]
DONE = b"1"  # the mark of a committed capture (``dedup`` also writes pending marks)
log = logging.getLogger(__name__)


class Store(Protocol):
    """What the consumer needs from a dedup + cache store."""

    @property
    def healthy(self) -> bool:
        """False while the store is unreachable and being skipped."""

    def filter_done(self, capture_ids: Sequence[str], own: Mapping[str, bytes] | None = None) -> set[str]:
        """The ids among ``capture_ids`` already marked, except those whose mark is ``own[id]``."""

    def mark_done(self, capture_ids: Sequence[str], values: Mapping[str, bytes] | None = None) -> None:
        """Mark ids (done: ``b"1"``; or the value ``values`` gives, e.g. a pending mark)."""

    def get_many(self, keys: Sequence[str]) -> dict[str, bytes]:
        """Cached values of the keys that are present."""

    def put_many(self, items: Mapping[str, bytes]) -> None:
        """Cache values."""


class InMemoryStore:
    """A process-local store with Redis's TTL semantics: the store of unit tests and benchmarks."""

    def __init__(
        self, dedup_ttl_s: float = 86_400, cache_ttl_s: float = 3_600, clock: Clock = time.monotonic
    ):
        self._done: dict[str, float] = {}
        self._values: dict[str, bytes] = {}
        self._cache: dict[str, tuple[float, bytes]] = {}
        self._dedup_ttl, self._cache_ttl, self._clock = dedup_ttl_s, cache_ttl_s, clock

    @property
    def healthy(self) -> bool:
        """Always reachable."""
        return True

    def filter_done(self, capture_ids: Sequence[str], own: Mapping[str, bytes] | None = None) -> set[str]:
        """Ids marked and not yet expired, except those whose mark is ``own[id]``."""
        now, own = self._clock(), own or {}
        return {i for i in capture_ids if self._done.get(i, -1.0) > now and self._values.get(i) != own.get(i)}

    def mark_done(self, capture_ids: Sequence[str], values: Mapping[str, bytes] | None = None) -> None:
        """Mark ids for the dedup TTL (``b"1"``, or the value ``values`` gives)."""
        expiry = self._clock() + self._dedup_ttl
        self._done.update(dict.fromkeys(capture_ids, expiry))
        self._values.update({i: (values or {}).get(i, DONE) for i in capture_ids})

    def get_many(self, keys: Sequence[str]) -> dict[str, bytes]:
        """Unexpired cached values."""
        now = self._clock()
        found = {}
        for key in keys:
            entry = self._cache.get(key)
            if entry is not None and entry[0] > now:
                found[key] = entry[1]
        return found

    def put_many(self, items: Mapping[str, bytes]) -> None:
        """Cache values for the cache TTL."""
        expiry = self._clock() + self._cache_ttl
        self._cache.update({k: (expiry, v) for k, v in items.items()})


class RedisStore:
    """Dedup marks and cache entries in Redis, degrading to 'off' while Redis is unreachable."""

    def __init__(self, settings: RedisSettings, metrics: Metrics, clock: Clock = time.monotonic) -> None:
        password = settings.password.get_secret_value() if settings.password else None
        tls: dict[str, str] = {"ssl_ca_certs": settings.ssl_ca_certs} if settings.ssl_ca_certs else {}
        self._client = redis.Redis.from_url(
            settings.url,
            password=password,
            **tls,
            socket_timeout=settings.socket_timeout_s,
            socket_connect_timeout=settings.socket_timeout_s,
            # redis-py retries with seconds of backoff by default; here a failed command must
            # fail fast, because the store then degrades and probes on its own schedule.
            retry=Retry(NoBackoff(), retries=0),
            retry_on_timeout=False,
            redis_connect_func=self._on_connect,
        )
        self._prefix = settings.key_prefix
        self._dedup_ttl_ms = settings.dedup_ttl_s * 1000
        self._cache_ttl_ms = settings.cache_ttl_s * 1000
        self._probe_backoff = Backoff(settings.retry_interval_s, settings.retry_interval_s * 4)
        self._metrics = metrics
        self._clock = clock
        self._healthy = True
        self._retry_at = 0.0
        self._run_id: str | None = None
        self.last_error: str | None = None
        metrics.redis_up.set(1)

    @property
    def healthy(self) -> bool:
        """False while Redis is being skipped."""
        return self._healthy

    def check(self) -> bool:
        """PING now (used at start-up and by the degraded-mode probe)."""
        try:
            self._client.ping()
        except redis.AuthenticationError:
            raise  # a subclass of ConnectionError in redis-py: wrong credentials are not an outage
        except (redis.ConnectionError, redis.TimeoutError) as exc:
            self._fail(exc)
            return False
        self._recover()
        return True

    def filter_done(self, capture_ids: Sequence[str], own: Mapping[str, bytes] | None = None) -> set[str]:
        """Ids with a mark, except those whose mark is ``own[id]``; none while degraded."""
        if not capture_ids or not self._usable():
            return set()
        try:
            marks = self._client.mget([f"{self._prefix}done:{cid}" for cid in capture_ids])
        except redis.RedisError as exc:
            self._fail(exc)
            return set()
        own = own or {}
        return {
            cid
            for cid, mark in zip(capture_ids, marks, strict=True)
            if mark is not None and mark != own.get(cid)
        }

    def mark_done(self, capture_ids: Sequence[str], values: Mapping[str, bytes] | None = None) -> None:
        """SET marks with the dedup TTL (``b"1"``, or the value ``values`` gives); skipped while degraded."""
        if not capture_ids or not self._usable():
            return
        try:
            pipe = self._client.pipeline(transaction=False)
            for cid in capture_ids:
                pipe.set(f"{self._prefix}done:{cid}", (values or {}).get(cid, DONE), px=self._dedup_ttl_ms)
            pipe.execute()
        except redis.RedisError as exc:
            self._fail(exc)

    def get_many(self, keys: Sequence[str]) -> dict[str, bytes]:
        """MGET cache entries; empty while degraded."""
        if not keys or not self._usable():
            return {}
        try:
            values = self._client.mget([f"{self._prefix}cache:{k}" for k in keys])
        except redis.RedisError as exc:
            self._fail(exc)
            return {}
        return {k: v for k, v in zip(keys, values, strict=True) if isinstance(v, bytes)}

    def put_many(self, items: Mapping[str, bytes]) -> None:
        """SET cache entries with the cache TTL; skipped while degraded."""
        if not items or not self._usable():
            return
        try:
            pipe = self._client.pipeline(transaction=False)
            for key, value in items.items():
                pipe.set(f"{self._prefix}cache:{key}", value, px=self._cache_ttl_ms)
            pipe.execute()
        except redis.RedisError as exc:
            self._fail(exc)

    def close(self) -> None:
        """Release the connection pool."""
        self._client.close()

    def _usable(self) -> bool:
        if self._healthy:
            return True
        if self._clock() < self._retry_at:
            return False
        try:
            return self.check()
        except redis.AuthenticationError as exc:  # password changed under a running consumer
            self._fail(exc)
            return False

    def _fail(self, exc: Exception) -> None:
        self._metrics.redis_errors.inc()
        self.last_error = f"{type(exc).__name__}: {exc}"
        self._retry_at = self._clock() + self._probe_backoff.next_delay()
        if self._healthy:
            self._healthy = False
            self._metrics.redis_up.set(0)

    def _on_connect(self, connection: Any) -> None:
        """redis-py's connect hook: authenticate as usual, then read the server's run_id."""
        connection.on_connect()
        try:
            connection.send_command("INFO", "server")
            info = connection.read_response()
        except redis.ResponseError as exc:  # INFO renamed or refused (some managed Redis)
            if self._run_id is None:
                log.warning("Redis refused INFO (%s): restarts cannot be noticed", exc)
                self._run_id = ""
            return
        text = info.decode() if isinstance(info, bytes) else str(info)
        run_id = next((line[7:].strip() for line in text.splitlines() if line.startswith("run_id:")), "")
        self._note_run_id(run_id)

    def _note_run_id(self, run_id: str) -> None:
        # A new run_id is a new server process: without persistence, every mark is gone.
        if self._run_id is not None and run_id and run_id != self._run_id:
            self._metrics.redis_restarts.inc()
            log.warning(
                "Redis restarted (run_id %s… → %s…): dedup marks written before may be lost; "
                "repeats of recent captures are still caught in memory",
                self._run_id[:8],
                run_id[:8],
            )
        self._run_id = run_id or self._run_id

    def _recover(self) -> None:
        self._probe_backoff.reset()
        if not self._healthy:
            self._healthy = True
            self.last_error = None
            self._metrics.redis_up.set(1)
