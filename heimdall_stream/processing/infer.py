"""Inference of one version's batch: cache hits served, identical rows inferred once, poison isolated.

A batch that fails in onnxruntime (or returns non-finite outputs) is bisected until the failing
rows are found, so one poisonous capture cannot sink the captures batched with it; each failing
row becomes an ``InferenceError`` (a dead letter later), the rest are served.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import numpy as np

from heimdall_stream.errors import InferenceError
from heimdall_stream.models.inference import LoadedModel, PreparedBatch
from heimdall_stream.processing.cache import Prediction

Timer = Callable[[], float]


@dataclass
class Inferred:
    """Predictions and errors by batch row, which rows were hits, and the onnxruntime seconds."""

    predictions: dict[int, Prediction] = field(default_factory=dict)
    errors: dict[int, InferenceError] = field(default_factory=dict)
    hits: set[int] = field(default_factory=set)
    seconds: float = 0.0


def infer_rows(
    model: LoadedModel, prepared: PreparedBatch, cached: dict[int, Prediction], timer: Timer
) -> Inferred:
    """Serve ``cached`` rows, infer each distinct remaining input once, isolate failures."""
    out = Inferred(predictions=dict(cached))
    # Identical inputs within the batch are inferred once; the copies count as cache hits.
    first_row: dict[str, int] = {}
    copies: dict[int, int] = {}
    for row, key in enumerate(prepared.cache_keys):
        if row in cached:
            continue
        if key in first_row:
            copies[row] = first_row[key]
        else:
            first_row[key] = row
    out.hits = set(cached) | set(copies)
    inferred, errors, out.seconds = infer_isolating(model, prepared, list(first_row.values()), timer)
    out.predictions.update(inferred)
    out.errors.update(errors)
    for row, source in copies.items():
        if source in errors:
            out.errors[row] = errors[source]
        else:
            out.predictions[row] = inferred[source]
    return out


def infer_isolating(
    model: LoadedModel, batch: PreparedBatch, rows: Sequence[int], timer: Timer
) -> tuple[dict[int, Prediction], dict[int, InferenceError], float]:
    """Predictions for ``rows``; a failing batch is bisected until the failing rows are found.

    Returns predictions by row, errors by row, and the seconds spent in onnxruntime.
    """
    predictions: dict[int, Prediction] = {}
    errors: dict[int, InferenceError] = {}
    spent = 0.0
    pending: list[list[int]] = [list(rows)] if rows else []
    while pending:
        part = pending.pop()
        start = timer()
        try:
            prediction = model.infer(batch.subset(part))
            finite = np.isfinite(prediction.position_enu_m).all(axis=1) & np.isfinite(
                prediction.covariance_enu
            ).all(axis=1)
            bad = np.asarray(~finite, dtype=bool)
            if bad.any() and len(part) > 1:
                raise InferenceError("non-finite outputs")  # find them one by one below
        except InferenceError as exc:
            spent += timer() - start
            if len(part) == 1:
                errors[part[0]] = exc
            else:
                half = len(part) // 2
                pending += [part[:half], part[half:]]
            continue
        spent += timer() - start
        for i, row in enumerate(part):
            if bad[i]:
                errors[row] = InferenceError("model returned NaN or infinity for this capture")
            else:
                predictions[row] = (prediction.position_enu_m[i], prediction.covariance_enu[i])
    return predictions, errors, spent
