"""GeoJSON of results, truths and receivers: kinds, rounding and geometry (property tests)."""

from __future__ import annotations

import itertools
import json
import math
from datetime import UTC, datetime

import pytest
import shapely.geometry
from hypothesis import given, settings
from hypothesis import strategies as st
from pyproj import Geod

from heimdall_stream.errors import GeometryError
from heimdall_stream.geo import ellipse_geometry, ellipse_ring
from heimdall_stream.geojson import (
    COORDINATE_DECIMALS,
    feature_of_kind,
    receiver_features,
    result_geojson,
    round_ring,
    truth_feature,
)
from heimdall_stream.network import load_network
from heimdall_stream.wire.messages import Ellipse

GEOD = Geod(ellps="WGS84")
HALF_STEP = 0.5 * 10**-COORDINATE_DECIMALS + 1e-12

latitudes = st.floats(min_value=-70.0, max_value=70.0)
longitudes = st.floats(min_value=-179.0, max_value=179.0)


def _decimals(value: float) -> int:
    text = repr(value)
    return len(text.split(".")[1]) if "." in text and "e" not in text else 0


def _positions(geometry):
    if geometry["type"] == "Point":
        return [geometry["coordinates"]]
    if geometry["type"] == "Polygon":
        return [p for ring in geometry["coordinates"] for p in ring]
    return [p for poly in geometry["coordinates"] for ring in poly for p in ring]


def _result(lat=45.07, lon=7.68, ellipse=None, **extra):
    return result_geojson(
        lat,
        lon,
        ellipse or Ellipse(0.95, 2000.123456, 800.98765, 60.123456),
        capture_id="cap-1",
        model_name="m",
        model_version="3",
        **extra,
    )


def test_a_result_is_a_feature_collection_of_an_estimate_and_its_ellipse():
    when = datetime(2026, 1, 2, 3, 4, 5, tzinfo=UTC)
    collection = json.loads(_result(captured_at=when, center_frequency_hz=145_500_000.0))
    assert collection["type"] == "FeatureCollection"
    estimate, ellipse = collection["features"]
    assert estimate["geometry"] == {"type": "Point", "coordinates": [7.68, 45.07]}
    assert estimate["properties"] == {
        "kind": "estimate",
        "capture_id": "cap-1",
        "model_name": "m",
        "model_version": "3",
        "latitude": 45.07,
        "longitude": 7.68,
        "captured_at": "2026-01-02T03:04:05+00:00",
        "center_frequency_hz": 145_500_000.0,
    }
    assert ellipse["geometry"]["type"] == "Polygon"
    props = ellipse["properties"]
    assert props["kind"] == "ellipse" and props["capture_id"] == "cap-1" and props["model_version"] == "3"
    assert props["semi_major_m"] == 2000.1 and props["semi_minor_m"] == 801.0
    assert props["orientation_deg"] == 60.12 and props["confidence"] == 0.95
    assert feature_of_kind(_result(), "ellipse")["properties"]["kind"] == "ellipse"
    with pytest.raises(KeyError):
        feature_of_kind(_result(), "truth")


def test_rounding_shrinks_the_record():
    ellipse = Ellipse(0.95, 2000, 800, 60)
    ring = ellipse_ring(45.07, 7.68, ellipse)
    unrounded = json.dumps(ellipse_geometry(ring), separators=(",", ":"))
    assert len(_result(ellipse=ellipse)) < len(unrounded)


@given(
    lat=latitudes,
    lon=longitudes,
    a=st.floats(min_value=20.0, max_value=300_000.0),
    ratio=st.floats(min_value=0.05, max_value=1.0),
    orientation=st.floats(min_value=0.0, max_value=179.99),
)
@settings(max_examples=80, deadline=None)
def test_rounded_geometry_is_close_valid_and_keeps_the_ellipse(lat, lon, a, ratio, orientation):
    b = max(a * ratio, 10.0)
    ellipse = Ellipse(0.95, a, b, orientation)
    collection = json.loads(_result(lat, lon, ellipse))
    estimate = feature_of_kind(json.dumps(collection), "estimate")
    polygon_feature = feature_of_kind(json.dumps(collection), "ellipse")
    # every position has at most 6 decimals and moved by at most half a step
    exact = ellipse_geometry(ellipse_ring(lat, lon, ellipse))
    for x, y in _positions(polygon_feature["geometry"]) + _positions(estimate["geometry"]):
        assert _decimals(x) <= COORDINATE_DECIMALS and _decimals(y) <= COORDINATE_DECIMALS
    assert estimate["geometry"]["coordinates"] == pytest.approx([lon, lat], abs=HALF_STEP)
    if exact["type"] == "Polygon":
        ring = polygon_feature["geometry"]["coordinates"][0]
        assert len(ring) == len(exact["coordinates"][0])  # nothing collapsed at this size
        for got, want in zip(ring, exact["coordinates"][0], strict=True):
            assert got == pytest.approx(want, abs=HALF_STEP)
        polygon = shapely.geometry.Polygon(ring)
        assert ring[0] == ring[-1]
        assert polygon.is_valid and polygon.exterior.is_ccw
        assert polygon.contains(shapely.geometry.Point(*estimate["geometry"]["coordinates"]))
        area, _ = GEOD.polygon_area_perimeter(*zip(*ring, strict=True))
        assert area == pytest.approx(math.pi * a * b, rel=5e-3)
    else:  # cut at the antimeridian: every part closed, valid, inside [-180, 180]
        for part in polygon_feature["geometry"]["coordinates"]:
            ring = part[0]
            assert ring[0] == ring[-1] and shapely.geometry.Polygon(ring).is_valid
            assert all(-180.0 <= x <= 180.0 for x, _ in ring)


@given(st.lists(st.tuples(st.floats(-180, 180), st.floats(-90, 90)), min_size=3, max_size=40))
def test_round_ring_never_repeats_a_vertex_and_stays_closed(points):
    ring = [*points, points[0]]
    try:
        rounded = round_ring(ring)
    except GeometryError:
        distinct = {(round(x, 6), round(y, 6)) for x, y in points}
        assert len(distinct) < 3
        return
    assert rounded[0] == rounded[-1] and len(rounded) >= 4
    assert all(p != q for p, q in itertools.pairwise(rounded))


def test_an_ellipse_below_the_precision_is_a_geometry_error():
    with pytest.raises(GeometryError, match="too small"):
        _result(ellipse=Ellipse(0.95, 0.05, 0.02, 0.0))


def test_antimeridian_result_stays_a_valid_rounded_multipolygon():
    ellipse = feature_of_kind(_result(10.0, 179.99, Ellipse(0.95, 20_000, 10_000, 90)), "ellipse")
    assert ellipse["geometry"]["type"] == "MultiPolygon"
    total = sum(
        abs(GEOD.polygon_area_perimeter(*zip(*p[0], strict=True))[0])
        for p in ellipse["geometry"]["coordinates"]
    )
    assert total == pytest.approx(math.pi * 20_000 * 10_000, rel=1e-2)


def test_receivers_and_truth_are_points_of_their_kind():
    network = load_network()
    receivers = receiver_features(network)
    assert [f["properties"]["receiver_id"] for f in receivers] == list(network.ids)
    assert {f["properties"]["kind"] for f in receivers} == {"receiver"}
    torino = next(f for f in receivers if f["properties"]["receiver_id"] == "torino")
    assert torino["geometry"]["coordinates"] == [7.672, 45.044]
    truth = truth_feature("cap-1", 45.123456789, 7.987654321, 1234.5678)
    assert truth["geometry"]["coordinates"] == [7.987654, 45.123457]
    assert truth["properties"] == {"kind": "truth", "capture_id": "cap-1", "error_m": 1234.6}
