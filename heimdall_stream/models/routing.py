"""Which model version scores a capture: weighted, sticky routing over an immutable model set.

A ``ModelSet`` is one applied deployment: primary versions with weights summing to 1, plus
shadow versions that are scored for comparison but never emitted.  A capture goes to a primary
by a hash of its ``capture_id`` (so a replay, or another instance, takes the same route), and
the app swaps whole ``ModelSet`` objects between batches, so no batch mixes versions.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from heimdall_stream.errors import ControlMessageError
from heimdall_stream.models.inference import LoadedModel
from heimdall_stream.models.weights import check_weights


def route_point(capture_id: str) -> float:
    """A uniform number in [0, 1) determined by the capture id alone."""
    digest = hashlib.blake2b(capture_id.encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big") / 2.0**64


@dataclass(frozen=True)
class ModelSet:
    """Primary versions with weights, shadows, and the generation they belong to."""

    model_name: str
    generation: int
    primaries: tuple[tuple[LoadedModel, float], ...]
    shadows: tuple[LoadedModel, ...] = ()

    def __post_init__(self) -> None:
        if not self.primaries:
            raise ControlMessageError("a model set needs at least one primary version", reason="malformed")
        check_weights(weight for _, weight in self.primaries)

    @classmethod
    def single(cls, model: LoadedModel, generation: int = 0) -> ModelSet:
        """All traffic to one model."""
        return cls(model.name, generation, ((model, 1.0),))

    def split(self, capture_ids: Sequence[str]) -> dict[int, list[int]]:
        """Row indices per primary (by position in ``primaries``), in input order."""
        points = np.array([route_point(c) for c in capture_ids])
        edges = np.cumsum([w for _, w in self.primaries])
        index = np.minimum(np.searchsorted(edges, points, side="right"), len(self.primaries) - 1)
        groups: dict[int, list[int]] = {}
        for row, slot in enumerate(index.tolist()):
            groups.setdefault(slot, []).append(row)
        return groups

    @property
    def models(self) -> tuple[LoadedModel, ...]:
        """Every loaded model: primaries, then shadows."""
        return tuple(m for m, _ in self.primaries) + self.shadows
