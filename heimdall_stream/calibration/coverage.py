"""Scoring one result against its known truth: error in metres, Mahalanobis distance, hits.

A truth is inside a result's ellipse at confidence p when its Mahalanobis distance from the
estimate, d = sqrt(δᵀ C⁻¹ δ) (δ the truth's east/north offset, C the result's covariance), is at
most the radius the result carries for p (``Ellipse.radius``, ``Localization.radii``): exactly
the ellipse the result draws, whatever radius the model's calibration chose.  δ comes from the
geodesic from the estimate to the truth (distance and azimuth on WGS84), the geodesics the
ellipse polygon is drawn with, so a vertex of the drawn ring lies at distance ``radius``.

A result that does not say its radius for p (written before results carried it) is not
scored at p: rebuilding it from sqrt(χ²₂(p)) would judge an ellipse the map never drew.
"""

from __future__ import annotations

import math
import sys
from collections.abc import Sequence
from dataclasses import dataclass

from heimdall_stream.geo import WGS84, check_covariance
from heimdall_stream.wire.messages import Covariance, Localization

CONFIDENCE_TOLERANCE = 1e-6  # confidences are compared as configured numbers, not computed ones


@dataclass(frozen=True, slots=True)
class Score:
    """One result judged against its truth."""

    error_m: float  # geodesic distance from the estimate to the truth
    distance: float  # Mahalanobis distance, in the covariance's standard deviations
    hits: tuple[tuple[float, bool], ...]  # (confidence, truth inside); only levels with a radius
    unscored: tuple[float, ...]  # confidences the result carries no radius for


def radius_at(result: Localization, confidence: float) -> float | None:
    """The Mahalanobis radius ``result`` declares for ``confidence``, or None if it does not say."""
    for item in result.radii:
        if abs(item.confidence - confidence) <= CONFIDENCE_TOLERANCE:
            return item.radius
    ellipse = result.ellipse
    if ellipse.radius is not None and abs(ellipse.confidence - confidence) <= CONFIDENCE_TOLERANCE:
        return ellipse.radius
    return None


@dataclass(frozen=True, slots=True)
class Estimate:
    """What scoring needs of a result (a few hundred bytes, not the result's GeoJSON)."""

    model_name: str
    model_version: str
    latitude: float
    longitude: float
    covariance: Covariance
    radii: tuple[float | None, ...]  # the result's radius at each confidence scored, in order

    @classmethod
    def of(cls, result: Localization, confidences: Sequence[float]) -> Estimate:
        """The estimate of ``result``, with its radius at each of ``confidences``."""
        return cls(
            sys.intern(result.model_name),  # one string per version, however many wait
            sys.intern(result.model_version),
            result.latitude,
            result.longitude,
            result.covariance,
            tuple(radius_at(result, confidence) for confidence in confidences),
        )


def offset_enu(latitude: float, longitude: float, to_lat: float, to_lon: float) -> tuple[float, float, float]:
    """(east, north, distance) metres from a point to another, along the WGS84 geodesic."""
    azimuth, _, distance = WGS84.inv(longitude, latitude, to_lon, to_lat)
    theta = math.radians(azimuth)
    return distance * math.sin(theta), distance * math.cos(theta), float(distance)


def mahalanobis(cov: Covariance, east: float, north: float) -> float:
    """sqrt(δᵀ C⁻¹ δ) of the offset (east, north) under C = (σe, σn, ρ); raises ``GeometryError``."""
    check_covariance(cov)
    x, y, rho = east / cov.sigma_east_m, north / cov.sigma_north_m, cov.rho
    squared = (x * x - 2.0 * rho * x * y + y * y) / (1.0 - rho * rho)
    return math.sqrt(max(squared, 0.0))


def inside(distance: float, radius: float) -> bool:
    """Whether a point at Mahalanobis ``distance`` lies in the ellipse of Mahalanobis ``radius``.

    The boundary counts as inside, as the ellipse is the set d <= radius.
    """
    return distance <= radius


def score(estimate: Estimate, latitude: float, longitude: float, confidences: Sequence[float]) -> Score:
    """Judge ``estimate`` against the true position at each of ``confidences`` (its ``radii``'s order).

    Raises ``GeometryError`` when the result's covariance is not a valid one.
    """
    east, north, error_m = offset_enu(estimate.latitude, estimate.longitude, latitude, longitude)
    distance = mahalanobis(estimate.covariance, east, north)
    hits: list[tuple[float, bool]] = []
    unscored: list[float] = []
    for confidence, radius in zip(confidences, estimate.radii, strict=True):
        if radius is None:
            unscored.append(confidence)
        else:
            hits.append((confidence, inside(distance, radius)))
    return Score(error_m, distance, tuple(hits), tuple(unscored))
