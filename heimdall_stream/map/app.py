"""The map's web app (Starlette): the page, its settings, the results stream and /healthz.

* ``/`` the page; ``/static/...`` its script, style, Leaflet and the offline basemap, all shipped
  in the package (nothing is fetched from the internet at run time, except tiles when a tile URL
  is configured);
* ``/config.json`` what the page needs at start: tile URL, how many results to keep, the receivers
  as GeoJSON;
* ``/events`` server-sent events: each ``results`` event carries up to ``EVENT_BATCH`` results in
  order, its ``id`` the feed's epoch and the last one's sequence number (``<epoch>-<seq>``), so a
  browser that reconnects (it sends ``Last-Event-ID``) resumes where it stopped; after a restart
  of the map the epoch differs and it gets the new buffer from its start, since the numbers
  began again; a new page first gets what the buffer holds;
* ``/healthz`` 200 while the consumer thread runs, 503 with the reason when it stopped;
* ``/metrics`` the map's Prometheus series (``map/metrics.py``).
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import FileResponse, JSONResponse, Response, StreamingResponse
from starlette.routing import Mount, Route
from starlette.staticfiles import StaticFiles

from heimdall_stream.geojson import feature_collection, receiver_features
from heimdall_stream.map.feed import ResultFeed
from heimdall_stream.map.metrics import StreamStats, map_registry
from heimdall_stream.network import Network

STATIC = Path(str(resources.files("heimdall_stream").joinpath("map", "static")))
EVENT_BATCH = 500  # results per event: a new page's backlog arrives in pieces the page draws at once
POLL_S = 0.25  # how often a stream looks for new results
HEARTBEAT_S = 15.0  # a comment line that keeps proxies from closing an idle stream


@dataclass(frozen=True)
class PageConfig:
    """What the page is told at start."""

    tile_url: str
    tile_attribution: str
    keep: int
    network: Network
    topic: str


def create_app(feed: ResultFeed, page: PageConfig, *, manage_feed: bool = True) -> Starlette:
    """The app; with ``manage_feed`` its lifespan starts and stops the feed."""
    streams = StreamStats()
    registry = map_registry(feed, streams)

    @asynccontextmanager
    async def lifespan(_: Starlette) -> AsyncIterator[None]:
        if manage_feed:
            feed.start()
        try:
            yield
        finally:
            if manage_feed:
                await asyncio.to_thread(feed.stop)

    async def index(_: Request) -> Response:
        return FileResponse(STATIC / "index.html", headers={"Cache-Control": "no-cache"})

    async def config(_: Request) -> Response:
        return JSONResponse(
            {
                "tile_url": page.tile_url,
                "tile_attribution": page.tile_attribution,
                "keep": page.keep,
                "topic": page.topic,
                "network": page.network.name,
                "receivers": feature_collection(receiver_features(page.network)),
            }
        )

    async def healthz(_: Request) -> Response:
        ok, detail = feed.healthy()
        return JSONResponse(detail, status_code=200 if ok else 503)

    async def metrics(_: Request) -> Response:
        return Response(generate_latest(registry), media_type=CONTENT_TYPE_LATEST)

    async def events(request: Request) -> Response:
        start = request.headers.get("last-event-id") or request.query_params.get("since") or "0"
        try:
            seq = resume_after(start, feed.epoch)
        except ValueError:
            return JSONResponse({"error": f"not an event id: {start!r}"}, status_code=400)
        return StreamingResponse(
            _stream(feed, seq, streams),
            media_type="text/event-stream",
            headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"},
        )

    return Starlette(
        routes=[
            Route("/", index),
            Route("/config.json", config),
            Route("/events", events),
            Route("/healthz", healthz),
            Route("/metrics", metrics),
            Mount("/static", StaticFiles(directory=STATIC), name="static"),
        ],
        lifespan=lifespan,
    )


def resume_after(last_id: str, epoch: str) -> int:
    """The sequence number a stream resumes after, from ``Last-Event-ID`` (or ``?since=``).

    ``<epoch>-<seq>`` of this feed: ``seq``; of another epoch (the map restarted, its numbers
    began again): 0, the whole buffer; a bare number: that number.  Anything else: ValueError.
    """
    given_epoch, _, number = last_id.rpartition("-")
    if given_epoch and given_epoch != epoch:
        int(number)  # still an id of ours, just an older process's
        return 0
    return max(int(number), 0)


async def _stream(feed: ResultFeed, seq: int, streams: StreamStats | None = None) -> AsyncIterator[str]:
    """Server-sent events from result ``seq`` + 1 on; ends when the client goes away."""
    streams = streams or StreamStats()
    streams.open += 1
    try:
        yield "retry: 2000\n\n"  # reconnect after 2 s
        beat = time.monotonic()
        while True:
            items, skipped = feed.since(seq, EVENT_BATCH)
            if items:
                seq = items[-1]["seq"]
                streams.skipped += skipped
                # "now": the server's clock, so the page tells ages right even if its own is off
                payload = {"results": items, "skipped": skipped, "now": time.time()}
                data = json.dumps(payload, separators=(",", ":"))
                yield f"id: {feed.epoch}-{seq}\nevent: results\ndata: {data}\n\n"
                beat = time.monotonic()
                if len(items) == EVENT_BATCH:
                    continue  # more is waiting: send it without sleeping
            elif time.monotonic() - beat > HEARTBEAT_S:
                yield ": heartbeat\n\n"
                beat = time.monotonic()
            await asyncio.sleep(POLL_S)
    finally:
        streams.open -= 1
