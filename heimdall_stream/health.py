"""The HTTP endpoint of a consumer: ``/metrics`` (Prometheus), ``/healthz`` and ``/readyz``.

``/healthz`` answers 200 while the consume loop is turning (its heartbeat is recent): a failing
liveness probe means "restart me".  ``/readyz`` answers 200 once a model is loaded and warmed
up and the loop runs; its JSON body carries the detail (Redis degraded, model served from the
on-disk cache, assigned partitions), which never makes the instance unready by itself.
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest

HEARTBEAT_TIMEOUT_S = 30.0


class Health:
    """Liveness and readiness state, written by the app, read by the HTTP thread."""

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self._clock = clock
        self._lock = threading.Lock()
        self._heartbeat: float | None = None
        self._detail: dict[str, Any] = {"model_loaded": False}

    def beat(self) -> None:
        """The loop is alive."""
        with self._lock:
            self._heartbeat = self._clock()

    def update(self, **detail: Any) -> None:
        """Merge readiness detail (model, redis, partitions ...)."""
        with self._lock:
            self._detail.update(detail)

    def live(self) -> tuple[bool, dict[str, Any]]:
        """Whether the loop's heartbeat is recent."""
        with self._lock:
            beat = self._heartbeat
        age = None if beat is None else self._clock() - beat
        ok = age is None or age < HEARTBEAT_TIMEOUT_S  # not started yet counts as alive
        return ok, {"heartbeat_age_s": age}

    def ready(self) -> tuple[bool, dict[str, Any]]:
        """Whether this instance should receive traffic, and why (not)."""
        live, info = self.live()
        with self._lock:
            detail = dict(self._detail)
            started = self._heartbeat is not None
        ok = live and started and bool(detail.get("model_loaded"))
        return ok, {**detail, **info, "loop_started": started}


def serve(host: str, port: int, registry: CollectorRegistry, health: Health) -> ThreadingHTTPServer:
    """Start the endpoint on a daemon thread; returns the server (``server_address`` has the port)."""

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            path = self.path.split("?", 1)[0]
            if path == "/metrics":
                self._send(200, generate_latest(registry), CONTENT_TYPE_LATEST)
            elif path in ("/healthz", "/readyz"):
                ok, body = health.live() if path == "/healthz" else health.ready()
                payload = json.dumps({"ok": ok, **body}, default=str).encode()
                self._send(200 if ok else 503, payload, "application/json")
            else:
                self._send(404, b"not found\n", "text/plain")

        def _send(self, status: int, body: bytes, content_type: str) -> None:
            self.send_response(status)
            self.send_header("Content-Type", content_type)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, format: str, *args: Any) -> None:
            return  # scrapes every few seconds must not flood the log

    server = ThreadingHTTPServer((host, port), Handler)
    server.daemon_threads = True
    threading.Thread(target=server.serve_forever, name="heimdall-http", daemon=True).start()
    return server
