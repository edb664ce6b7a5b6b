"""Finishing: predictions in the model's east/north frame → ``Localization`` records.

Every result of one version's inference batch shares a ``FinishContext`` (the model, the
ellipse confidence and its calibrated radius, lineage and timings), so positions are converted
to latitude/longitude in one pyproj call per batch and the radius is looked up once.  The
consistency check of ``models.quality`` scores each capture from the batch's model inputs and
widens the covariance of those unlike the model's training before the ellipse is drawn (the
result cache keeps the model's own output).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime

import numpy as np

from heimdall_stream.errors import GeometryError
from heimdall_stream.geo import ellipse_from_covariance
from heimdall_stream.geojson import result_geojson
from heimdall_stream.models.inference import LoadedModel, PreparedBatch
from heimdall_stream.models.quality import capture_quality
from heimdall_stream.processing.cache import Prediction, encode_prediction
from heimdall_stream.processing.infer import Inferred
from heimdall_stream.processing.records import DeadLetter, Decoded, Result
from heimdall_stream.wire.codec import localization_codec
from heimdall_stream.wire.messages import ConfidenceRadius, Covariance, Lineage, Localization, Timings

# The confidences whose radii every result carries besides its ellipse's: the 68.27 % (the
# one-sigma probability) and 95 % levels that calibration is judged on.
STANDARD_CONFIDENCES = (0.6827, 0.95)


@dataclass(frozen=True, slots=True)
class FinishContext:
    """What every result of one version's inference batch shares."""

    model: LoadedModel
    confidence: float
    radius: float  # Mahalanobis radius of the ellipse at ``confidence`` (the model's calibration)
    batch_id: str
    batch_size: int
    inference_started: float  # monotonic seconds: the end of each capture's queueing
    inference_ms: float
    now: datetime
    # The model's radius at each standard confidence; ``finish_all`` fills it once per batch.
    radii: tuple[ConfidenceRadius, ...] = ()


def standard_radii(model: LoadedModel, confidence: float, radius: float) -> tuple[ConfidenceRadius, ...]:
    """The model's Mahalanobis radius at the standard confidences and at ``confidence`` (``radius``).

    Each result says how its ellipse was drawn: the ellipse carries its own radius, and
    ``radii`` these, so a reader can rebuild or score the ellipse at those levels from the
    covariance alone (``heimdall-stream calibrate`` does).
    """
    levels = {level: model.contract.radius(level) for level in STANDARD_CONFIDENCES}
    levels[confidence] = radius
    return tuple(ConfidenceRadius(level, levels[level]) for level in sorted(levels))


def finish_all(
    items: Sequence[Decoded], prepared: PreparedBatch, inferred: Inferred, ctx: FinishContext
) -> tuple[list[Result], list[DeadLetter]]:
    """Results for the rows that have a prediction; dead letters for the rest."""
    if not ctx.radii:
        ctx = dataclasses.replace(ctx, radii=standard_radii(ctx.model, ctx.confidence, ctx.radius))
    rows = range(len(items))
    east = np.array([inferred.predictions[r][0][0] if r in inferred.predictions else 0.0 for r in rows])
    north = np.array([inferred.predictions[r][0][1] if r in inferred.predictions else 0.0 for r in rows])
    lats, lons = ctx.model.contract.frame.to_latlon(east, north)
    checked = capture_quality(ctx.model.contract, prepared.inputs)
    results: list[Result] = []
    letters: list[DeadLetter] = []
    for row, item in enumerate(items):
        if row in inferred.errors:
            letters.append(DeadLetter.of(item.record, inferred.errors[row]))
            continue
        result = finish(
            item,
            inferred.predictions[row],
            (float(lats[row]), float(lons[row])),
            cache_key=prepared.cache_keys[row],
            cache_hit=row in inferred.hits,
            receivers_used=prepared.receivers_used[row],
            ctx=ctx,
            quality=(float(checked.quality[row]), float(checked.widening[row])),
        )
        (letters if isinstance(result, DeadLetter) else results).append(result)  # type: ignore[arg-type]
    return results, letters


def finish(
    item: Decoded,
    prediction: Prediction,
    latlon: tuple[float, float],
    *,
    cache_key: str,
    cache_hit: bool,
    receivers_used: tuple[str, ...],
    ctx: FinishContext,
    quality: tuple[float, float] = (1.0, 1.0),
) -> Result | DeadLetter:
    """Position and covariance → ``Localization`` with ellipse and GeoJSON, or a dead letter.

    ``quality`` is the capture's (quality, σ widening) from the consistency check.
    """
    position, covariance = prediction
    latitude, longitude = latlon
    model = ctx.model
    score, widening = quality
    try:
        cov = Covariance(
            float(covariance[0]) * widening, float(covariance[1]) * widening, float(covariance[2])
        )
        ellipse = ellipse_from_covariance(cov, ctx.confidence, radius=ctx.radius)
        geojson = result_geojson(
            latitude,
            longitude,
            ellipse,
            capture_id=item.capture.capture_id,
            model_name=model.name,
            model_version=model.version,
            captured_at=item.capture.captured_at,
            center_frequency_hz=item.capture.center_frequency_hz,
        )
    except GeometryError as exc:
        return DeadLetter.of(item.record, exc)
    end_to_end_ms = max((ctx.now - item.capture.captured_at).total_seconds() * 1000.0, 0.0)
    queued_ms = max((ctx.inference_started - item.record.consumed_at) * 1000.0, 0.0)
    localization = Localization(
        capture_id=item.capture.capture_id,
        model_name=model.name,
        model_version=model.version,
        latitude=latitude,
        longitude=longitude,
        covariance=cov,
        ellipse=ellipse,
        radii=ctx.radii,
        geojson=geojson,
        receivers_used=receivers_used,
        cache_hit=cache_hit,
        timings=Timings(queued_ms=queued_ms, inference_ms=ctx.inference_ms, end_to_end_ms=end_to_end_ms),
        lineage=Lineage(
            source_partition=item.record.partition,
            source_offset=item.record.offset,
            batch_id=ctx.batch_id,
            batch_size=ctx.batch_size,
        ),
        produced_at=ctx.now,
        quality=score,
    )
    return Result(
        item.record,
        localization,
        localization_codec().encode(localization),
        cache_key,
        encode_prediction(position, covariance),
        item.capture.captured_at,
    )
