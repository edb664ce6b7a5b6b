"""One result as the page draws it: a small JSON object built from a ``Localization``.

The page needs the estimate, the ellipse rings (from the result's own GeoJSON, so the map draws
exactly what every other consumer gets) and what the popup shows.  Results written before the
GeoJSON became a FeatureCollection (a single ellipse Feature) are read too; they only lack the
capture's time and frequency.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from typing import Any

from pyproj import Geod

from heimdall_stream.wire.messages import Localization

WGS84 = Geod(ellps="WGS84")


def result_view(loc: Localization, seq: int, truth: Mapping[str, float] | None = None) -> dict[str, Any]:
    """The page's record of one result; ``truth`` ({latitude, longitude}) adds its error."""
    estimate, rings = _geometry(loc.geojson)
    view: dict[str, Any] = {
        "seq": seq,
        "id": loc.capture_id,
        "model": loc.model_name,
        "version": loc.model_version,
        "lat": round(loc.latitude, 6),
        "lon": round(loc.longitude, 6),
        "rings": rings,
        "a": round(loc.ellipse.semi_major_m, 1),
        "b": round(loc.ellipse.semi_minor_m, 1),
        "conf": loc.ellipse.confidence,
        "time": estimate.get("captured_at"),
        "freq": estimate.get("center_frequency_hz"),
        "latency_ms": round(loc.timings.end_to_end_ms, 1),
        "produced": loc.produced_at.isoformat(),
        "rx": list(loc.receivers_used),
        "cache": loc.cache_hit,
        "quality": round(loc.quality, 3),
        "error_m": None,
    }
    if truth is not None:
        error = error_m(loc, truth)
        # None rather than NaN: the page parses the events with JSON.parse, which refuses NaN.
        view["error_m"] = round(error, 1) if math.isfinite(error) else None
        if view["freq"] is None and truth.get("frequency_hz") is not None:
            view["freq"] = truth["frequency_hz"]
    return view


def error_m(loc: Localization, truth: Mapping[str, float]) -> float:
    """Geodesic distance in metres from the estimate to the true position."""
    _, _, distance = WGS84.inv(loc.longitude, loc.latitude, truth["longitude"], truth["latitude"])
    return float(distance) if math.isfinite(distance) else math.nan


def _geometry(geojson: str) -> tuple[dict[str, Any], list[list[list[float]]]]:
    """The estimate's properties and the ellipse's outer rings ([lon, lat] positions)."""
    document = json.loads(geojson)
    if document.get("type") == "Feature":  # the single-Feature form of older results
        features = [{**document, "properties": {**document.get("properties", {}), "kind": "ellipse"}}]
    else:
        features = document.get("features", [])
    estimate: dict[str, Any] = {}
    rings: list[list[list[float]]] = []
    for feature in features:
        props, geometry = feature.get("properties") or {}, feature.get("geometry") or {}
        if props.get("kind") == "estimate":
            estimate = props
        elif props.get("kind") == "ellipse":
            if geometry.get("type") == "Polygon":
                rings.append(geometry["coordinates"][0])
            elif geometry.get("type") == "MultiPolygon":
                rings.extend(polygon[0] for polygon in geometry["coordinates"])
    return estimate, rings
