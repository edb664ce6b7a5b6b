"""Request bodies of the predict API: JSON ↔ Avro captures, length-prefixed batches, errors."""

from __future__ import annotations

import base64
import json
from datetime import UTC, datetime

import pytest
from hypothesis import given
from hypothesis import strategies as st

from heimdall_stream.api.bodies import (
    AVRO_CAPTURE,
    AVRO_CAPTURE_BATCH,
    batch_captures,
    capture_json,
    capture_message,
    join_frames,
    single_capture,
    split_frames,
)
from heimdall_stream.errors import DecodeError
from heimdall_stream.wire.codec import capture_codec
from heimdall_stream.wire.messages import IqCapture, ReceiverIq, SampleFormat

RECEIVER = ReceiverIq("rx-1", 45.0, 7.5, 2_000_000.0, SampleFormat.CI16, b"\x01\x00\x02\x00" * 8, 300.0, 12)
CAPTURE = IqCapture("cap-1", datetime(2026, 1, 2, 3, 4, 5, 678000, tzinfo=UTC), 145e6, (RECEIVER,))


def test_json_capture_becomes_the_same_avro_as_the_wire() -> None:
    document = capture_json(CAPTURE)
    assert capture_codec().decode(capture_message(document)) == CAPTURE
    value, pin = single_capture(json.dumps({"capture": document, "model": 3}).encode(), "application/json")
    assert capture_codec().decode(value) == CAPTURE and pin == "3"


def test_avro_body_is_passed_through_untouched() -> None:
    value = capture_codec().encode(CAPTURE)
    assert single_capture(value, f"{AVRO_CAPTURE}; charset=binary") == (value, None)


@given(st.lists(st.binary(max_size=64), max_size=8))
def test_frames_round_trip(values: list[bytes]) -> None:
    assert split_frames(join_frames(values)) == values


@given(st.binary(max_size=64), st.integers(min_value=1, max_value=3))
def test_a_cut_frame_is_truncated(value: bytes, cut: int) -> None:
    body = join_frames([value])
    with pytest.raises(DecodeError) as error:
        split_frames(body[: max(len(body) - cut, 1)])
    assert error.value.reason == "truncated"


def test_batch_bodies() -> None:
    value = capture_codec().encode(CAPTURE)
    assert batch_captures(join_frames([value, value]), AVRO_CAPTURE_BATCH) == ([value, value], None)
    body = json.dumps({"captures": [capture_json(CAPTURE)], "model": "models:/m/2"}).encode()
    values, pin = batch_captures(body, "application/json")
    assert capture_codec().decode(values[0]) == CAPTURE and pin == "models:/m/2"


@pytest.mark.parametrize(
    ("body", "fragment"),
    [
        (b"{not json", "not JSON"),
        (b"[1, 2]", "not an object"),
        (json.dumps({"capture_id": "x"}).encode(), "missing field"),
        (json.dumps({**capture_json(CAPTURE), "receivers": "no"}).encode(), "must be an array"),
        (json.dumps({**capture_json(CAPTURE), "center_frequency_hz": "fast"}).encode(), "must be a number"),
        (json.dumps({**capture_json(CAPTURE), "captured_at": "yesterday"}).encode(), "ISO 8601"),
        (json.dumps({"capture": capture_json(CAPTURE), "model": True}).encode(), "version string"),
    ],
)
def test_bad_json_is_a_decode_error(body: bytes, fragment: str) -> None:
    with pytest.raises(DecodeError, match=fragment) as error:
        single_capture(body, "application/json")
    assert error.value.reason == "decode"


def test_bad_receivers_are_decode_errors() -> None:
    def with_receiver(**changes: object) -> bytes:
        document = capture_json(CAPTURE)
        document["receivers"][0].update(changes)
        return json.dumps(document).encode()

    for changes, fragment in (
        ({"samples": "***"}, "not base64"),
        ({"samples": 5}, "base64 string"),
        ({"sample_format": "CU8"}, "CI16 or CF32"),
        ({"timestamp_offset_ns": 1.5}, "integer"),
        ({"timestamp_offset_ns": 2**70}, "does not encode"),
    ):
        with pytest.raises(DecodeError, match=fragment):
            single_capture(with_receiver(**changes), None)


def test_missing_capture_time_means_now() -> None:
    document = capture_json(CAPTURE)
    del document["captured_at"]
    decoded = capture_codec().decode(capture_message(document))
    assert abs((datetime.now(UTC) - decoded.captured_at).total_seconds()) < 60
    assert base64.b64decode(document["receivers"][0]["samples"]) == RECEIVER.samples
