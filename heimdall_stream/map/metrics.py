"""The map's Prometheus series, read from its feed and streams when scraped (``/metrics``).

The map is a consumer of the results topic like any other, so it is scraped like one: whether
its feed is consuming, what it consumed or could not read, and how its browsers keep up.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

from prometheus_client import CollectorRegistry
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from heimdall_stream.map.feed import ResultFeed


@dataclass
class StreamStats:
    """The event streams' own figures (updated on the serving loop only)."""

    open: int = 0
    skipped: int = 0  # results a slow browser missed because the buffer had moved on


class MapCollector(Collector):
    """Turns the feed's and the streams' figures into series at scrape time."""

    def __init__(self, feed: ResultFeed, streams: StreamStats) -> None:
        self._feed = feed
        self._streams = streams

    def collect(self) -> Iterator[Metric]:
        """The map's series, as of now."""
        alive, detail = self._feed.healthy()
        yield GaugeMetricFamily("heimdall_map_feed_up", "1 while the map's consumer runs.", value=int(alive))
        yield CounterMetricFamily(
            "heimdall_map_results_consumed",
            "Results read from the topic and shown.",
            value=detail["consumed"],
        )
        yield CounterMetricFamily(
            "heimdall_map_results_unreadable",
            "Results skipped: not decodable, or GeoJSON that is not what it says.",
            value=detail["undecodable"],
        )
        yield GaugeMetricFamily(
            "heimdall_map_partitions_assigned",
            "Partitions of the results topic read.",
            value=detail["partitions"],
        )
        yield GaugeMetricFamily(
            "heimdall_map_buffered_results", "Results held for new pages.", value=detail["buffered"]
        )
        yield GaugeMetricFamily("heimdall_map_event_streams", "Browsers connected.", value=self._streams.open)
        yield CounterMetricFamily(
            "heimdall_map_results_skipped_for_slow_pages",
            "Results a browser missed because it fell more than the buffer behind.",
            value=self._streams.skipped,
        )


def map_registry(feed: ResultFeed, streams: StreamStats) -> CollectorRegistry:
    """A registry of the map's series alone (no process defaults of another command mixed in)."""
    registry = CollectorRegistry()
    registry.register(MapCollector(feed, streams))
    return registry
