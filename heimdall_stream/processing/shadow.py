"""Shadow versions: scored on the same captures as the primary, compared, never emitted.

For each shadow version the comparison records the distance between its position and the
primary's, the overlap of the two Gaussians (Bhattacharyya coefficient) and its latency; a
capture the shadow's contract refuses, or a failing shadow batch, is counted, never fatal.
The comparison is a value (``ShadowComparison``) that ``record_shadow`` turns into metrics once
the batch is committed.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Sequence

import numpy as np
from pyproj import Geod

from heimdall_stream.config import LimitsSettings
from heimdall_stream.errors import HeimdallError
from heimdall_stream.geo import bhattacharyya_overlap
from heimdall_stream.metrics import Metrics
from heimdall_stream.models.inference import LoadedModel
from heimdall_stream.models.quality import capture_quality, widen
from heimdall_stream.processing.intake import validate_all
from heimdall_stream.processing.records import Decoded, Result, ShadowComparison

log = logging.getLogger(__name__)
GEOD = Geod(ellps="WGS84")


def compare_shadow(
    shadow: LoadedModel,
    items: Sequence[Decoded],
    results: Sequence[Result],
    limits: LimitsSettings,
    *,
    clock: Callable[[], float] = time.monotonic,
) -> ShadowComparison:
    """Score ``items`` with a shadow version: how far it is from the primary, per capture."""
    by_id = {r.localization.capture_id: r for r in results}
    good, invalid = validate_all([i for i in items if i.capture.capture_id in by_id], shadow.contract, limits)
    # the shadow's contract may refuse captures the primary served: each is an error
    comparison = ShadowComparison(shadow.version, errors=len(invalid))
    if not good:
        return comparison
    try:
        prepared = shadow.prepare([item.capture for item in good])
        started = clock()
        prediction = shadow.infer(prepared)
        comparison.inference_s = clock() - started
    except HeimdallError as exc:
        comparison.errors += 1
        log.debug("shadow %s failed on a batch: %s", shadow.label, exc)
        return comparison
    primaries = [by_id[item.capture.capture_id].localization for item in good]
    # The primary's covariance went through the consistency check: so does the shadow's.
    shadow_covariance = widen(
        prediction.covariance_enu, capture_quality(shadow.contract, prepared.inputs).widening
    )
    primary_lat = np.array([p.latitude for p in primaries])
    primary_lon = np.array([p.longitude for p in primaries])
    # One pyproj/geodesic call each for the whole batch, not one per capture.
    frame = shadow.contract.frame
    lats, lons = frame.to_latlon(prediction.position_enu_m[:, 0], prediction.position_enu_m[:, 1])
    _, _, distances = GEOD.inv(primary_lon, primary_lat, lons, lats)
    east, north = frame.to_enu(primary_lat, primary_lon)
    for row, primary in enumerate(primaries):
        comparison.distances_m.append(float(distances[row]))
        cov = primary.covariance
        try:
            overlap = bhattacharyya_overlap(
                [float(east[row]), float(north[row])],
                [cov.sigma_east_m, cov.sigma_north_m, cov.rho],
                prediction.position_enu_m[row],
                shadow_covariance[row],
            )
        except (ValueError, ArithmeticError):
            comparison.errors += 1
            continue
        comparison.overlaps.append(overlap)
    return comparison


def record_shadow(comparison: ShadowComparison, metrics: Metrics) -> None:
    """Observe one committed batch's comparison in the shadow metrics."""
    version = comparison.version
    if comparison.errors:
        metrics.shadow_errors.labels(version).inc(comparison.errors)
    if comparison.inference_s is not None:
        metrics.shadow_latency.labels(version).observe(comparison.inference_s)
    delta = metrics.shadow_position_delta.labels(version)
    for distance in comparison.distances_m:
        delta.observe(distance)
    overlap = metrics.shadow_overlap.labels(version)
    for value in comparison.overlaps:
        overlap.observe(value)
