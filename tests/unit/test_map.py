"""The live map's pure parts: the page's record of a result, truths, the buffer, --from, the stream."""

from __future__ import annotations

import asyncio
import dataclasses
import json
import warnings
from datetime import UTC, datetime, timedelta

import pytest
from prometheus_client.parser import text_string_to_metric_families

from heimdall_stream.errors import ConfigurationError
from heimdall_stream.geo import ellipse_from_covariance
from heimdall_stream.geojson import result_geojson
from heimdall_stream.map import app as map_app
from heimdall_stream.map.command import parse_start
from heimdall_stream.map.feed import ResultFeed
from heimdall_stream.map.truth import TruthFile
from heimdall_stream.map.view import result_view
from heimdall_stream.network import load_network
from heimdall_stream.wire.codec import localization_codec
from heimdall_stream.wire.messages import Covariance, Lineage, Localization, Timings

# starlette's TestClient announces a future move away from httpx; the server side does not use it.
with warnings.catch_warnings():
    warnings.simplefilter("ignore")
    from starlette.testclient import TestClient

WHEN = datetime(2026, 3, 1, 12, 0, tzinfo=UTC)


def _loc(capture_id: str = "c-1", *, old_geojson: bool = False) -> Localization:
    cov = Covariance(1000.0, 600.0, 0.2)
    ellipse = ellipse_from_covariance(cov, 0.95)
    geojson = result_geojson(
        45.0,
        7.5,
        ellipse,
        capture_id=capture_id,
        model_name="m",
        model_version="2",
        captured_at=WHEN,
        center_frequency_hz=433.5e6,
    )
    if old_geojson:  # the single ellipse Feature results carried before
        geojson = json.dumps({**json.loads(geojson)["features"][1], "properties": {"capture_id": capture_id}})
    return Localization(
        capture_id=capture_id,
        model_name="m",
        model_version="2",
        latitude=45.0,
        longitude=7.5,
        covariance=cov,
        ellipse=ellipse,
        geojson=geojson,
        receivers_used=("torino", "genova"),
        cache_hit=True,
        timings=Timings(1.0, 2.0, 55.55),
        lineage=Lineage(0, 1, "b", 1),
        produced_at=WHEN,
    )


def test_a_view_carries_what_the_popup_shows_and_the_error_against_a_truth():
    view = result_view(_loc(), 7, {"latitude": 45.01, "longitude": 7.5})
    assert view["seq"] == 7 and view["id"] == "c-1" and view["model"] == "m" and view["version"] == "2"
    assert view["time"] == WHEN.isoformat() and view["freq"] == 433.5e6
    assert view["latency_ms"] == pytest.approx(55.55, abs=0.06)
    assert view["error_m"] == pytest.approx(1111.0, rel=0.01)
    assert len(view["rings"]) == 1 and view["rings"][0][0] == view["rings"][0][-1]
    assert view["rx"] == ["torino", "genova"] and view["cache"] is True
    assert view["quality"] == 1.0  # a record without the field: fully trusted
    doubtful = result_view(dataclasses.replace(_loc(), quality=0.23456), 8)
    assert doubtful["quality"] == 0.235  # the page greys it (under 0.5)


def test_a_result_with_the_older_single_feature_geojson_is_still_drawn():
    view = result_view(_loc(old_geojson=True), 1)
    assert len(view["rings"]) == 1 and view["time"] is None and view["error_m"] is None


def test_the_truth_file_is_followed_as_it_grows_and_bad_lines_are_counted(tmp_path):
    path = tmp_path / "truth.jsonl"
    truth = TruthFile(path, limit=2)
    assert truth.get("a") is None  # not written yet: no truth, no error
    path.write_text(
        '{"capture_id": "a", "latitude": 45, "longitude": 7, "frequency_hz": 1}\nnot json\n{"capt'
    )
    assert truth.get("a") == {"latitude": 45.0, "longitude": 7.0, "frequency_hz": 1.0}
    with path.open("a") as handle:
        handle.write('ure_id": "b", "latitude": 1, "longitude": 2}\n')
        handle.write('{"capture_id": "c", "latitude": 3, "longitude": 4}\n')
    assert truth.get("b") == {"latitude": 1.0, "longitude": 2.0}
    assert truth.get("c") is not None and truth.get("a") is None  # only the newest `limit` are kept
    assert truth.bad_lines == 1


def _feed(keep: int) -> ResultFeed:
    return ResultFeed({"bootstrap.servers": "unused:1", "group.id": "g"}, "results", keep=keep)


def test_the_buffer_keeps_the_newest_and_a_reader_that_fell_behind_skips():
    feed = _feed(keep=3)
    for i in range(5):
        feed._add(localization_codec().encode(_loc(f"c-{i}")))
    feed._add(b"not avro")
    assert feed.last_seq == 5 and feed.stats.undecodable == 1 and feed.stats.consumed == 5
    items, skipped = feed.since(0, limit=10)
    assert [i["id"] for i in items] == ["c-2", "c-3", "c-4"] and skipped == 2
    items, skipped = feed.since(3, limit=1)
    assert [i["seq"] for i in items] == [4] and skipped == 0
    assert feed.since(5, limit=10) == ([], 0)


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        (None, None),
        ("now", None),
        ("15m", WHEN - timedelta(minutes=15)),
        ("2h", WHEN - timedelta(hours=2)),
        ("1.5d", WHEN - timedelta(hours=36)),
        ("2026-03-01T10:00:00", datetime(2026, 3, 1, 10, tzinfo=UTC)),
        ("2026-03-01T10:00:00+02:00", datetime(2026, 3, 1, 8, tzinfo=UTC)),
    ],
)
def test_from_accepts_now_a_duration_ago_or_an_iso_time(text, expected):
    assert parse_start(text, now=WHEN) == expected


def test_from_rejects_anything_else_with_a_clear_error():
    with pytest.raises(ConfigurationError, match="neither a duration"):
        parse_start("yesterday", now=WHEN)


def test_the_event_stream_sends_results_in_order_with_their_sequence_as_id():
    feed = _feed(keep=1000)
    for i in range(3):
        feed._add(localization_codec().encode(_loc(f"c-{i}")))

    async def first_events(count: int) -> list[str]:
        stream = map_app._stream(feed, 1)
        events = [await anext(stream) for _ in range(count)]
        await stream.aclose()
        return events

    retry, results = asyncio.run(first_events(2))
    assert retry.startswith("retry:")
    head, data = results.split("\ndata: ")
    assert head == f"id: {feed.epoch}-3\nevent: results"
    payload = json.loads(data)
    assert [r["id"] for r in payload["results"]] == ["c-1", "c-2"] and payload["skipped"] == 0
    assert payload["now"] > 0  # the server's clock: the page's ages do not depend on its own


def test_a_consumer_that_cannot_be_created_makes_the_feed_unhealthy_with_the_reason():
    from confluent_kafka import KafkaException

    def refuse(config):
        raise KafkaException('No such configuration property: "bogus"')

    feed = ResultFeed({"bogus": "1"}, "results", keep=10, consumer_factory=refuse).start()
    feed.stop()
    ok, detail = feed.healthy()
    assert not ok and "bogus" in detail["last_error"]


def test_results_with_malformed_geojson_or_a_nan_error_are_skipped_or_cleaned_never_fatal():
    import dataclasses

    feed = _feed(keep=10)
    for i, bad in enumerate(
        (
            "[]",
            '{"features": [1]}',
            '{"features": [{"properties": {"kind": "ellipse"}, '
            '"geometry": {"type": "Polygon", "coordinates": []}}]}',
        )
    ):
        feed._add(localization_codec().encode(dataclasses.replace(_loc(f"bad-{i}"), geojson=bad)))
    feed._add(localization_codec().encode(_loc("good")))
    items, _ = feed.since(0, limit=10)
    assert [i["id"] for i in items] == ["good"] and feed.stats.undecodable == 3
    # A truth that gives no finite distance is shown as no error, never NaN (JSON.parse refuses it).
    view = result_view(_loc(), 1, {"latitude": float("nan"), "longitude": 7.5})
    assert view["error_m"] is None
    json.dumps(view, allow_nan=False)


def test_a_browser_back_from_a_restarted_map_gets_its_whole_buffer_not_nothing():
    assert map_app.resume_after("0", "e1") == 0
    assert map_app.resume_after("e1-42", "e1") == 42
    assert map_app.resume_after("17", "e1") == 17  # ?since=17
    # Another process's numbering began again at 1: waiting for it to pass 5000 would show nothing.
    assert map_app.resume_after("e0-5000", "e1") == 0
    for bad in ("e1-x", "abc", ""):
        with pytest.raises(ValueError):
            map_app.resume_after(bad, "e1")


def test_a_failed_start_offset_lookup_shows_results_from_now_instead_of_stopping_the_feed():
    from confluent_kafka import OFFSET_END, KafkaException, TopicPartition

    class SlowBroker:
        def __init__(self) -> None:
            self.assigned: list[TopicPartition] = []

        def get_watermark_offsets(self, tp, timeout, cached):
            raise KafkaException("KafkaError{code=_TIMED_OUT}")

        def assign(self, partitions):
            self.assigned = partitions

    feed, consumer = _feed(keep=10), SlowBroker()
    feed._on_assign(consumer, [TopicPartition("results", 0), TopicPartition("results", 1)])
    assert [tp.offset for tp in consumer.assigned] == [OFFSET_END, OFFSET_END]
    assert feed.stats.assigned == 2 and not feed.stats.fatal
    assert "showing from now" in (feed.stats.last_error or "")


def test_the_map_is_scraped_like_every_consumer():
    feed = _feed(keep=10)
    for i in range(3):
        feed._add(localization_codec().encode(_loc(f"c-{i}")))
    feed._add(b"not avro")
    page = map_app.PageConfig("", "", 10, load_network(), "results")
    with TestClient(map_app.create_app(feed, page, manage_feed=False)) as client:
        response = client.get("/metrics")
    assert response.status_code == 200
    values = {
        sample.name: sample.value
        for family in text_string_to_metric_families(response.text)
        for sample in family.samples
    }
    assert values["heimdall_map_results_consumed_total"] == 3
    assert values["heimdall_map_results_unreadable_total"] == 1
    assert values["heimdall_map_buffered_results"] == 3
    assert values["heimdall_map_feed_up"] == 0  # never started: its consumer is not running
    assert values["heimdall_map_event_streams"] == 0
