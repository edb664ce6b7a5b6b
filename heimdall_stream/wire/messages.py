"""Frozen dataclasses for every record on the wire (see ``schemas/*.avsc``).

They are plain values: no I/O, no Kafka types.  ``codec`` turns them into Avro and back.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import UTC, datetime
from enum import StrEnum

import numpy as np
import numpy.typing as npt


class SampleFormat(StrEnum):
    """How a receiver's IQ bytes are laid out."""

    CI16 = "CI16"  # interleaved little-endian int16 I, Q: what WebSDRs deliver
    CF32 = "CF32"  # little-endian complex64

    @property
    def bytes_per_sample(self) -> int:
        """Bytes of one complex sample."""
        return 4 if self is SampleFormat.CI16 else 8


@dataclass(frozen=True, slots=True)
class ReceiverIq:
    """The IQ that one receiver recorded for a capture."""

    receiver_id: str
    latitude: float
    longitude: float
    sample_rate_hz: float
    sample_format: SampleFormat
    samples: bytes
    altitude_m: float | None = None
    timestamp_offset_ns: int | None = None

    @property
    def sample_count(self) -> int:
        """Number of complex samples (a trailing partial sample is not counted)."""
        return len(self.samples) // self.sample_format.bytes_per_sample

    def iq(self) -> npt.NDArray[np.float32]:
        """The samples as float32 of shape (2, L): row 0 in-phase, row 1 quadrature.

        CI16 is scaled to [-1, 1) so both formats share one amplitude scale.
        """
        out = np.empty((2, self.sample_count), dtype=np.float32)
        self.write_iq(out)
        return out

    def write_iq(self, out: npt.NDArray[np.float32]) -> None:
        """Write ``iq()`` into a preallocated (2, L) array without intermediate copies."""
        count = self.sample_count
        if self.sample_format is SampleFormat.CI16:
            raw = np.frombuffer(self.samples, dtype="<i2", count=2 * count).reshape(count, 2).T
            np.multiply(raw, np.float32(1.0 / 32768.0), out=out, casting="unsafe")
        else:
            out[...] = np.frombuffer(self.samples, dtype="<f4", count=2 * count).reshape(count, 2).T


@dataclass(frozen=True, slots=True)
class IqCapture:
    """One transmission captured by several receivers."""

    capture_id: str
    captured_at: datetime
    center_frequency_hz: float
    receivers: tuple[ReceiverIq, ...]


@dataclass(frozen=True, slots=True)
class ReceiverCapture:
    """What one receiver recorded of one transmission, published by that receiver alone."""

    transmission_key: str
    receiver_id: str
    latitude: float
    longitude: float
    window_start: datetime
    center_frequency_hz: float
    sample_rate_hz: float
    sample_format: SampleFormat
    samples: bytes
    altitude_m: float | None = None
    timestamp_offset_ns: int | None = None
    expected_receivers: int | None = None


@dataclass(frozen=True, slots=True)
class Covariance:
    """Position covariance in the local east/north frame."""

    sigma_east_m: float
    sigma_north_m: float
    rho: float


@dataclass(frozen=True, slots=True)
class Ellipse:
    """Confidence ellipse: axes in metres, orientation clockwise from north in [0, 180)."""

    confidence: float
    semi_major_m: float
    semi_minor_m: float
    orientation_deg: float
    # Mahalanobis radius the axes were scaled by (None: written before the field existed).
    radius: float | None = None


@dataclass(frozen=True, slots=True)
class ConfidenceRadius:
    """A confidence level and the Mahalanobis radius of the ellipse holding that probability."""

    confidence: float
    radius: float


@dataclass(frozen=True, slots=True)
class Timings:
    """Latencies of one result, milliseconds."""

    queued_ms: float
    inference_ms: float
    end_to_end_ms: float


@dataclass(frozen=True, slots=True)
class Lineage:
    """Where a result's input came from and how it was batched."""

    source_partition: int
    source_offset: int
    batch_id: str
    batch_size: int


@dataclass(frozen=True, slots=True)
class Localization:
    """A transmitter position estimate with its uncertainty."""

    capture_id: str
    model_name: str
    model_version: str
    latitude: float
    longitude: float
    covariance: Covariance
    ellipse: Ellipse
    geojson: str
    receivers_used: tuple[str, ...]
    cache_hit: bool
    timings: Timings
    lineage: Lineage
    produced_at: datetime
    radii: tuple[ConfidenceRadius, ...] = ()  # the model's radius at the standard confidences
    # consistency with the model's training (models.quality); under 0.5: a doubtful fix
    quality: float = 1.0


@dataclass(frozen=True, slots=True)
class WeightedVersion:
    """One served model version and its share of the traffic."""

    model_uri: str
    weight: float


@dataclass(frozen=True, slots=True)
class ModelDeployment:
    """Desired deployment of one model: versions with weights, optional shadows."""

    model_name: str
    generation: int
    versions: tuple[WeightedVersion, ...]
    issued_by: str
    issued_at: datetime
    shadow: tuple[str, ...] = ()
    signature: str = ""


@dataclass(frozen=True, slots=True)
class LoadedVersion:
    """A model version an instance has loaded."""

    model_uri: str
    version: str
    sha256: str
    weight: float
    shadow: bool = False


class ApplyState(StrEnum):
    """What became of the newest generation an instance was asked to apply."""

    APPLIED = "APPLIED"  # in force (also: the configured model at start, generation 0)
    PENDING = "PENDING"  # waits for an unreachable registry and retries by itself
    REFUSED = "REFUSED"  # could not be loaded or swapped in; final, the previous set serves
    REJECTED = "REJECTED"  # the control message itself was refused (unsigned, forged, malformed)


@dataclass(frozen=True, slots=True)
class ModelStatus:
    """What an instance has applied, or why it kept its previous state (``state``, ``error``)."""

    instance_id: str
    model_name: str
    generation: int
    versions: tuple[LoadedVersion, ...]
    reported_at: datetime = field(default_factory=lambda: datetime.now(UTC))
    error: str | None = None
    requested_generation: int = 0
    state: ApplyState = ApplyState.APPLIED


@dataclass(frozen=True, slots=True)
class GroundTruth:
    """The known true position of one capture's transmitter (a beacon, a repeater, a test)."""

    capture_id: str
    latitude: float
    longitude: float
    captured_at: datetime
    source: str
