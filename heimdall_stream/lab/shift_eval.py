"""Evaluation of a features model on the shift suite: error and ellipse coverage per variant.

Every variant of ``heimdall_stream.lab.shift`` is simulated afresh (its own seed, so no capture
was seen in training), reduced to features as the consumer does, and run through the exported
ONNX file by onnxruntime; ellipses use the radii the model's contract declares, as the consumer
draws them.  The goal of a variant: 95 % ellipses hold at least 90 % of the truths and the median
error stays under half that of always answering the network's centroid.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np

from heimdall_stream.lab.shift import HELD_OUT, VARIANTS
from heimdall_stream.lab.simulator import IqSimulator, LinkModel
from heimdall_stream.lab.training_data import F64, Dataset, Extractor, simulate_dataset
from heimdall_stream.models.contract import CONTRACT_KEY, ModelContract, parse_contract
from heimdall_stream.models.features import FEATURE_NAMES, extract_features, normalise_features
from heimdall_stream.models.quality import IN_DISTRIBUTION_QUALITY, capture_quality, widen
from heimdall_stream.network import Network

GOAL_COVERAGE_95 = 0.90
GOAL_CENTROID_SHARE = 0.5
SHIFT_SEED = 1_000  # far from the training seeds


@dataclass(frozen=True)
class VariantResult:
    """How a model does on one variant."""

    variant: str
    held_out: bool  # never seen in training, in kind or in combination
    n: int
    median_error_m: float
    centroid_median_error_m: float  # always answering the network's centroid
    coverage_68: float
    coverage_95: float
    doubtful_share: float  # results the consumer marks doubtful (quality under the threshold)

    @property
    def meets_goal(self) -> bool:
        """95 % ellipses hold ≥ 90 % of truths and the median error is under half the centroid's."""
        return (
            self.coverage_95 >= GOAL_COVERAGE_95
            and self.median_error_m < GOAL_CENTROID_SHARE * self.centroid_median_error_m
        )

    def as_dict(self) -> dict[str, Any]:
        """JSON-ready form, with the goal verdict."""
        return {**asdict(self), "meets_goal": self.meets_goal}


def model_contract(onnx_bytes: bytes) -> ModelContract:
    """The contract stored in an exported model."""
    import onnx

    model = onnx.load_from_string(onnx_bytes)
    metadata = {p.key: p.value for p in model.metadata_props}
    return parse_contract(metadata.get(CONTRACT_KEY))


def predict(
    onnx_bytes: bytes, contract: ModelContract, data: Dataset, *, check: bool = True
) -> tuple[F64, F64, F64]:
    """Position, covariance and quality of a dataset as the consumer emits them.

    The model runs in onnxruntime; with ``check`` the consumer's consistency check then widens
    the covariance and scores each capture (without it, quality is 1: a consumer before it).
    """
    import onnxruntime as ort

    columns = [FEATURE_NAMES.index(name) for name in contract.feature_names]
    session = ort.InferenceSession(onnx_bytes, providers=["CPUExecutionProvider"])
    inputs = {
        "receiver_features": normalise_features(
            data.features[..., columns], data.mask, contract.feature_mean, contract.feature_std
        ),
        "receiver_mask": data.mask,
    }
    position, covariance = (
        np.asarray(a, np.float64) for a in session.run(["position_enu_m", "covariance_enu"], inputs)
    )
    if not check:
        return position, covariance, np.ones(len(position))
    quality = capture_quality(contract, inputs)
    return position, widen(covariance, quality.widening), quality.quality


def evaluate_variant(onnx_bytes: bytes, name: str, data: Dataset, *, check: bool = True) -> VariantResult:
    """Error and coverage of the model on one simulated variant (``check``: see ``predict``)."""
    from heimdall_stream.lab.training import mahalanobis_sq

    contract = model_contract(onnx_bytes)
    position, covariance, quality = predict(onnx_bytes, contract, data, check=check)
    residual = data.target_enu - position
    d2 = mahalanobis_sq(residual, covariance)
    return VariantResult(
        variant=name,
        held_out=name in HELD_OUT,
        n=len(residual),
        median_error_m=float(np.median(np.hypot(*residual.T))),
        centroid_median_error_m=float(np.median(np.hypot(*data.target_enu.T))),
        coverage_68=float(np.mean(d2 <= contract.radius(0.6827) ** 2)),
        coverage_95=float(np.mean(d2 <= contract.radius(0.95) ** 2)),
        doubtful_share=float(np.mean(quality < IN_DISTRIBUTION_QUALITY)),
    )


def simulate_variants(
    network: Network,
    per_variant: int,
    *,
    variants: Mapping[str, LinkModel] = VARIANTS,
    seed: int = SHIFT_SEED,
    extract: Extractor = extract_features,
) -> dict[str, Dataset]:
    """``per_variant`` fresh captures of each variant, reduced to features by ``extract``."""
    return {
        name: simulate_dataset(IqSimulator(network, link, seed=seed + i), per_variant, extract=extract)
        for i, (name, link) in enumerate(variants.items())
    }


def evaluate_shift(
    onnx_bytes: bytes, datasets: Mapping[str, Dataset], *, check: bool = True
) -> list[VariantResult]:
    """One result per variant dataset."""
    return [evaluate_variant(onnx_bytes, name, data, check=check) for name, data in datasets.items()]


def shift_table(results: list[VariantResult]) -> str:
    """A Markdown table of per-variant results."""
    lines = [
        "| variant | held out | n | median error km | centroid km | 68 % cov | 95 % cov | doubtful | goal |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for r in results:
        lines.append(
            f"| {r.variant} | {'yes' if r.held_out else 'no'} | {r.n} | {r.median_error_m / 1000:.1f} "
            f"| {r.centroid_median_error_m / 1000:.1f} | {100 * r.coverage_68:.1f} | "
            f"{100 * r.coverage_95:.1f} | {100 * r.doubtful_share:.0f} % | "
            f"{'met' if r.meets_goal else 'missed'} |"
        )
    return "\n".join(lines)
