"""Ellipse geometry and GeoJSON: property tests against pyproj and shapely."""

from __future__ import annotations

import math

import numpy as np
import pytest
import shapely.geometry
from hypothesis import given, settings
from hypothesis import strategies as st
from pyproj import Geod

from heimdall_stream.errors import GeometryError
from heimdall_stream.geo import (
    LocalFrame,
    bhattacharyya_overlap,
    chi2_2_scale,
    ellipse_from_covariance,
    ellipse_ring,
)
from heimdall_stream.wire.messages import Covariance, Ellipse

GEOD = Geod(ellps="WGS84")

sigmas = st.floats(min_value=5.0, max_value=20_000.0)
rhos = st.floats(min_value=-0.95, max_value=0.95)
confidences = st.sampled_from([0.5, 0.6827, 0.9, 0.95, 0.99])
latitudes = st.floats(min_value=-70.0, max_value=70.0)
longitudes = st.floats(min_value=-179.0, max_value=179.0)


def test_chi2_scale_matches_known_quantiles():
    assert chi2_2_scale(0.6827) == pytest.approx(1.515, abs=1e-3)
    assert chi2_2_scale(0.95) == pytest.approx(2.448, abs=1e-3)


@given(sigma=sigmas, confidence=confidences)
def test_circular_covariance_gives_a_circle(sigma, confidence):
    ellipse = ellipse_from_covariance(Covariance(sigma, sigma, 0.0), confidence)
    assert ellipse.semi_major_m == pytest.approx(ellipse.semi_minor_m, rel=1e-9)
    assert ellipse.semi_major_m == pytest.approx(sigma * chi2_2_scale(confidence), rel=1e-9)
    assert 0.0 <= ellipse.orientation_deg < 180.0


@given(se=sigmas, sn=sigmas, rho=rhos, radius=st.floats(min_value=0.1, max_value=10.0))
def test_a_declared_radius_scales_the_axes_in_place_of_chi2(se, sn, rho, radius):
    gaussian = ellipse_from_covariance(Covariance(se, sn, rho), 0.95)
    declared = ellipse_from_covariance(Covariance(se, sn, rho), 0.95, radius=radius)
    factor = radius / chi2_2_scale(0.95)
    assert declared.semi_major_m == pytest.approx(gaussian.semi_major_m * factor, rel=1e-9)
    assert declared.semi_minor_m == pytest.approx(gaussian.semi_minor_m * factor, rel=1e-9)
    assert declared.orientation_deg == gaussian.orientation_deg and declared.confidence == 0.95


@pytest.mark.parametrize("radius", [0.0, -1.0, math.nan, math.inf])
def test_a_bad_declared_radius_raises_a_clear_error(radius):
    with pytest.raises(GeometryError, match="radius"):
        ellipse_from_covariance(Covariance(100.0, 100.0, 0.0), 0.95, radius=radius)


@given(se=sigmas, sn=sigmas, rho=rhos)
def test_axes_are_ordered_and_preserve_the_determinant(se, sn, rho):
    ellipse = ellipse_from_covariance(Covariance(se, sn, rho), 0.95)
    k = chi2_2_scale(0.95)
    assert ellipse.semi_major_m >= ellipse.semi_minor_m > 0
    # a·b = k² · sqrt(det Σ); a² + b² = k² · trace Σ
    det = (se * sn) ** 2 * (1 - rho**2)
    assert ellipse.semi_major_m * ellipse.semi_minor_m == pytest.approx(k**2 * math.sqrt(det), rel=1e-6)
    assert ellipse.semi_major_m**2 + ellipse.semi_minor_m**2 == pytest.approx(
        k**2 * (se**2 + sn**2), rel=1e-6
    )
    assert 0.0 <= ellipse.orientation_deg < 180.0


def test_orientation_follows_the_long_axis():
    assert ellipse_from_covariance(Covariance(100, 10, 0), 0.95).orientation_deg == pytest.approx(90)
    assert ellipse_from_covariance(Covariance(10, 100, 0), 0.95).orientation_deg == pytest.approx(0)
    # Positive correlation east/north: the long axis points north-east (45°, clockwise from north).
    assert ellipse_from_covariance(Covariance(100, 100, 0.5), 0.95).orientation_deg == pytest.approx(45)
    assert ellipse_from_covariance(Covariance(100, 100, -0.5), 0.95).orientation_deg == pytest.approx(135)


@given(
    lat=latitudes,
    lon=longitudes,
    a=st.floats(min_value=50.0, max_value=30_000.0),
    ratio=st.floats(min_value=0.05, max_value=1.0),
    orientation=st.floats(min_value=0.0, max_value=179.9),
)
@settings(max_examples=60, deadline=None)
def test_polygon_is_valid_ccw_closed_contains_centre_and_has_the_right_area(lat, lon, a, ratio, orientation):
    ellipse = Ellipse(0.95, a, a * ratio, orientation)
    ring = ellipse_ring(lat, lon, ellipse)
    assert ring[0] == ring[-1]
    polygon = shapely.geometry.Polygon(ring)
    assert polygon.is_valid
    assert polygon.exterior.is_ccw
    assert polygon.contains(shapely.geometry.Point(lon, lat))
    lons, lats = zip(*ring, strict=True)
    area, _ = GEOD.polygon_area_perimeter(lons, lats)
    # 72 vertices: the inscribed polygon is ~0.13 % smaller than the ellipse.
    assert area == pytest.approx(math.pi * a * a * ratio, rel=5e-3)


def test_a_1km_by_300m_ellipse_measures_back_with_pyproj():
    lat, lon = 45.07, 7.68
    ellipse = Ellipse(0.95, 1000.0, 300.0, 30.0)
    ring = ellipse_ring(lat, lon, ellipse, points=360)
    distances = [GEOD.inv(lon, lat, x, y)[2] for x, y in ring[:-1]]
    assert max(distances) == pytest.approx(1000.0, rel=0.01)
    assert min(distances) == pytest.approx(300.0, rel=0.01)
    azimuth_of_farthest = GEOD.inv(lon, lat, *ring[int(np.argmax(distances))])[0] % 180
    assert azimuth_of_farthest == pytest.approx(30.0, abs=1.0)


def test_near_the_pole_works_until_the_ellipse_reaches_it():
    ring = ellipse_ring(89.5, 10.0, Ellipse(0.95, 20_000, 5_000, 0))
    assert shapely.geometry.Polygon(ring).is_valid
    with pytest.raises(GeometryError, match="pole"):
        ellipse_ring(89.9, 10.0, Ellipse(0.95, 20_000, 5_000, 0))


@pytest.mark.parametrize(
    "cov",
    [
        Covariance(100, 100, 1.0),
        Covariance(100, 100, -1.0),
        Covariance(0.0, 100, 0.0),
        Covariance(100, -5, 0.0),
        Covariance(float("nan"), 100, 0.0),
        Covariance(100, 100, float("nan")),
        Covariance(float("inf"), 100, 0.0),
    ],
)
def test_degenerate_covariance_raises_a_clear_error(cov):
    with pytest.raises(GeometryError, match=r"degenerate|non-finite"):
        ellipse_from_covariance(cov, 0.95)


@given(lat=latitudes, lon=longitudes, east=st.floats(-50_000, 50_000), north=st.floats(-50_000, 50_000))
@settings(max_examples=50, deadline=None)
def test_local_frame_round_trip_and_distance(lat, lon, east, north):
    frame = LocalFrame(lat, lon)
    plat, plon = frame.to_latlon(east, north)
    _, _, dist = GEOD.inv(lon, lat, float(plon), float(plat))
    assert dist == pytest.approx(math.hypot(east, north), rel=1e-6, abs=1e-3)
    e2, n2 = frame.to_enu(plat, plon)
    assert float(e2) == pytest.approx(east, abs=1e-3)
    assert float(n2) == pytest.approx(north, abs=1e-3)


def test_overlap_of_identical_gaussians_is_one_and_far_apart_is_zero():
    assert bhattacharyya_overlap([0, 0], [100, 50, 0.2], [0, 0], [100, 50, 0.2]) == pytest.approx(1.0)
    assert bhattacharyya_overlap([0, 0], [100, 50, 0.2], [10_000, 0], [100, 50, 0.2]) < 1e-6


@given(
    shift=st.floats(0.0, 5_000.0),
    a=st.tuples(sigmas, sigmas, rhos),
    b=st.tuples(sigmas, sigmas, rhos),
)
def test_overlap_is_symmetric_and_in_the_unit_interval(shift, a, b):
    forward = bhattacharyya_overlap([0, 0], a, [shift, -shift], b)
    backward = bhattacharyya_overlap([shift, -shift], b, [0, 0], a)
    assert forward == pytest.approx(backward, rel=1e-9, abs=1e-300)
    assert 0.0 <= forward <= 1.0 + 1e-9
