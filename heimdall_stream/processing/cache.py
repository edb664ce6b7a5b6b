"""The result cache: a prediction stored under a hash of exactly what the model saw.

The key (computed by the model's input adapter) covers the prepared inputs and the model's
sha256, so a hit is the same answer the model would give.  Values are the raw prediction,
position (2) and covariance (3) as little-endian float64; anything else is treated as a miss.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import numpy.typing as npt

from heimdall_stream.processing.records import Result
from heimdall_stream.processing.store import Store

PREDICTION_BYTES = 5 * 8
Prediction = tuple[npt.NDArray[np.float64], npt.NDArray[np.float64]]


def encode_prediction(position: npt.ArrayLike, covariance: npt.ArrayLike) -> bytes:
    """Cache value of one prediction."""
    return np.concatenate([np.asarray(position), np.asarray(covariance)]).astype("<f8").tobytes()


def decode_prediction(value: bytes) -> Prediction | None:
    """Inverse of ``encode_prediction``; None for a value of the wrong size."""
    if len(value) != PREDICTION_BYTES:
        return None
    array = np.frombuffer(value, dtype="<f8")
    return array[:2], array[2:]


class ResultCache:
    """Look-ups by batch row before inference, writes after the commit."""

    def __init__(self, store: Store) -> None:
        self.store = store

    def lookup(self, keys: Sequence[str]) -> dict[int, Prediction]:
        """Cached predictions by row of ``keys`` (one round trip for the batch)."""
        found = self.store.get_many(keys)
        hits: dict[int, Prediction] = {}
        for row, key in enumerate(keys):
            value = found.get(key)
            prediction = decode_prediction(value) if value is not None else None
            if prediction is not None:
                hits[row] = prediction
        return hits

    def save(self, results: Sequence[Result]) -> None:
        """Cache the predictions of committed results that were not cache hits themselves."""
        self.store.put_many({r.cache_key: r.prediction for r in results if not r.localization.cache_hit})
