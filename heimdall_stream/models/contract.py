"""The model contract: how an ONNX localization model describes itself, and its validation.

A model carries ``heimdall.contract`` in its ONNX ``metadata_props``: JSON with the contract
version, the input kind, the receiver slots (ids and coordinates), the reference point of its
east/north frame, the IQ geometry it expects and the input kind's own part (for ``features``
models, the feature names and normalisation statistics).  What depends on the input kind lives
in ``heimdall_stream.models.inputs``: one adapter per kind, found by name in ``INPUT_KINDS``.

A model may also declare its ``coverage``: at which Mahalanobis radius (in its own predicted
sigmas) the truth lies with probability p, measured on a calibration split.  Real localization
errors are heavier-tailed than a Gaussian, so no single covariance puts the 68 % and the 95 %
ellipse right at once; with ``coverage`` the ellipse for a requested confidence uses the
declared radius, interpolated between the declared levels (beyond them, scaled like the
Gaussian's).  Without it the radius is sqrt(chi2_2(p)).

``validate_contract`` checks that JSON *and* the graph's inputs and outputs against it, and
raises ``ModelContractError`` naming the first thing that does not fit, so a bad model is
refused at load time instead of producing nonsense at run time.
"""

from __future__ import annotations

import functools
import itertools
import json
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from heimdall_stream.errors import ModelContractError
from heimdall_stream.geo import LocalFrame, chi2_2_scale
from heimdall_stream.models.inputs import INPUT_KINDS, InputKind
from heimdall_stream.network import Network

CONTRACT_KEY = "heimdall.contract"
CONTRACT_VERSION = "heimdall.localization/v1"
OUTPUTS = {"position_enu_m": 2, "covariance_enu": 3}


@dataclass(frozen=True, slots=True)
class TensorSpec:
    """Name, element type and shape (ints, or None/str for dynamic dims) of a graph input/output."""

    name: str
    type: str
    shape: tuple[int | str | None, ...]


@dataclass(frozen=True)
class ModelContract:
    """A validated self-description of a localization model."""

    input_kind: str  # a key of INPUT_KINDS
    network: Network
    reference_latitude: float
    reference_longitude: float
    sample_rate_hz: float
    sample_count: int
    # Only for the ``features`` kind (see models/inputs/features.py).
    feature_names: tuple[str, ...] = ()
    feature_mean: tuple[float, ...] = ()
    feature_std: tuple[float, ...] = ()
    benchmark_only: bool = False
    description: str = ""
    # (confidence, Mahalanobis radius) pairs, increasing in both; empty = Gaussian radii.
    coverage: tuple[tuple[float, float], ...] = ()
    extra: dict[str, Any] = field(default_factory=dict)

    def radius(self, confidence: float) -> float:
        """Mahalanobis radius of the ellipse that holds the truth with probability ``confidence``."""
        gaussian = chi2_2_scale(confidence)
        if not self.coverage:
            return gaussian
        levels = [level for level, _ in self.coverage]
        radii = [radius for _, radius in self.coverage]
        if confidence < levels[0]:
            return radii[0] * gaussian / chi2_2_scale(levels[0])
        if confidence > levels[-1]:
            return radii[-1] * gaussian / chi2_2_scale(levels[-1])
        return float(np.interp(confidence, levels, radii))

    @functools.cached_property
    def slots(self) -> dict[str, int]:
        """Receiver id → slot index (built once: every capture is validated against it)."""
        return self.network.index()

    @property
    def frame(self) -> LocalFrame:
        """The model's east/north frame."""
        return LocalFrame(self.reference_latitude, self.reference_longitude)

    @property
    def input_adapter(self) -> type[InputKind]:
        """The adapter of this contract's input kind."""
        return INPUT_KINDS[self.input_kind]

    def to_json(self) -> str:
        """The JSON stored under ``heimdall.contract``."""
        body: dict[str, Any] = {
            "contract": CONTRACT_VERSION,
            "input_kind": self.input_kind,
            "receivers": self.network.to_dict()["receivers"],
            "network_name": self.network.name,
            "reference": {"latitude": self.reference_latitude, "longitude": self.reference_longitude},
            "iq": {"sample_rate_hz": self.sample_rate_hz, "sample_count": self.sample_count},
            "benchmark_only": self.benchmark_only,
            "description": self.description,
            **self.extra,
        }
        if self.coverage:
            body["coverage"] = {
                "levels": [level for level, _ in self.coverage],
                "radii": [radius for _, radius in self.coverage],
            }
        body.update(self.input_adapter.spec_json(self))
        return json.dumps(body, sort_keys=True)


def parse_contract(text: str | None) -> ModelContract:
    """Parse and check the contract JSON alone (no graph)."""
    if text is None:
        raise ModelContractError(f"model has no '{CONTRACT_KEY}' metadata: not a heimdall model")
    try:
        body = json.loads(text)
    except json.JSONDecodeError as exc:
        raise ModelContractError(f"'{CONTRACT_KEY}' is not valid JSON: {exc}") from exc
    if not isinstance(body, dict):
        raise ModelContractError(f"'{CONTRACT_KEY}' must be a JSON object")
    if body.get("contract") != CONTRACT_VERSION:
        raise ModelContractError(
            f"unsupported contract version {body.get('contract')!r}; this consumer speaks {CONTRACT_VERSION}"
        )
    kind = body.get("input_kind")
    if kind not in INPUT_KINDS:
        known = " or ".join(repr(name) for name in INPUT_KINDS)
        raise ModelContractError(f"input_kind must be {known}, got {kind!r}")
    try:
        network = Network.from_dict(
            {"name": body.get("network_name", "model"), "receivers": body["receivers"]}
        )
        reference = body["reference"]
        lat, lon = float(reference["latitude"]), float(reference["longitude"])
        iq = body["iq"]
        sample_rate, sample_count = float(iq["sample_rate_hz"]), int(iq["sample_count"])
    except Exception as exc:  # KeyError, TypeError, ValueError, ConfigurationError from Network
        raise ModelContractError(f"contract is missing or has a bad field: {exc}") from exc
    if not (-90 < lat < 90 and -180 <= lon <= 180):
        raise ModelContractError(f"reference point {lat}, {lon} is not a valid position")
    if not (sample_rate > 0 and math.isfinite(sample_rate) and sample_count > 0):
        raise ModelContractError(f"iq geometry must be positive, got {sample_rate} Hz × {sample_count}")
    kind_fields = INPUT_KINDS[kind].parse_spec(body)
    return ModelContract(
        input_kind=kind,
        network=network,
        reference_latitude=lat,
        reference_longitude=lon,
        sample_rate_hz=sample_rate,
        sample_count=sample_count,
        benchmark_only=bool(body.get("benchmark_only", False)),
        description=str(body.get("description", "")),
        coverage=_parse_coverage(body.get("coverage")),
        **kind_fields,
    )


def _parse_coverage(spec: Any) -> tuple[tuple[float, float], ...]:
    if spec is None:
        return ()
    try:
        levels = [float(v) for v in spec["levels"]]
        radii = [float(v) for v in spec["radii"]]
    except (KeyError, TypeError, ValueError) as exc:
        raise ModelContractError(f"coverage must have numeric 'levels' and 'radii': {exc!r}") from exc
    if not levels or len(levels) != len(radii):
        raise ModelContractError(f"coverage: {len(levels)} levels but {len(radii)} radii")
    if not all(0.0 < p < 1.0 for p in levels) or not all(math.isfinite(r) and r > 0 for r in radii):
        raise ModelContractError("coverage levels must lie in (0, 1) and radii be finite and positive")
    pairs = list(zip(levels, radii, strict=True))
    if any(b[0] <= a[0] or b[1] <= a[1] for a, b in itertools.pairwise(pairs)):
        raise ModelContractError("coverage levels and radii must both increase strictly")
    return tuple(pairs)


def validate_contract(
    metadata: Mapping[str, str], inputs: Sequence[TensorSpec], outputs: Sequence[TensorSpec]
) -> ModelContract:
    """Check a model's metadata and graph signature; return its contract or raise."""
    contract = parse_contract(metadata.get(CONTRACT_KEY))
    by_name = {spec.name: spec for spec in inputs}
    wanted = contract.input_adapter.input_shapes(contract)
    if set(by_name) != set(wanted):
        raise ModelContractError(
            f"a {contract.input_kind} model must have inputs {sorted(wanted)}, has {sorted(by_name)}"
        )
    for name, shape in wanted.items():
        _check_tensor(by_name[name], shape)
    out_by_name = {spec.name: spec for spec in outputs}
    for name, width in OUTPUTS.items():
        if name not in out_by_name:
            raise ModelContractError(f"model has no output '{name}' (outputs: {sorted(out_by_name)})")
        _check_tensor(out_by_name[name], (None, width))
    return contract


def _check_tensor(spec: TensorSpec, expected: tuple[int | None, ...]) -> None:
    if spec.type != "tensor(float)":
        raise ModelContractError(f"'{spec.name}' must be float32, is {spec.type}")
    if len(spec.shape) != len(expected):
        raise ModelContractError(f"'{spec.name}' must have rank {len(expected)}, has shape {spec.shape}")
    if spec.shape and isinstance(spec.shape[0], int):
        # Batches hold however many captures were waiting: a model exported for a fixed count
        # would fail on every other batch, so it is refused here, not one batch at a time later.
        raise ModelContractError(
            f"'{spec.name}' has a fixed batch dimension of {spec.shape[0]}; batches vary in size, "
            "so export the model with a dynamic first axis"
        )
    for axis, (actual, want) in enumerate(zip(spec.shape, expected, strict=True)):
        if want is not None and isinstance(actual, int) and actual != want:
            raise ModelContractError(f"'{spec.name}' dimension {axis} is {actual}, the contract needs {want}")
