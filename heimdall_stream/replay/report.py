"""What a replay reports per model version, in memory that does not grow with the range.

Errors against the simulator's truth, distances to the live answers and ellipse overlaps go into
fixed-bin histograms (``Quantiles``: logarithmic bins for metres, 0.8 % wide, linear ones for
overlaps), so a million captures take the same memory as a thousand and the report can be saved
with the replay's progress and resumed.  Coverage counts whether the truth falls inside the
version's own 68 % and 95 % ellipses: the Mahalanobis distance under its covariance against the
radius each answer carries for that level (its model's calibrated one), the Gaussian's otherwise.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import numpy.typing as npt

from heimdall_stream.calibration.coverage import radius_at
from heimdall_stream.geo import LocalFrame, bhattacharyya_overlap, chi2_2_scale
from heimdall_stream.wire.messages import Localization

R68 = chi2_2_scale(0.6827) ** 2  # squared Mahalanobis radius of the 68.27 % ellipse
R95 = chi2_2_scale(0.95) ** 2  # (the Gaussian's, for results that do not carry their own)


class Quantiles:
    """A histogram over fixed bins: counts in constant memory, quantiles to one bin's width."""

    def __init__(self, edges: npt.NDArray[np.float64]) -> None:
        self.edges = edges
        self.counts = np.zeros(len(edges) + 1, dtype=np.int64)  # [below first edge, bins..., above last]

    @classmethod
    def metres(cls) -> Quantiles:
        """Log bins from 1 cm to 10,000 km, about 0.8 % wide."""
        return cls(np.geomspace(0.01, 1e7, 2600))

    @classmethod
    def unit(cls) -> Quantiles:
        """Linear bins over [0, 1], 0.001 wide."""
        return cls(np.linspace(0.0, 1.0, 1001))

    def __len__(self) -> int:
        return int(self.counts.sum())

    def add(self, values: npt.ArrayLike) -> None:
        """Count values (NaN ignored)."""
        array = np.asarray(values, dtype=np.float64)
        array = array[~np.isnan(array)]
        np.add.at(self.counts, np.searchsorted(self.edges, array, side="right"), 1)

    def quantile(self, q: float) -> float | None:
        """The value below which a share ``q`` of the counts lies (the upper edge of its bin)."""
        total = len(self)
        if not total:
            return None
        index = int(np.searchsorted(np.cumsum(self.counts), math.ceil(q * total)))
        return float(self.edges[min(index, len(self.edges) - 1)])

    def to_json(self) -> dict[str, int]:
        """Non-empty bins, for the saved progress."""
        return {str(i): int(c) for i, c in enumerate(self.counts) if c}

    def load(self, saved: Mapping[str, int]) -> None:
        """Counts saved by ``to_json``."""
        for index, count in saved.items():
            self.counts[int(index)] += count


@dataclass(frozen=True, slots=True)
class Answer:
    """The position and covariance of an answer (a live one, to compare against)."""

    latitude: float
    longitude: float
    covariance: tuple[float, float, float]
    version: str


@dataclass
class VersionReport:
    """Everything one candidate version did over the range."""

    version: str
    results: int = 0
    dead_letters: dict[str, int] = field(default_factory=dict)
    error_m: Quantiles = field(default_factory=Quantiles.metres)
    inside_68: int = 0
    inside_95: int = 0
    live_distance_m: Quantiles = field(default_factory=Quantiles.metres)
    live_overlap: Quantiles = field(default_factory=Quantiles.unit)
    live_versions: dict[str, int] = field(default_factory=dict)

    def add(
        self,
        frame: LocalFrame,
        answers: Sequence[Localization],
        truth: Mapping[str, tuple[float, float]],
        live: Mapping[str, Answer],
    ) -> None:
        """Score a batch of this version's answers against the truth and the live answers."""
        self.results += len(answers)
        known = [a for a in answers if a.capture_id in truth]
        if known:
            mine = _enu(frame, [(a.latitude, a.longitude) for a in known])
            true = _enu(frame, [truth[a.capture_id] for a in known])
            cov = np.array(
                [(a.covariance.sigma_east_m, a.covariance.sigma_north_m, a.covariance.rho) for a in known]
            )
            delta = true - mine
            self.error_m.add(np.hypot(delta[:, 0], delta[:, 1]))
            squared = _mahalanobis2(delta, cov)
            self.inside_68 += int((squared <= _squared_radii(known, 0.6827, R68)).sum())
            self.inside_95 += int((squared <= _squared_radii(known, 0.95, R95)).sum())
        compared = [a for a in answers if a.capture_id in live]
        if compared:
            mine = _enu(frame, [(a.latitude, a.longitude) for a in compared])
            theirs = _enu(
                frame, [(live[a.capture_id].latitude, live[a.capture_id].longitude) for a in compared]
            )
            delta = mine - theirs
            self.live_distance_m.add(np.hypot(delta[:, 0], delta[:, 1]))
            overlaps = []
            for a, m, t in zip(compared, mine, theirs, strict=True):
                c = a.covariance
                other = live[a.capture_id]
                overlaps.append(
                    bhattacharyya_overlap(m, (c.sigma_east_m, c.sigma_north_m, c.rho), t, other.covariance)
                )
                self.live_versions[other.version] = self.live_versions.get(other.version, 0) + 1
            self.live_overlap.add(overlaps)

    def add_dead_letters(self, reasons: Sequence[str]) -> None:
        """Count captures this version could not localise, by reason."""
        for reason in reasons:
            self.dead_letters[reason] = self.dead_letters.get(reason, 0) + 1

    def summary(self) -> dict[str, Any]:
        """The figures of the report."""
        with_truth = len(self.error_m)
        compared = len(self.live_distance_m)
        return {
            "version": self.version,
            "results": self.results,
            "dead_letters": dict(sorted(self.dead_letters.items())),
            "with_truth": with_truth,
            "error_m": {"median": self.error_m.quantile(0.5), "p95": self.error_m.quantile(0.95)},
            "coverage": {
                "68": self.inside_68 / with_truth if with_truth else None,
                "95": self.inside_95 / with_truth if with_truth else None,
            },
            "against_live": {
                "compared": compared,
                "live_versions": dict(sorted(self.live_versions.items())),
                "distance_m": {
                    "median": self.live_distance_m.quantile(0.5),
                    "p95": self.live_distance_m.quantile(0.95),
                },
                "overlap": {
                    "median": self.live_overlap.quantile(0.5),
                    "p05": self.live_overlap.quantile(0.05),
                },
            },
        }

    def to_json(self) -> dict[str, Any]:
        """Everything needed to resume accumulating."""
        return {
            "version": self.version,
            "results": self.results,
            "dead_letters": self.dead_letters,
            "error_m": self.error_m.to_json(),
            "inside_68": self.inside_68,
            "inside_95": self.inside_95,
            "live_distance_m": self.live_distance_m.to_json(),
            "live_overlap": self.live_overlap.to_json(),
            "live_versions": self.live_versions,
        }

    @classmethod
    def from_json(cls, saved: Mapping[str, Any]) -> VersionReport:
        """A report saved by ``to_json``."""
        report = cls(
            str(saved["version"]),
            int(saved["results"]),
            dict(saved["dead_letters"]),
            inside_68=int(saved["inside_68"]),
            inside_95=int(saved["inside_95"]),
            live_versions=dict(saved["live_versions"]),
        )
        report.error_m.load(saved["error_m"])
        report.live_distance_m.load(saved["live_distance_m"])
        report.live_overlap.load(saved["live_overlap"])
        return report


def _enu(frame: LocalFrame, points: Sequence[tuple[float, float]]) -> npt.NDArray[np.float64]:
    lat, lon = np.array(points, dtype=np.float64).T
    east, north = frame.to_enu(lat, lon)
    return np.stack([east, north], axis=1)


def _mahalanobis2(delta: npt.NDArray[np.float64], cov: npt.NDArray[np.float64]) -> npt.NDArray[np.float64]:
    """Squared Mahalanobis distance of each (east, north) offset under its (σe, σn, ρ)."""
    se, sn, rho = cov[:, 0], cov[:, 1], cov[:, 2]
    x, y = delta[:, 0] / se, delta[:, 1] / sn
    return np.asarray((x * x - 2 * rho * x * y + y * y) / (1 - rho * rho), dtype=np.float64)


def _squared_radii(
    answers: Sequence[Localization], confidence: float, gaussian: float
) -> npt.NDArray[np.float64]:
    """Each answer's own squared radius at ``confidence`` (its model's calibrated one), else the Gaussian's.

    A model that declares its coverage draws its ellipses at its own radii: a truth counts as
    inside the ellipse the map showed, not inside a χ² one the model never claimed.
    """
    radii = [radius_at(a, confidence) for a in answers]
    return np.array([gaussian if r is None else r * r for r in radii])
