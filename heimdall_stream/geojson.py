"""GeoJSON of results, truths and receivers: what every map tool and the live map draw.

A result's ``geojson`` field is a FeatureCollection string of two Features, each naming what it
is in a ``kind`` property:

* ``kind: "estimate"``: a Point at the estimated position, with the capture id, the model, the
  capture's time and centre frequency;
* ``kind: "ellipse"``: the confidence ellipse, a closed counter-clockwise Polygon (a MultiPolygon
  when it crosses the antimeridian), with its confidence, axes, orientation and the Mahalanobis
  ``radius`` it was drawn at (the semi-axes are ``radius`` times the square roots of the
  covariance's eigenvalues).

Other files add ``kind: "truth"`` (a simulator's true position) and ``kind: "receiver"``
Points, so one FeatureCollection can hold them all (concatenate the ``features`` arrays).

Coordinates are rounded to ``COORDINATE_DECIMALS`` (6: 0.11 m or less); an estimate's own
uncertainty is metres to kilometres, so further digits are noise that only makes the record
bigger.  Rounding never leaves two equal consecutive vertices in a ring.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping
from datetime import datetime
from typing import Any

from heimdall_stream.errors import GeometryError
from heimdall_stream.geo import ellipse_geometry, ellipse_ring
from heimdall_stream.network import Network
from heimdall_stream.wire.messages import Ellipse

COORDINATE_DECIMALS = 6
METRE_DECIMALS = 1  # ellipse axes in the properties: 0.1 m (the record keeps the full values)
DEGREE_DECIMALS = 2  # ellipse orientation in the properties
RADIUS_DECIMALS = 4  # the ellipse's Mahalanobis radius (in sigmas) in the properties

Feature = dict[str, Any]


def round_position(longitude: float, latitude: float) -> list[float]:
    """A GeoJSON position [lon, lat] rounded to ``COORDINATE_DECIMALS``."""
    return [round(longitude, COORDINATE_DECIMALS), round(latitude, COORDINATE_DECIMALS)]


def round_ring(ring: Iterable[Iterable[float]]) -> list[list[float]]:
    """A closed ring with rounded positions and no two equal consecutive vertices.

    Raises ``GeometryError`` when fewer than 4 positions (a triangle) are left: an ellipse that
    small cannot be drawn at this precision.
    """
    out: list[list[float]] = []
    for lon, lat in ring:
        position = round_position(lon, lat)
        if not out or position != out[-1]:
            out.append(position)
    if len(out) > 1 and out[0] != out[-1]:
        out.append(out[0])
    if len(out) < 4:
        raise GeometryError(f"ellipse too small to draw with {COORDINATE_DECIMALS} decimals")
    return out


def rounded_geometry(geometry: Mapping[str, Any]) -> dict[str, Any]:
    """A Point, Polygon or MultiPolygon with every position rounded (rings via ``round_ring``)."""
    kind, coordinates = geometry["type"], geometry["coordinates"]
    if kind == "Point":
        return {"type": kind, "coordinates": round_position(*coordinates)}
    if kind == "Polygon":
        return {"type": kind, "coordinates": [round_ring(ring) for ring in coordinates]}
    if kind == "MultiPolygon":
        return {"type": kind, "coordinates": [[round_ring(r) for r in poly] for poly in coordinates]}
    raise GeometryError(f"unsupported geometry type {kind!r}")


def point_feature(kind: str, latitude: float, longitude: float, properties: Mapping[str, Any]) -> Feature:
    """A Point Feature of ``kind`` at a rounded position."""
    return {
        "type": "Feature",
        "geometry": {"type": "Point", "coordinates": round_position(longitude, latitude)},
        "properties": {"kind": kind, **properties},
    }


def ellipse_feature(
    latitude: float, longitude: float, ellipse: Ellipse, properties: Mapping[str, Any]
) -> Feature:
    """The ellipse around the estimate as a rounded Polygon (MultiPolygon at the antimeridian)."""
    geometry = ellipse_geometry(ellipse_ring(latitude, longitude, ellipse))
    return {
        "type": "Feature",
        "geometry": rounded_geometry(geometry),
        "properties": {
            "kind": "ellipse",
            **properties,
            "confidence": ellipse.confidence,
            "semi_major_m": round(ellipse.semi_major_m, METRE_DECIMALS),
            "semi_minor_m": round(ellipse.semi_minor_m, METRE_DECIMALS),
            "orientation_deg": round(ellipse.orientation_deg, DEGREE_DECIMALS),
            # the Mahalanobis radius it was drawn at (absent when the record does not say)
            **({} if ellipse.radius is None else {"radius": round(ellipse.radius, RADIUS_DECIMALS)}),
        },
    }


def result_features(
    latitude: float,
    longitude: float,
    ellipse: Ellipse,
    *,
    capture_id: str,
    model_name: str,
    model_version: str,
    captured_at: datetime | None = None,
    center_frequency_hz: float | None = None,
) -> list[Feature]:
    """The estimate Point and the ellipse Polygon of one result, in that order."""
    common: dict[str, Any] = {
        "capture_id": capture_id,
        "model_name": model_name,
        "model_version": model_version,
    }
    estimate: dict[str, Any] = {
        **common,
        "latitude": round(latitude, COORDINATE_DECIMALS),
        "longitude": round(longitude, COORDINATE_DECIMALS),
    }
    if captured_at is not None:
        estimate["captured_at"] = captured_at.isoformat()
    if center_frequency_hz is not None:
        estimate["center_frequency_hz"] = center_frequency_hz
    return [
        point_feature("estimate", latitude, longitude, estimate),
        ellipse_feature(latitude, longitude, ellipse, common),
    ]


def result_geojson(latitude: float, longitude: float, ellipse: Ellipse, **properties: Any) -> str:
    """The ``geojson`` field of a result: a compact FeatureCollection string (see the module doc)."""
    return dumps(feature_collection(result_features(latitude, longitude, ellipse, **properties)))


def truth_feature(capture_id: str, latitude: float, longitude: float, error_m: float) -> Feature:
    """A simulator's true transmitter position, with the estimate's distance from it."""
    return point_feature(
        "truth", latitude, longitude, {"capture_id": capture_id, "error_m": round(error_m, METRE_DECIMALS)}
    )


def receiver_features(network: Network) -> list[Feature]:
    """One Point per receiver of the network, in slot order."""
    return [
        point_feature(
            "receiver",
            r.latitude,
            r.longitude,
            {"receiver_id": r.id, "name": r.name, "altitude_m": r.altitude_m, "network": network.name},
        )
        for r in network.receivers
    ]


def feature_collection(features: Iterable[Feature]) -> dict[str, Any]:
    """A FeatureCollection of ``features``."""
    return {"type": "FeatureCollection", "features": list(features)}


def dumps(value: Any) -> str:
    """Compact JSON, refusing NaN and infinity (they are not JSON)."""
    return json.dumps(value, separators=(",", ":"), allow_nan=False)


def feature_of_kind(geojson: str, kind: str) -> Feature:
    """The first Feature of ``kind`` in a result's ``geojson`` string (``KeyError`` if none)."""
    for feature in json.loads(geojson)["features"]:
        if feature["properties"].get("kind") == kind:
            return dict(feature)
    raise KeyError(f"no {kind!r} feature in the GeoJSON")
