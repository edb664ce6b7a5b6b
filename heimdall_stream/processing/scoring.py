"""Scoring one consumed batch with a model set: route, validate, infer per version, shadow.

Each primary version gets its own inference batch (never mixed), with its own cache look-ups;
shadow versions score the same captures afterwards and are compared with the primary (position
distance, ellipse overlap, latency) without ever being emitted.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime

import numpy as np
from pyproj import Geod

from heimdall_stream.config import Settings
from heimdall_stream.errors import HeimdallError
from heimdall_stream.metrics import Metrics
from heimdall_stream.models.inference import LoadedModel
from heimdall_stream.models.routing import ModelSet, bhattacharyya_overlap
from heimdall_stream.processing.dedup import Store
from heimdall_stream.processing.pipeline import BatchOutcome, Decoded, Result, complete_batch, validate_all

log = logging.getLogger(__name__)
GEOD = Geod(ellps="WGS84")


@dataclass
class VersionStats:
    """What one primary version did in a batch (for metrics after the commit)."""

    model: LoadedModel
    fresh: int
    cache_hits: int
    inference_s: float
    results: list[Result]


@dataclass
class ScoredBatch:
    """All results and dead letters of a batch, and the per-version figures."""

    outcome: BatchOutcome = field(default_factory=BatchOutcome)
    versions: list[VersionStats] = field(default_factory=list)


def score(
    models: ModelSet,
    items: list[Decoded],
    store: Store,
    *,
    settings: Settings,
    metrics: Metrics,
    batch_id: str,
    clock: Callable[[], float],
    wall: Callable[[], datetime],
    dedup: Callable[[list[Decoded]], list[Decoded]],
) -> ScoredBatch:
    """Route ``items`` to their versions, validate, drop duplicates, score; shadows compare.

    Validation comes before dedup, so a malformed copy of a capture can never stand in for the
    valid one: every invalid message goes to the DLQ, and only valid captures count as done.
    """
    scored = ScoredBatch()
    groups = models.split([item.capture.capture_id for item in items])
    valid: dict[int, list[Decoded]] = {}
    for slot, rows in sorted(groups.items()):
        model = models.primaries[slot][0]
        good, invalid = validate_all([items[r] for r in rows], model.contract, settings.limits)
        scored.outcome.dead_letters.extend(invalid)
        valid[slot] = good
    fresh = {id(item) for item in dedup([item for slot in sorted(valid) for item in valid[slot]])}
    for slot, candidates in sorted(valid.items()):
        model = models.primaries[slot][0]
        good = [item for item in candidates if id(item) in fresh]
        if not good:
            continue
        prepared = model.prepare([item.capture for item in good])
        cached = store.get_many(prepared.cache_keys)
        outcome = complete_batch(
            good,
            prepared,
            cached,
            model=model,
            confidence=settings.model.confidence,
            batch_id=f"{batch_id}-v{model.version}",
            timer=clock,
            wall_now=wall,
        )
        scored.outcome.results.extend(outcome.results)
        scored.outcome.dead_letters.extend(outcome.dead_letters)
        scored.versions.append(
            VersionStats(model, len(good), outcome.cache_hits, outcome.inference_s, outcome.results)
        )
        for shadow in models.shadows:
            compare_shadow(shadow, good, outcome.results, metrics, settings)
    return scored


def compare_shadow(
    shadow: LoadedModel, items: list[Decoded], results: list[Result], metrics: Metrics, settings: Settings
) -> None:
    """Score ``items`` with a shadow version and record how far it is from the primary."""
    by_id = {r.localization.capture_id: r for r in results}
    good, invalid = validate_all(
        [i for i in items if i.capture.capture_id in by_id], shadow.contract, settings.limits
    )
    version = shadow.version
    if invalid:  # the shadow's contract refuses captures the primary served
        metrics.shadow_errors.labels(version).inc(len(invalid))
    if not good:
        return
    try:
        prepared = shadow.prepare([item.capture for item in good])
        started = time.monotonic()
        prediction = shadow.infer(prepared)
        metrics.shadow_latency.labels(version).observe(time.monotonic() - started)
    except HeimdallError as exc:
        metrics.shadow_errors.labels(version).inc()
        log.debug("shadow %s failed on a batch: %s", shadow.label, exc)
        return
    primaries = [by_id[item.capture.capture_id].localization for item in good]
    primary_lat = np.array([p.latitude for p in primaries])
    primary_lon = np.array([p.longitude for p in primaries])
    # One pyproj/geodesic call each for the whole batch, not one per capture.
    frame = shadow.contract.frame
    lats, lons = frame.to_latlon(prediction.position_enu_m[:, 0], prediction.position_enu_m[:, 1])
    _, _, distances = GEOD.inv(primary_lon, primary_lat, lons, lats)
    east, north = frame.to_enu(primary_lat, primary_lon)
    for row, primary in enumerate(primaries):
        metrics.shadow_position_delta.labels(version).observe(float(distances[row]))
        cov = primary.covariance
        try:
            overlap = bhattacharyya_overlap(
                [float(east[row]), float(north[row])],
                [cov.sigma_east_m, cov.sigma_north_m, cov.rho],
                prediction.position_enu_m[row],
                prediction.covariance_enu[row],
            )
        except (ValueError, ArithmeticError):
            metrics.shadow_errors.labels(version).inc()
            continue
        metrics.shadow_overlap.labels(version).observe(overlap)
