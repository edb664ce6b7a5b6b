"""Simulated training data: captures → features, masks and truth in the network's frame.

``simulate_dataset`` runs the IQ simulator and the consumer's own feature extraction, so the
models learn from exactly what they will be served; ``model_input`` builds the regressors'
input, including the power and TDOA grid summaries computed by the same ONNX nodes the exported
model holds.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

from heimdall_stream.geo import LocalFrame
from heimdall_stream.lab.power_grid import PriorRegion, run_power_grid
from heimdall_stream.lab.simulator import IqSimulator
from heimdall_stream.lab.tdoa_grid import run_grid
from heimdall_stream.models.contract import ModelContract
from heimdall_stream.models.features import assemble_batch, extract_features, normalise_features

F32 = npt.NDArray[np.float32]
F64 = npt.NDArray[np.float64]
Extractor = Callable[[F32, F32, F64, F64], F32]


@dataclass(frozen=True)
class Dataset:
    """Simulated captures reduced to model inputs and truth."""

    features: F32  # (B, N, F) raw features
    mask: F32  # (B, N)
    target_enu: F64  # (B, 2) metres in the network frame
    truth_latlon: F64  # (B, 2)


def simulate_dataset(
    simulator: IqSimulator,
    count: int,
    start: int = 0,
    batch: int = 64,
    *,
    progress: Callable[[int], None] | None = None,
    extract: Extractor = extract_features,
) -> Dataset:
    """Simulate captures ``start`` .. ``start + count`` and extract their features.

    ``extract`` is the feature extraction (the consumer's own; another one to compare).
    """
    network = simulator.network
    frame = LocalFrame(*network.centroid())
    features: list[F32] = []
    masks: list[F32] = []
    truths: list[tuple[float, float]] = []
    for first in range(start, start + count, batch):
        sims = [simulator.generate(i) for i in range(first, min(first + batch, start + count))]
        iq, mask, fs, offsets = assemble_batch(
            [s.capture for s in sims], network.index(), simulator.sample_count
        )
        features.append(extract(iq, mask, fs, offsets))
        masks.append(mask)
        truths.extend((s.transmitter.latitude, s.transmitter.longitude) for s in sims)
        if progress is not None:
            progress(len(sims))
    truth = np.asarray(truths, dtype=np.float64)
    east, north = frame.to_enu(truth[:, 0], truth[:, 1])
    return Dataset(
        features=np.concatenate(features),
        mask=np.concatenate(masks),
        target_enu=np.stack([east, north], axis=1),
        truth_latlon=truth,
    )


def normalisation(data: Dataset) -> tuple[F64, F64]:
    """Per-feature mean and std over present receiver slots."""
    present = data.mask.astype(bool)
    values = data.features[present].astype(np.float64)
    mean = values.mean(axis=0)
    std = values.std(axis=0)
    return mean, np.where(std > 1e-6, std, 1.0)


def model_input(
    features: F32, mask: F32, mean: F64, std: F64, contract: ModelContract, *, region: PriorRegion
) -> F32:
    """The regressors' input: normalised features, mask, per-receiver sums, power and TDOA grids.

    The grid summaries (``power_grid`` over ``region``, then ``tdoa_grid``, last) are computed by
    the same ONNX nodes the exported model contains.  The sums
    over receivers (how many heard the signal, how many have a valid TDOA, total SNR) are what
    the uncertainty depends on most; trees cannot easily add up 7 columns themselves.
    """
    normalised = normalise_features(features, mask, mean, std)
    flat = normalised.reshape(len(features), -1)
    power = run_power_grid(contract, region, normalised, mask)
    grid = run_grid(contract, normalised, mask)
    return np.concatenate([flat, mask, normalised.sum(axis=1), power, grid], axis=1).astype(np.float32)
