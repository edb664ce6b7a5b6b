"""Geometry: local east/north frames, covariance ellipses, their overlap and GeoJSON polygons.

The Features and FeatureCollections built from these polygons are in ``heimdall_stream.geojson``.

Everything geodetic goes through pyproj on the WGS84 ellipsoid:

* the local east/north frame of a model is an azimuthal-equidistant projection centred on the
  model's reference point (distances and azimuths from the centre are exact);
* the ellipse polygon is built point by point with forward geodesics from the estimate, so its
  semi-axes measured back on the ellipsoid are the ones computed here.

Defined edge cases: an ellipse whose ring would cross the antimeridian is cut there and emitted
as a GeoJSON MultiPolygon (RFC 7946 §3.1.9); an ellipse that reaches a pole raises
``GeometryError`` (no polygon on a lon/lat grid can describe it); degenerate or non-finite
covariances raise ``GeometryError``.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from functools import lru_cache

import numpy as np
import numpy.typing as npt
from pyproj import Geod, Transformer

from heimdall_stream.errors import GeometryError
from heimdall_stream.wire.messages import Covariance, Ellipse

WGS84 = Geod(ellps="WGS84")
POLYGON_POINTS = 72  # vertices of the ellipse ring (plus the closing one): 5° steps


def chi2_2_scale(confidence: float) -> float:
    """Sqrt of the chi-square quantile with 2 degrees of freedom: 1.515 at 68.27 %, 2.448 at 95 %."""
    if not 0.0 < confidence < 1.0:
        raise GeometryError(f"confidence must be in (0, 1), got {confidence}")
    return math.sqrt(-2.0 * math.log1p(-confidence))


@dataclass(frozen=True, slots=True)
class LocalFrame:
    """An east/north frame in metres around a reference point on the WGS84 ellipsoid."""

    latitude: float
    longitude: float

    def to_latlon(
        self, east_m: npt.ArrayLike, north_m: npt.ArrayLike
    ) -> tuple[npt.NDArray[np.float64], npt.NDArray[np.float64]]:
        """Convert east/north metres to (latitude, longitude) degrees, vectorised."""
        lon, lat = _aeqd(self.latitude, self.longitude).transform(
            np.asarray(east_m, dtype=np.float64),
            np.asarray(north_m, dtype=np.float64),
            direction="INVERSE",
        )
        return np.asarray(lat, dtype=np.float64), np.asarray(lon, dtype=np.float64)

    def to_enu(
        self, latitude: npt.ArrayLike, longitude: npt.ArrayLike
    ) -> tuple[npt.NDArray[np.float64], npt.NDArray[np.float64]]:
        """Convert (latitude, longitude) degrees to east/north metres, vectorised."""
        east, north = _aeqd(self.latitude, self.longitude).transform(
            np.asarray(longitude, dtype=np.float64), np.asarray(latitude, dtype=np.float64)
        )
        return np.asarray(east, dtype=np.float64), np.asarray(north, dtype=np.float64)


@lru_cache(maxsize=64)
def _aeqd(latitude: float, longitude: float) -> Transformer:
    proj = f"+proj=aeqd +lat_0={latitude} +lon_0={longitude} +datum=WGS84 +units=m +no_defs"
    return Transformer.from_crs("EPSG:4326", proj, always_xy=True)


def check_covariance(cov: Covariance) -> None:
    """Raise ``GeometryError`` unless the covariance is finite and positive definite."""
    values = (cov.sigma_east_m, cov.sigma_north_m, cov.rho)
    if not all(math.isfinite(v) for v in values):
        raise GeometryError(f"covariance has a non-finite value: {values}")
    if cov.sigma_east_m <= 0 or cov.sigma_north_m <= 0:
        raise GeometryError(
            f"covariance is degenerate: sigmas must be > 0, got {cov.sigma_east_m}, {cov.sigma_north_m}"
        )
    if not -1.0 < cov.rho < 1.0:
        raise GeometryError(f"covariance is degenerate: rho must be in (-1, 1), got {cov.rho}")


def ellipse_from_covariance(cov: Covariance, confidence: float, *, radius: float | None = None) -> Ellipse:
    """Confidence ellipse of a 2-D Gaussian: eigen-decomposition scaled by sqrt(chi2_2).

    ``radius`` replaces sqrt(chi2_2(confidence)) when the model declares a calibrated
    Mahalanobis radius for this confidence (see ``ModelContract.radius``); the ellipse carries
    the radius it was drawn at.  Orientation is the direction of the major axis, clockwise from
    true north, in [0, 180).
    """
    check_covariance(cov)
    scale = chi2_2_scale(confidence)
    if radius is not None:
        if not (math.isfinite(radius) and radius > 0):
            raise GeometryError(f"ellipse radius must be finite and positive, got {radius}")
        scale = radius
    matrix = _matrix((cov.sigma_east_m, cov.sigma_north_m, cov.rho))
    eigenvalues, eigenvectors = np.linalg.eigh(matrix)  # ascending
    minor_var, major_var = float(eigenvalues[0]), float(eigenvalues[1])
    if minor_var <= 0:
        raise GeometryError(f"covariance is not positive definite (eigenvalues {eigenvalues})")
    east, north = eigenvectors[:, 1]
    orientation = math.degrees(math.atan2(east, north)) % 180.0
    if orientation >= 180.0:  # -0.0 % 180 and rounding can land exactly on 180
        orientation = 0.0
    return Ellipse(
        confidence=confidence,
        semi_major_m=scale * math.sqrt(major_var),
        semi_minor_m=scale * math.sqrt(minor_var),
        orientation_deg=orientation,
        radius=scale,  # carried so a reader can rebuild the ellipse from covariance and radius
    )


def bhattacharyya_overlap(
    mean_a: npt.ArrayLike, cov_a: npt.ArrayLike, mean_b: npt.ArrayLike, cov_b: npt.ArrayLike
) -> float:
    """Overlap in [0, 1] of two 2-D Gaussians (Bhattacharyya coefficient); 1 = identical.

    Means are (east, north) metres, covariances (σe, σn, ρ) as a model outputs them.
    """
    a, b = _matrix(cov_a), _matrix(cov_b)
    mixed = (a + b) / 2.0
    delta = np.asarray(mean_a, dtype=np.float64) - np.asarray(mean_b, dtype=np.float64)
    distance = delta @ np.linalg.solve(mixed, delta) / 8.0 + 0.5 * math.log(
        np.linalg.det(mixed) / math.sqrt(np.linalg.det(a) * np.linalg.det(b))
    )
    return float(math.exp(-distance))


def _matrix(cov: npt.ArrayLike) -> npt.NDArray[np.float64]:
    """The 2×2 covariance matrix of (σe, σn, ρ)."""
    se, sn, rho = (float(v) for v in np.asarray(cov, dtype=np.float64))
    return np.array([[se * se, rho * se * sn], [rho * se * sn, sn * sn]])


def ellipse_ring(
    latitude: float, longitude: float, ellipse: Ellipse, points: int = POLYGON_POINTS
) -> list[tuple[float, float]]:
    """Closed counter-clockwise ring of (lon, lat) around the centre, built with geodesics.

    Longitudes are unwrapped around the centre (they may leave [-180, 180]); ``ellipse_geometry``
    cuts such a ring at the antimeridian.
    """
    a, b = ellipse.semi_major_m, ellipse.semi_minor_m
    if not (math.isfinite(a) and math.isfinite(b) and a > 0 and b > 0):
        raise GeometryError(f"ellipse axes must be finite and > 0, got {a}, {b}")
    if not (-90.0 < latitude < 90.0 and math.isfinite(longitude)):
        raise GeometryError(f"centre {latitude}, {longitude} is not a valid position")
    _, _, to_pole = WGS84.inv(longitude, latitude, longitude, 90.0 if latitude >= 0 else -90.0)
    if to_pole <= a:
        raise GeometryError(f"ellipse reaches the pole ({to_pole:.0f} m away, semi-major {a:.0f} m)")
    theta = math.radians(ellipse.orientation_deg)
    major = np.array([math.sin(theta), math.cos(theta)])  # unit vector (east, north)
    minor = np.array([-major[1], major[0]])  # major turned 90° counter-clockwise
    t = np.linspace(0.0, 2.0 * math.pi, points, endpoint=False)
    offsets = np.outer(a * np.cos(t), major) + np.outer(b * np.sin(t), minor)
    azimuths = np.degrees(np.arctan2(offsets[:, 0], offsets[:, 1]))
    distances = np.hypot(offsets[:, 0], offsets[:, 1])
    lons, lats, _ = WGS84.fwd(np.full(points, longitude), np.full(points, latitude), azimuths, distances)
    lons = longitude + (np.asarray(lons) - longitude + 180.0) % 360.0 - 180.0  # unwrap
    ring = [(float(x), float(y)) for x, y in zip(lons, np.asarray(lats), strict=True)]
    ring.append(ring[0])
    return ring


def ellipse_geometry(ring: list[tuple[float, float]]) -> dict[str, object]:
    """GeoJSON geometry of a ring: a Polygon, or a MultiPolygon cut at the antimeridian."""
    lons = [p[0] for p in ring]
    if max(lons) <= 180.0 and min(lons) >= -180.0:
        return {"type": "Polygon", "coordinates": [[list(p) for p in ring]]}
    edge = 180.0 if max(lons) > 180.0 else -180.0
    sign = 1.0 if edge > 0 else -1.0
    inside = _clip(ring, lambda lon: sign * lon <= 180.0, edge)
    outside = _clip(ring, lambda lon: sign * lon >= 180.0, edge)
    outside = [(lon - sign * 360.0, lat) for lon, lat in outside]
    return {
        "type": "MultiPolygon",
        "coordinates": [[[list(p) for p in part]] for part in (inside, outside) if len(part) >= 4],
    }


def _clip(
    ring: list[tuple[float, float]], keep: Callable[[float], bool], edge: float
) -> list[tuple[float, float]]:
    """Sutherland-Hodgman clip of a closed ring against the meridian ``edge``."""
    out: list[tuple[float, float]] = []
    points = ring[:-1]
    for i, current in enumerate(points):
        previous = points[i - 1]
        cur_in, prev_in = keep(current[0]), keep(previous[0])
        if cur_in != prev_in:
            frac = (edge - previous[0]) / (current[0] - previous[0])
            out.append((edge, previous[1] + frac * (current[1] - previous[1])))
        if cur_in:
            out.append(current)
    if out:
        out.append(out[0])
    return out
