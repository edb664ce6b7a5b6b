"""Scoring a result against its truth: the Mahalanobis distance against the carried radius."""

from __future__ import annotations

import math
from datetime import UTC, datetime

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from heimdall_stream.calibration.coverage import Estimate, inside, mahalanobis, offset_enu, radius_at, score
from heimdall_stream.errors import GeometryError
from heimdall_stream.geo import WGS84, chi2_2_scale, ellipse_from_covariance, ellipse_ring
from heimdall_stream.wire.messages import (
    ConfidenceRadius,
    Covariance,
    Ellipse,
    Lineage,
    Localization,
    Timings,
)

sigmas = st.floats(min_value=20.0, max_value=20_000.0)
rhos = st.floats(min_value=-0.9, max_value=0.9)
angles = st.floats(min_value=0.0, max_value=2 * math.pi)
latitudes = st.floats(min_value=-60.0, max_value=60.0)
longitudes = st.floats(min_value=-179.0, max_value=179.0)
COV = Covariance(2000.0, 1000.0, 0.3)
LEVELS = (0.6827, 0.95)


def result(
    lat: float = 45.0,
    lon: float = 7.6,
    cov: Covariance = COV,
    radii: tuple[ConfidenceRadius, ...] = (ConfidenceRadius(0.6827, 1.4), ConfidenceRadius(0.95, 2.9)),
    ellipse_radius: float | None = 2.9,
) -> Localization:
    ellipse = ellipse_from_covariance(cov, 0.95, radius=ellipse_radius)
    return Localization(
        capture_id="c",
        model_name="m",
        model_version="1",
        latitude=lat,
        longitude=lon,
        covariance=cov,
        ellipse=Ellipse(
            0.95, ellipse.semi_major_m, ellipse.semi_minor_m, ellipse.orientation_deg, ellipse_radius
        ),
        geojson="{}",
        receivers_used=(),
        cache_hit=False,
        timings=Timings(0.0, 0.0, 0.0),
        lineage=Lineage(0, 0, "b", 1),
        produced_at=datetime(2026, 1, 1, tzinfo=UTC),
        radii=radii,
    )


def truth_at(lat: float, lon: float, cov: Covariance, angle: float, distance: float) -> tuple[float, float]:
    """The position at Mahalanobis ``distance`` from (lat, lon) in the direction ``angle`` of the
    whitened frame: offset = L (cos, sin) * distance, with C = L Lᵀ."""
    se, sn, rho = cov.sigma_east_m, cov.sigma_north_m, cov.rho
    chol = np.linalg.cholesky(np.array([[se * se, rho * se * sn], [rho * se * sn, sn * sn]]))
    east, north = chol @ np.array([math.cos(angle), math.sin(angle)]) * distance
    lon2, lat2, _ = WGS84.fwd(lon, lat, math.degrees(math.atan2(east, north)), math.hypot(east, north))
    return float(lat2), float(lon2)


@given(
    se=sigmas,
    sn=sigmas,
    rho=rhos,
    angle=angles,
    lat=latitudes,
    lon=longitudes,
    factor=st.floats(min_value=0.0, max_value=3.0),
)
def test_a_truth_is_inside_exactly_when_its_distance_is_within_the_carried_radius(
    *, se, sn, rho, angle, lat, lon, factor
):
    cov = Covariance(se, sn, rho)
    radius = 2.9
    judged_result = result(lat, lon, cov)
    truth_lat, truth_lon = truth_at(lat, lon, cov, angle, factor * radius)
    judged = score(Estimate.of(judged_result, LEVELS), truth_lat, truth_lon, LEVELS)
    assert judged.distance == pytest.approx(factor * radius, rel=1e-6, abs=1e-6)
    if abs(factor - 1.0) > 1e-6:  # the boundary itself is left to rounding
        assert dict(judged.hits)[0.95] is (factor < 1.0)
    if abs(factor * radius - 1.4) > 1e-5:
        assert dict(judged.hits)[0.6827] is (factor * radius < 1.4)
    assert judged.unscored == ()


@given(
    se=sigmas,
    sn=sigmas,
    rho=rhos,
    lat=latitudes,
    lon=longitudes,
    radius=st.floats(min_value=0.5, max_value=5.0),
)
def test_every_vertex_of_the_drawn_ellipse_lies_at_the_carried_radius(*, se, sn, rho, lat, lon, radius):
    # A reader rebuilds the drawn ellipse from the covariance and the radius the record carries.
    cov = Covariance(se, sn, rho)
    ellipse = ellipse_from_covariance(cov, 0.95, radius=radius)
    assert ellipse.radius == radius
    for vertex_lon, vertex_lat in ellipse_ring(lat, lon, ellipse)[:-1]:
        east, north, _ = offset_enu(lat, lon, vertex_lat, vertex_lon)
        assert mahalanobis(cov, east, north) == pytest.approx(radius, rel=1e-6)


def test_without_a_declared_radius_the_ellipse_carries_the_chi2_one():
    assert ellipse_from_covariance(Covariance(100.0, 50.0, 0.1), 0.95).radius == pytest.approx(
        2.4477, abs=1e-4
    )


def test_the_radius_comes_from_radii_else_from_the_ellipse_of_that_confidence():
    assert radius_at(result(), 0.6827) == 1.4
    assert radius_at(result(radii=()), 0.95) == 2.9
    assert radius_at(result(radii=()), 0.6827) is None
    assert radius_at(result(radii=(), ellipse_radius=None), 0.95) is None


def test_a_result_that_does_not_say_its_radius_is_not_scored_at_that_level():
    old = result(radii=(), ellipse_radius=None)
    judged = score(Estimate.of(old, LEVELS), 45.01, 7.61, LEVELS)
    assert judged.hits == () and judged.unscored == (0.6827, 0.95)
    assert judged.error_m == pytest.approx(WGS84.inv(7.6, 45.0, 7.61, 45.01)[2])


def test_the_boundary_counts_as_inside():
    assert inside(2.0, 2.0) and not inside(2.0 + 1e-12, 2.0)


def test_a_gaussian_model_covers_its_confidence():
    # Truths drawn from the model's own Gaussian: coverage at the χ² radius is the confidence.
    rng = np.random.default_rng(3)
    cov = Covariance(3000.0, 1000.0, -0.4)
    radii = tuple(ConfidenceRadius(p, chi2_2_scale(p)) for p in (0.6827, 0.95))
    judged = result(cov=cov, radii=radii, ellipse_radius=chi2_2_scale(0.95))
    hits = {0.6827: 0, 0.95: 0}
    n = 2000
    for angle, distance in zip(rng.uniform(0, 2 * math.pi, n), np.sqrt(rng.chisquare(2, n)), strict=True):
        lat, lon = truth_at(45.0, 7.6, cov, angle, distance)
        for level, hit in score(Estimate.of(judged, LEVELS), lat, lon, LEVELS).hits:
            hits[level] += hit
    assert hits[0.6827] / n == pytest.approx(0.6827, abs=0.03)
    assert hits[0.95] / n == pytest.approx(0.95, abs=0.015)


def test_a_degenerate_covariance_raises():
    with pytest.raises(GeometryError):
        mahalanobis(Covariance(0.0, 10.0, 0.0), 1.0, 1.0)
