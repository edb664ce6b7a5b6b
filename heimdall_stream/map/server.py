"""Run the map: the results feed, the web app and uvicorn, until SIGTERM or SIGINT."""

from __future__ import annotations

import contextlib
import logging
import signal
import socket
from collections.abc import Iterator
from datetime import datetime
from pathlib import Path

import uvicorn

from heimdall_stream.config import Settings
from heimdall_stream.errors import ConfigurationError
from heimdall_stream.map.app import PageConfig, create_app
from heimdall_stream.map.feed import ResultFeed
from heimdall_stream.map.truth import TruthFile
from heimdall_stream.network import Network

log = logging.getLogger(__name__)
SHUTDOWN_S = 2  # open event streams never end by themselves: cut them after this long


class _Server(uvicorn.Server):
    """uvicorn's server, ending on SIGTERM/SIGINT with exit code 0 like the other commands.

    uvicorn raises the signal again once it has shut down, so the process would end as killed
    by it (-15); a map stopped on purpose has not failed.
    """

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        """Stop gracefully on SIGTERM and SIGINT; restore the previous handlers afterwards."""
        previous = {sig: signal.signal(sig, self.handle_exit) for sig in (signal.SIGINT, signal.SIGTERM)}
        try:
            yield
        finally:
            for sig, handler in previous.items():
                signal.signal(sig, handler)


def bind(host: str, port: int) -> socket.socket:
    """A listening socket (port 0 = any free port), or a ``ConfigurationError`` saying why not."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
    except OSError as exc:
        sock.close()
        raise ConfigurationError(f"the map cannot listen on {host}:{port}: {exc.strerror}") from None
    sock.listen(128)
    sock.set_inheritable(True)
    return sock


def url_of(sock: socket.socket) -> str:
    """The page's URL for a bound socket (a wildcard address is shown as localhost)."""
    host, port = sock.getsockname()[:2]
    shown = "localhost" if host in ("0.0.0.0", "::") else host
    return f"http://{shown if ':' not in shown else f'[{shown}]'}:{port}/"


def run_map(
    settings: Settings,
    network: Network,
    *,
    start_at: datetime | None,
    truth_path: Path | None,
    sock: socket.socket,
) -> None:
    """Serve the map on ``sock`` until a signal stops uvicorn; the feed stops with it."""
    group = f"{settings.map.group_id_prefix}-{settings.instance_id}"
    feed = ResultFeed(
        {**settings.kafka.client_config(), "group.id": group},
        settings.kafka.output_topic,
        keep=settings.map.keep,
        start_at=start_at,
        truth=TruthFile(truth_path) if truth_path is not None else None,
    )
    page = PageConfig(
        tile_url=settings.map.tile_url,
        tile_attribution=settings.map.tile_attribution,
        keep=settings.map.keep,
        network=network,
        topic=settings.kafka.output_topic,
    )
    config = uvicorn.Config(
        create_app(feed, page),
        log_level="warning",
        timeout_graceful_shutdown=SHUTDOWN_S,
        lifespan="on",
    )
    log.info(
        "map of %s (group %s, from %s) at %s",
        settings.kafka.output_topic,
        group,
        start_at.isoformat() if start_at else "now",
        url_of(sock),
    )
    _Server(config).run(sockets=[sock])
