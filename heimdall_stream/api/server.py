"""The predict API's server: uvicorn on a thread and event loop of its own, scoring on its own pool.

Nothing here runs on the stream's consume loop or its workers: requests are read and answered on
the ``heimdall-api`` thread's event loop, and batches are scored on ``api.workers`` threads of
their own (numpy's FFTs and onnxruntime release the GIL, so they use the cores beside the
stream's workers).  The socket is bound in ``start``, so a port already taken stops the instance
at start-up with one clear error, and port 0 picks a free one (``port`` says which).
"""

from __future__ import annotations

import logging
import socket
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor

import uvicorn
from prometheus_client import CollectorRegistry

from heimdall_stream.api.app import PredictApi
from heimdall_stream.api.batcher import RequestBatcher
from heimdall_stream.api.metrics import ApiMetrics
from heimdall_stream.api.scoring import Scorer
from heimdall_stream.config import Settings
from heimdall_stream.errors import ConfigurationError
from heimdall_stream.metrics import Metrics
from heimdall_stream.models.routing import ModelSet
from heimdall_stream.processing.store import Store

log = logging.getLogger(__name__)


class ApiServer:
    """The predict API of one instance, over the stream's model set, store and metrics registry."""

    def __init__(
        self,
        settings: Settings,
        models: Callable[[], ModelSet],
        store: Store,
        metrics: Metrics,
        registry: CollectorRegistry,
    ) -> None:
        self.settings = settings
        self.registry = registry
        api = settings.api
        self.metrics = ApiMetrics(registry)
        self.scorer = Scorer(models, store, metrics, settings)
        self.executor = ThreadPoolExecutor(api.workers, thread_name_prefix="heimdall-api-worker")
        self.api = PredictApi(self.scorer, self._batcher, api, self.metrics)
        self._server: uvicorn.Server | None = None
        self._thread: threading.Thread | None = None
        self.port = 0

    def _batcher(self) -> RequestBatcher:
        api = self.settings.api
        return RequestBatcher(
            self.scorer.score,
            self.executor,
            self.metrics,
            max_batch_size=api.max_batch_size,
            max_wait_s=api.max_wait_ms / 1000.0,
            max_queue=api.max_queue,
            workers=api.workers,
        )

    def start(self, timeout: float = 60.0) -> None:
        """Bind the port and serve on a daemon thread; return once requests are accepted."""
        api = self.settings.api
        family = socket.AF_INET6 if ":" in api.host else socket.AF_INET
        sock = socket.socket(family, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((api.host, api.port))
        except OSError as exc:
            sock.close()
            raise ConfigurationError(f"predict API cannot listen on {api.host}:{api.port}: {exc}") from exc
        sock.listen(2048)
        self.port = int(sock.getsockname()[1])
        config = uvicorn.Config(
            self.api.app(),
            log_level="warning",
            access_log=False,
            lifespan="on",
            timeout_graceful_shutdown=5,
        )
        server = uvicorn.Server(config)
        self._server = server
        self._thread = threading.Thread(
            target=server.run, kwargs={"sockets": [sock]}, name="heimdall-api", daemon=True
        )
        self._thread.start()
        deadline = time.monotonic() + timeout
        while not server.started:
            if not self._thread.is_alive() or time.monotonic() > deadline:
                # The caller never gets a server to stop: stop the thread and free the port here.
                self.stop(timeout=5.0)
                sock.close()
                raise ConfigurationError(f"predict API on port {self.port} did not start")
            time.sleep(0.01)
        log.info("predict API on port %d", self.port)

    def stop(self, timeout: float = 30.0) -> None:
        """Stop accepting, answer what is being scored, fail what waits (503), join the threads."""
        if self._server is not None:
            self._server.should_exit = True
        if self._thread is not None:
            self._thread.join(timeout)
        self.executor.shutdown(wait=True, cancel_futures=True)
