"""``heimdall-stream map``: the command line of the live map (registered by ``cli``)."""

from __future__ import annotations

import re
from datetime import UTC, datetime, timedelta
from pathlib import Path

import click

from heimdall_stream.console.settings_doc import GENERAL, SettingsCommand
from heimdall_stream.errors import ConfigurationError

_AGO = re.compile(r"^(\d+(?:\.\d+)?)\s*([smhd])$")
_UNIT_S = {"s": 1, "m": 60, "h": 3600, "d": 86400}


def parse_start(text: str | None, now: datetime | None = None) -> datetime | None:
    """``--from``: None (from now), a duration ago (``90s``, ``15m``, ``2h``, ``1d``) or an ISO time.

    A time without a zone is UTC.
    """
    if text is None or text.strip().lower() == "now":
        return None
    now = now or datetime.now(UTC)
    ago = _AGO.match(text.strip().lower())
    if ago:
        return now - timedelta(seconds=float(ago.group(1)) * _UNIT_S[ago.group(2)])
    try:
        when = datetime.fromisoformat(text.strip())
    except ValueError:
        raise ConfigurationError(
            f"--from {text!r} is neither a duration (e.g. 15m, 2h) nor an ISO 8601 time"
        ) from None
    return when if when.tzinfo is not None else when.replace(tzinfo=UTC)


@click.command("map", cls=SettingsCommand, reads=(GENERAL, "kafka", "map"))
@click.option(
    "--from",
    "start",
    default=None,
    help="Show results from this time on: ISO 8601 (UTC unless it says) or a duration ago (15m, 2h). "
    "Default: from now.",
)
@click.option("--host", default=None, help="Address to listen on (default HEIMDALL_MAP__HOST: 127.0.0.1).")
@click.option("--port", type=int, default=None, help="Port (default HEIMDALL_MAP__PORT: 8765; 0 = any).")
@click.option("--tile-url", default=None, help="XYZ tile URL template (default HEIMDALL_MAP__TILE_URL).")
@click.option(
    "--network",
    "network_path",
    type=click.Path(path_type=Path, exists=True, dir_okay=False),
    help="Receiver network JSON (default: the shipped north-west Italy network).",
)
@click.option(
    "--truth",
    "truth_path",
    type=click.Path(path_type=Path, dir_okay=False),
    help="JSON lines of true positions (simulate --truth): the popup then shows the error.",
)
def map_command(  # noqa: PLR0917 (click passes every option by keyword)
    start: str | None,
    host: str | None,
    port: int | None,
    tile_url: str | None,
    network_path: Path | None,
    truth_path: Path | None,
) -> None:
    """Serve a live map of the results in the browser (receivers, estimates, ellipses)."""
    from heimdall_stream.clients import check_connectivity
    from heimdall_stream.config import load_settings
    from heimdall_stream.logs import setup_logging
    from heimdall_stream.map.server import bind, run_map, url_of
    from heimdall_stream.network import load_network

    settings = load_settings()
    setup_logging(settings.log_level, settings.log_format)
    start_at = parse_start(start)
    overrides = {k: v for k, v in {"host": host, "port": port, "tile_url": tile_url}.items() if v is not None}
    if overrides:
        settings = settings.model_copy(update={"map": settings.map.model_copy(update=overrides)})
    network = load_network(network_path)
    topic = settings.kafka.output_topic
    if topic not in check_connectivity(settings):
        raise ConfigurationError(
            f"topic {topic} does not exist on {settings.kafka.bootstrap_servers}; "
            "create it with `heimdall-stream topics`"
        )
    sock = bind(settings.map.host, settings.map.port)
    click.echo(f"map: {url_of(sock)}", err=False)
    run_map(settings, network, start_at=start_at, truth_path=truth_path, sock=sock)
