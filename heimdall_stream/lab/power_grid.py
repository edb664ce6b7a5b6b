"""A power + TDOA grid posterior over the transmitter region, written as ONNX nodes.

Most captures of a network that differs from the simulator are heard by one or two receivers
with a usable time difference, or none: there the position rests on signal power.  This grid
scores every point of a ``SPACING_M`` grid over the *prior region* (where the training
transmitters were: the bounding box of the training truths, a uniform prior) by

* the SNR of every present receiver under a log-distance law: SNR = A − 10 n log10(d / d0),
  with the link budget A (transmit power less the loss at d0 and the receiver's noise floor)
  unknown and marginalised over ``LINK_BUDGETS_DB`` (flat), Gaussian shadowing of
  ``SHADOWING_DB``.  SNR, not received power: a receiver's gain error scales signal and noise
  alike, so it cancels.  A measured SNR above ``SNR_FLOOR_DB`` is a measurement (a 10,000-sample
  capture measures a signal well below the noise); one at or under it says only that the true
  SNR is under the floor there (a censored term, log Φ): a receiver that does not hear the
  transmitter still says where it is not;
* the time differences of arrival, as in ``tdoa_grid`` but with the spread widened to the
  coarser grid (``TDOA_SIGMA_US``): two receivers give a hyperbola, which the power terms cut.

The posterior is summarised as ``POWER_GRID_FEATURES`` numbers: mean east/north (100 km),
log standard deviations, correlation, negative entropy, how well the best grid point explains
the SNRs (log-likelihood per measured receiver: a propagation steeper or more scattered than
assumed shows there, so the uncertainty models can widen), and the share of receivers measured
above the floor.  The reference model uses the mean as its position where the TDOA grid does
not pin the transmitter down, and all of it as inputs of its uncertainty models.  The same
nodes run at training time as a small model of their own (``run_power_grid``).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np
import numpy.typing as npt
from scipy.special import log_ndtr

from heimdall_stream.lab.tdoa_grid import (
    SPEED_OF_LIGHT_M_PER_US,
    STUDENT_NU,
    NodeMaker,
    arrival_nodes,
    distances,
    posterior_nodes,
    raw_feature_nodes,
    run_standalone,
    standalone_model,
)
from heimdall_stream.models.contract import ModelContract

SPACING_M = 4_000.0
PATH_LOSS_EXPONENT = 3.0  # the middle of what a network shows (2.4-3.7 in training)
REFERENCE_DISTANCE_M = 100.0
SHADOWING_DB = 7.0  # shadowing, key-up and noise-figure errors together
SNR_FLOOR_DB = -12.0  # below this the SNR estimate is biased and noisy: treated as censored
# Transmit power 30-47 dBm, loss at 100 m 56-65 dB (2 m / 70 cm), noise floor -115..-124 dBm.
LINK_BUDGETS_DB = np.arange(70.0, 125.1, 5.0)
TDOA_SIGMA_US = 8.0  # 2 µs of clock and correlation, widened: grid points lie up to 2.8 km off
POWER_GRID_FEATURES = 8


@dataclass(frozen=True)
class PriorRegion:
    """The east/north box (metres, network frame) where transmitters are expected."""

    east: tuple[float, float]
    north: tuple[float, float]

    @classmethod
    def of(cls, target_enu: npt.NDArray[np.float64]) -> PriorRegion:
        """The bounding box of training truths, widened to whole grid cells."""
        low = np.floor(target_enu.min(axis=0) / SPACING_M) * SPACING_M
        high = np.ceil(target_enu.max(axis=0) / SPACING_M) * SPACING_M
        return cls((float(low[0]), float(high[0])), (float(low[1]), float(high[1])))

    def grid(self) -> npt.NDArray[np.float64]:
        """Grid points (G, 2) in east/north metres covering the box."""
        east = np.arange(self.east[0], self.east[1] + SPACING_M / 2, SPACING_M)
        north = np.arange(self.north[0], self.north[1] + SPACING_M / 2, SPACING_M)
        e, n = np.meshgrid(east, north)
        return np.stack([e.ravel(), n.ravel()], axis=1)

    def as_dict(self) -> dict[str, list[float]]:
        """JSON-ready form (recorded in the model contract)."""
        return {"east_m": list(self.east), "north_m": list(self.north)}


def predicted_snr(contract: ModelContract, grid: npt.NDArray[np.float64]) -> npt.NDArray[np.float64]:
    """Predicted SNR (N, G·K) of each receiver for each grid point and link budget, in dB."""
    distance = np.maximum(distances(contract, grid), REFERENCE_DISTANCE_M)  # (N, G)
    loss = 10.0 * PATH_LOSS_EXPONENT * np.log10(distance / REFERENCE_DISTANCE_M)
    snr = LINK_BUDGETS_DB[None, None, :] - loss[:, :, None]  # (N, G, K)
    return snr.reshape(len(distance), -1)


def power_grid_nodes(
    contract: ModelContract, region: PriorRegion, prefix: str = "pg_"
) -> tuple[list[Any], list[Any], str]:
    """ONNX nodes and initializers computing (B, POWER_GRID_FEATURES) from the model inputs."""
    grid = region.grid()
    slots, budgets = len(contract.network.receivers), len(LINK_BUDGETS_DB)
    snr = predicted_snr(contract, grid)
    arrival = distances(contract, grid) / SPEED_OF_LIGHT_M_PER_US
    n = NodeMaker(prefix)
    n.consts |= {
        "floor": np.array([SNR_FLOOR_DB], np.float32),
        "pred": snr.astype(np.float32),
        "pred_sq": (snr**2).astype(np.float32),
        # log P(true SNR ≤ floor) of a receiver that measured nothing above it
        "censored": log_ndtr((SNR_FLOOR_DB - snr) / SHADOWING_DB).astype(np.float32),
        "two": np.array([2.0], np.float32),
        "inv_2s2": np.array([0.5 / SHADOWING_DB**2], np.float32),
        "shape_bgk": np.array([-1, len(grid), budgets], np.int64),
        "neg_half_nu1": np.array([-(STUDENT_NU + 1.0) / 2.0], np.float32),
        "slots": np.array([float(slots)], np.float32),
        "log_k": np.array([math.log(budgets)], np.float32),
    }
    nodes = [
        *raw_feature_nodes(n, contract, "snr_db"),
        # measured: present and above the floor; censored: present and at or under it
        n("Greater", ["snr_db", "floor"], ["above_bool"]),
        n("Cast", ["above_bool"], ["above_any"], to=1),
        n("Mul", ["above_any", "receiver_mask"], ["above"]),
        n("Sub", ["receiver_mask", "above"], ["under"]),
        # Σ_measured (s − p)² = Σ a s² − 2 Σ a s p + Σ a p², as matrix products over the slots
        n("Mul", ["above", "snr_db"], ["as"]),
        n("Mul", ["as", "snr_db"], ["as2"]),
        n("ReduceSum", ["as2", "axis1"], ["sum_as2"], keepdims=1),
        n("MatMul", ["as", "pred"], ["cross"]),
        n("MatMul", ["above", "pred_sq"], ["sum_ap2"]),
        n("Mul", ["cross", "two"], ["cross2"]),
        n("Sub", ["cross2", "sum_as2"], ["q0"]),
        n("Sub", ["q0", "sum_ap2"], ["q1"]),
        n("Mul", ["q1", "inv_2s2"], ["ll_measured"]),
        n("MatMul", ["under", "censored"], ["ll_censored"]),
        n("Add", ["ll_measured", "ll_censored"], ["ll_flat"]),
        # marginalise the link budget: log mean_k exp(ll), stabilised by the maximum
        n("Reshape", ["ll_flat", "shape_bgk"], ["ll"]),
        n("ReduceMax", ["ll"], ["ll_max"], axes=[2], keepdims=1),
        n("Sub", ["ll", "ll_max"], ["ll_centred"]),
        n("Exp", ["ll_centred"], ["lik"]),
        n("ReduceSum", ["lik", "axis2"], ["lik_sum"], keepdims=0),
        n("Log", ["lik_sum"], ["log_lik_sum"]),
        n("Squeeze", ["ll_max", "axis2"], ["ll_max2"]),
        n("Add", ["log_lik_sum", "ll_max2"], ["ll_power_k"]),
        n("Sub", ["ll_power_k", "log_k"], ["ll_power"]),
        # time differences, where two or more receivers have one
        *arrival_nodes(n, contract, arrival, TDOA_SIGMA_US),
        n("Mul", ["nll", "neg_half_nu1"], ["ll_tdoa"]),
        n("Add", ["ll_power", "ll_tdoa"], ["logits"]),
        *posterior_nodes(n, grid, SPACING_M),
        n("ReduceSum", ["above", "axis1"], ["measured"], keepdims=1),
        n("Div", ["measured", "slots"], ["measured_share"]),
        # How well the best grid point explains the SNRs (censored terms included), divided by
        # the receivers measured or by 1 when none is (large: a steeper or more scattered
        # propagation than assumed, so trust the posterior less).
        n("ReduceMax", ["ll_power"], ["best_ll"], axes=[1], keepdims=1),
        n("Max", ["measured", "one"], ["measured_safe"]),
        n("Div", ["best_ll", "measured_safe"], ["power_fit"]),
        n(
            "Concat",
            ["me", "mn", "log_sde", "log_sdn", "corr", "neg_entropy", "power_fit", "measured_share"],
            ["features"],
            axis=1,
        ),
    ]
    return nodes, n.initializers(), prefix + "features"


def run_power_grid(
    contract: ModelContract,
    region: PriorRegion,
    normalised: npt.NDArray[np.float32],
    mask: npt.NDArray[np.float32],
    batch: int = 64,
) -> npt.NDArray[np.float32]:
    """Power grid features (B, POWER_GRID_FEATURES) of normalised features, by onnxruntime."""
    model = standalone_model("power_grid", contract, power_grid_nodes(contract, region), POWER_GRID_FEATURES)
    return run_standalone(model, normalised, mask, "power grid", batch)
