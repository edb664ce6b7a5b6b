"""Training, calibration and evaluation of the reference ``features`` localizer.

The features model (graph built by ``localizer_graph``, data by ``training_data``) is one ONNX
graph made of two grid posteriors (ONNX nodes) and three scikit-learn regressors:

* position: where four or more receivers have a usable TDOA, the mean of the TDOA grid
  posterior (``tdoa_grid``); elsewhere the mean of the power + TDOA grid posterior over the
  region the training transmitters fill (``power_grid``), which gets the most out of one or two
  receivers and out of the ones that hear nothing.  Neither is fitted to the training
  captures, so their errors there are honest residuals;
* log-variance: boosted trees on normalised features + mask + both grid summaries → log of
  the squared east and north errors (so they learn where the position is unsure);
* correlation: a small MLP → the east/north error correlation.

Training is domain-randomised over the shift axes of ``lab.shift`` (propagation, noise and
gain, carrier, key-up, start offsets, oscillator and DC offsets, missing receivers), so the
uncertainty models learn where the inputs are less trustworthy; the features themselves are
waveform-robust (``models.features``).

The predicted log-sigmas then go through an affine map (shift, slope) per regime (TDOA grid,
power grid), chosen on a separate calibration split; the remaining heavy tail is measured on the
same split and declared in the contract's ``coverage`` (the Mahalanobis radius that holds each
share of the truths), which the consumer uses to draw the ellipse.  A held-out test split
reports coverage of the emitted ellipses (and of plain Gaussian ones), median and p95 error,
against a classical baseline (least squares on a log-distance path-loss law).  Requires the
``train`` extra (scikit-learn, skl2onnx, onnx).
"""

from __future__ import annotations

import dataclasses
import json
import math
from collections.abc import Callable
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
import numpy.typing as npt

from heimdall_stream.geo import LocalFrame, chi2_2_scale
from heimdall_stream.lab.localizer_graph import (
    ERROR_SCALE_M,
    LOG_CHI2_1_MEAN,
    MIN_TDOA_RECEIVERS,
    POSITION_SCALE_M,
    RHO_LIMIT,
    Calibration,
    export_features_model,
)
from heimdall_stream.lab.power_grid import POWER_GRID_FEATURES, PriorRegion
from heimdall_stream.lab.shift import NOMINAL, RandomisedLinks
from heimdall_stream.lab.simulator import IqSimulator
from heimdall_stream.lab.tdoa_grid import GRID_FEATURES, SHARE_COLUMN, UNIT_M
from heimdall_stream.lab.training_data import F32, F64, Dataset, model_input, normalisation, simulate_dataset
from heimdall_stream.models.contract import CONTRACT_KEY, ModelContract
from heimdall_stream.models.features import FEATURE_NAMES, normalise_features
from heimdall_stream.models.quality import capture_quality, widen
from heimdall_stream.network import Network

# The model's features: all but the frequency offset, which measures each receiver's oscillator
# and the waveform's spectrum, never the position (a model that learned FM voice misreads data).
MODEL_FEATURES = tuple(name for name in FEATURE_NAMES if name != "freq_offset_hz")
# A calibration group this large or larger has its own say in the declared coverage radii.
MIN_COVERAGE_GROUP = 100

# A progress hook: called with what a phase does as it begins (and its units of work, if counted).
StepHook = Callable[[str, int | None], None]


def _no_step(_text: str, _total: int | None) -> None:
    """The step hook when nobody displays progress."""


@dataclass(frozen=True)
class EvaluationReport:
    """How the reference model does on held-out captures, next to the baseline."""

    n_train: int
    n_calibration: int
    n_test: int
    # log σ ← shift + slope · log σ_predicted, for the TDOA-grid and the power-grid regime
    sigma_calibration: Calibration
    # share of test truths inside the emitted 68.27 % / 95 % ellipses (the contract's radii) ...
    coverage_68: float
    coverage_95: float
    # ... and inside plain Gaussian sqrt(chi2_2) ellipses of the same covariance
    coverage_68_gaussian: float
    coverage_95_gaussian: float
    median_error_m: float
    p95_error_m: float
    baseline_median_error_m: float
    baseline_p95_error_m: float
    baseline: str = "least squares on a log-distance path-loss law (1.5 km grid search)"
    # training, calibration and test captures randomised over the shift axes (lab.shift)
    randomised: bool = True
    # per shift variant: error and coverage on fresh captures (lab.shift_eval), when evaluated
    shift: tuple[dict[str, Any], ...] = ()

    def as_dict(self) -> dict[str, Any]:
        """JSON-ready form, as logged to MLflow."""
        return asdict(self)


def train_features_model(
    network: Network,
    *,
    n_train: int = 4000,
    n_calibration: int = 1000,
    n_test: int = 1000,
    seed: int = 7,
    progress: Callable[[int], None] | None = None,
    step: StepHook | None = None,
    randomise: bool = True,
) -> tuple[bytes, EvaluationReport]:
    """Simulate, train, calibrate and evaluate; return the ONNX bytes and the report.

    With ``randomise`` every capture's link is drawn by ``lab.shift.RandomisedLinks`` (domain
    randomisation over the shift axes, some variants held out); without it, the nominal link.

    ``step(text, total)`` is called as each phase begins (``total`` = captures to simulate for
    the counted one), ``progress(n)`` as captures are simulated: hooks for a progress display.
    """
    from sklearn.ensemble import GradientBoostingRegressor
    from sklearn.neural_network import MLPRegressor

    step = step or _no_step
    links = RandomisedLinks(seed) if randomise else None
    simulator = IqSimulator(network, seed=seed, links=links)
    step(f"simulating {n_train + n_calibration + n_test} captures", n_train + n_calibration + n_test)
    train = simulate_dataset(simulator, n_train, 0, progress=progress)
    calib = simulate_dataset(simulator, n_calibration, n_train, progress=progress)
    full_test = simulate_dataset(simulator, n_test, n_train + n_calibration, progress=progress)
    columns = [FEATURE_NAMES.index(name) for name in MODEL_FEATURES]
    train, calib, test = (
        dataclasses.replace(data, features=data.features[..., columns]) for data in (train, calib, full_test)
    )
    mean, std = normalisation(train)
    # The prior on where transmitters are: the box the training truths fill.
    region = PriorRegion.of(train.target_enu)
    lat0, lon0 = network.centroid()
    contract = ModelContract(
        input_kind="features",
        network=network,
        reference_latitude=lat0,
        reference_longitude=lon0,
        sample_rate_hz=simulator.sample_rate_hz,
        sample_count=simulator.sample_count,
        feature_names=MODEL_FEATURES,
        feature_mean=tuple(map(float, mean)),
        feature_std=tuple(map(float, std)),
        description="reference features localizer: TDOA grid or power grid position, boosted "
        "log-variance, calibrated ellipses",
        extra={"prior_region_enu_m": region.as_dict()},
    )

    def inputs(data: Dataset) -> F32:
        return model_input(data.features, data.mask, mean, std, contract, region=region)

    x_train = inputs(train)

    def mlp(hidden: tuple[int, ...], alpha: float) -> MLPRegressor:
        return MLPRegressor(
            hidden_layer_sizes=hidden,
            alpha=alpha,
            max_iter=600,
            early_stopping=True,
            n_iter_no_change=25,
            random_state=seed,
        )

    def boosted() -> GradientBoostingRegressor:
        return GradientBoostingRegressor(
            n_estimators=300,
            learning_rate=0.05,
            max_depth=3,
            min_samples_leaf=40,
            subsample=0.8,
            random_state=seed,
        )

    # Where enough receivers are synchronised the TDOA grid's posterior mean is the position;
    # elsewhere the power grid's.  Neither is fitted to the training captures (the power grid's
    # prior region aside), so their residuals there are honest errors to learn the spread from.
    slots = len(network.receivers)
    residual = (train.target_enu - combine(x_train, slots) * POSITION_SCALE_M) / ERROR_SCALE_M
    log_r2 = np.log(residual**2 + 1e-4)
    step("fitting the uncertainty models (boosted trees, correlation)", None)
    log_var = [boosted().fit(x_train, log_r2[:, axis]) for axis in (0, 1)]
    sigma_fit = np.exp(0.5 * (_predict_log_var(log_var, x_train) - LOG_CHI2_1_MEAN))
    t = np.clip(residual[:, 0] * residual[:, 1] / (sigma_fit[:, 0] * sigma_fit[:, 1]), -3, 3)
    correlation = mlp((32,), 1e-2).fit(x_train, t)

    def predict(data: Dataset, calibration: Calibration) -> tuple[F64, F64, npt.NDArray[np.bool_]]:
        x = inputs(data)
        grid_rows = uses_grid(x, slots)
        pos = combine(x, slots) * POSITION_SCALE_M
        log_sigma = 0.5 * (_predict_log_var(log_var, x) - LOG_CHI2_1_MEAN) + math.log(ERROR_SCALE_M)
        (grid_shift, grid_slope), (power_shift, power_slope) = calibration
        sig = np.exp(
            np.where(
                grid_rows[:, None], grid_shift + grid_slope * log_sigma, power_shift + power_slope * log_sigma
            )
        )
        rho = np.clip(correlation.predict(x), -RHO_LIMIT, RHO_LIMIT)
        return pos, np.column_stack([sig, rho]), grid_rows

    # The two regimes (TDOA grid, power grid) err differently: each gets its own calibration.
    step("calibrating the ellipses", None)
    pos_c, cov_c, grid_c = predict(calib, ((0.0, 1.0), (0.0, 1.0)))
    residual_c = calib.target_enu - pos_c
    overall = calibrate_sigmas(residual_c, cov_c)
    calibration: Calibration = (
        calibrate_sigmas(residual_c[grid_c], cov_c[grid_c]) if grid_c.sum() >= 100 else overall,
        calibrate_sigmas(residual_c[~grid_c], cov_c[~grid_c]) if (~grid_c).sum() >= 100 else overall,
    )

    # Errors stay heavier-tailed than a Gaussian after that: the contract declares the radius
    # that really holds each share of the calibration truths, in every regime and in nominal
    # as in shifted captures alike (the largest of the groups' radii).
    _pos, cov_calibrated, _grid = predict(calib, calibration)
    nominal = np.array(
        [links is None or links(i) == NOMINAL for i in range(n_train, n_train + n_calibration)]
    )
    contract = dataclasses.replace(
        contract,
        coverage=robust_coverage_radii(mahalanobis_sq(residual_c, cov_calibrated), 2 * grid_c + nominal),
    )

    step("exporting to ONNX and evaluating on held-out captures", None)
    model = export_features_model(
        log_var,
        correlation,
        contract=contract,
        width=x_train.shape[1],
        calibration=calibration,
        region=region,
    )
    # The report describes the exported file itself, run by onnxruntime as the consumer runs it.
    pos_t, cov_t = run_features_onnx(model.SerializeToString(), test, mean, std)
    # ... and through the consumer's consistency check, which widens doubtful captures' ellipses.
    test_inputs = {"receiver_features": normalise_features(test.features, test.mask, mean, std)}
    test_inputs["receiver_mask"] = test.mask
    cov_t = widen(cov_t, capture_quality(contract, test_inputs).widening)
    d2_test = mahalanobis_sq(test.target_enu - pos_t, cov_t)
    errors = np.hypot(*(test.target_enu - pos_t).T)
    baseline = np.hypot(*(test.target_enu - pathloss_baseline(full_test, network)).T)
    report = EvaluationReport(
        n_train=n_train,
        n_calibration=n_calibration,
        n_test=n_test,
        sigma_calibration=calibration,
        coverage_68=float(np.mean(d2_test <= contract.radius(0.6827) ** 2)),
        coverage_95=float(np.mean(d2_test <= contract.radius(0.95) ** 2)),
        coverage_68_gaussian=float(np.mean(d2_test <= chi2_2_scale(0.6827) ** 2)),
        coverage_95_gaussian=float(np.mean(d2_test <= chi2_2_scale(0.95) ** 2)),
        median_error_m=float(np.median(errors)),
        p95_error_m=float(np.percentile(errors, 95)),
        baseline_median_error_m=float(np.median(baseline)),
        baseline_p95_error_m=float(np.percentile(baseline, 95)),
        randomised=randomise,
    )
    evaluated = dataclasses.replace(contract, extra={**contract.extra, "evaluation": report.as_dict()})
    _set_contract(model, evaluated)
    return bytes(model.SerializeToString()), report


def run_features_onnx(onnx_bytes: bytes, data: Dataset, mean: F64, std: F64) -> tuple[F64, F64]:
    """Position and covariance of a dataset, from an exported features model via onnxruntime."""
    import onnxruntime as ort

    session = ort.InferenceSession(onnx_bytes, providers=["CPUExecutionProvider"])
    inputs = {
        "receiver_features": normalise_features(data.features, data.mask, mean, std),
        "receiver_mask": data.mask,
    }
    position, covariance = session.run(["position_enu_m", "covariance_enu"], inputs)
    return np.asarray(position, np.float64), np.asarray(covariance, np.float64)


def _set_contract(model: Any, contract: ModelContract) -> None:
    from onnx import helper

    del model.metadata_props[:]
    helper.set_model_props(model, {CONTRACT_KEY: contract.to_json()})


def uses_grid(x: F32, slots: int) -> npt.NDArray[np.bool_]:
    """Rows where ``MIN_TDOA_RECEIVERS`` or more receivers take part in the TDOA grid."""
    share = np.asarray(x[:, -GRID_FEATURES + SHARE_COLUMN], dtype=np.float64)
    return np.asarray(share * slots > MIN_TDOA_RECEIVERS - 0.5)


def combine(x: F32, slots: int) -> F64:
    """TDOA grid posterior mean where enough receivers take part, else the power grid's.

    In units of ``POSITION_SCALE_M``.
    """
    grid_mean = np.asarray(x[:, -GRID_FEATURES : -GRID_FEATURES + 2], dtype=np.float64)
    start = -GRID_FEATURES - POWER_GRID_FEATURES
    power_mean = np.asarray(x[:, start : start + 2], dtype=np.float64)
    chosen = np.where(uses_grid(x, slots)[:, None], grid_mean, power_mean) * (UNIT_M / POSITION_SCALE_M)
    return np.asarray(chosen)


def _predict_log_var(models: list[Any], x: F32) -> F64:
    return np.column_stack([m.predict(x) for m in models])


def mahalanobis_sq(residual: F64, covariance: F64) -> F64:
    """Squared Mahalanobis distance of east/north residuals under (σe, σn, ρ) covariances."""
    se, sn, rho = covariance[:, 0], covariance[:, 1], covariance[:, 2]
    e, n = residual[:, 0] / se, residual[:, 1] / sn
    return np.asarray((e * e - 2 * rho * e * n + n * n) / (1 - rho * rho), dtype=np.float64)


COVERAGE_LEVELS = (*np.round(np.arange(0.05, 0.951, 0.05), 2).tolist(), 0.6827, 0.975, 0.99)


def coverage_radii(d2: F64) -> tuple[tuple[float, float], ...]:
    """(confidence, radius) pairs: the Mahalanobis radius holding each share of ``d2``'s points."""
    levels = np.array(sorted(set(COVERAGE_LEVELS)))
    radii = np.sqrt(np.quantile(d2, levels))
    # Strictly increasing even where a small sample ties two quantiles.
    radii = np.maximum.accumulate(radii) + np.arange(len(radii)) * 1e-9
    return tuple((float(p), float(r)) for p, r in zip(levels, radii, strict=True))


def robust_coverage_radii(d2: F64, groups: npt.NDArray[np.integer[Any]]) -> tuple[tuple[float, float], ...]:
    """``coverage_radii`` of all of ``d2``, each radius raised to the largest of any group's.

    Groups (labels) with fewer than ``MIN_COVERAGE_GROUP`` points are only part of the whole.
    """
    radii = np.array([r for _, r in coverage_radii(d2)])
    for label in np.unique(groups):
        member = groups == label
        if member.sum() >= MIN_COVERAGE_GROUP:
            radii = np.maximum(radii, [r for _, r in coverage_radii(d2[member])])
    radii = np.maximum.accumulate(radii) + np.arange(len(radii)) * 1e-9
    levels = sorted(set(COVERAGE_LEVELS))
    return tuple((float(p), float(r)) for p, r in zip(levels, radii, strict=True))


def calibrate_sigmas(residual: F64, covariance: F64) -> tuple[float, float]:
    """Affine map of log σ that best matches nominal coverage at 68.27 % and 95 % together.

    One global factor cannot fix both levels when errors are heavier-tailed than the predicted
    spread; letting the factor grow with the predicted σ (slope ≠ 1) usually can.
    """
    levels = np.array([0.6827, 0.95])
    thresholds = np.array([chi2_2_scale(p) ** 2 for p in levels])
    log_sigma = np.log(covariance[:, :2])
    centre = float(np.median(log_sigma))
    best, best_worst = (0.0, 1.0), math.inf
    for slope in np.linspace(0.5, 2.0, 61):
        for shift in np.linspace(-2.0, 2.0, 161):
            sig = np.exp(centre + shift + slope * (log_sigma - centre))
            d2 = mahalanobis_sq(residual, np.column_stack([sig, covariance[:, 2]]))
            coverage = (d2[:, None] <= thresholds[None, :]).mean(axis=0)
            worst = float(np.abs(coverage - levels).max())
            if worst < best_worst:
                best, best_worst = (centre * (1.0 - slope) + shift, float(slope)), worst
    return best


def pathloss_baseline(data: Dataset, network: Network, exponent: float = 2.8) -> F64:
    """Classical estimate: least squares of signal power on ``P0 - 10 n log10(d)`` per capture.

    A grid search (1.5 km spacing) with P0 solved in closed form at each grid point.  Receivers
    that did not hear the signal are left out (unless fewer than three did).
    """
    frame = LocalFrame(*network.centroid())
    rx_e, rx_n = frame.to_enu(
        [r.latitude for r in network.receivers], [r.longitude for r in network.receivers]
    )
    rx = np.stack([rx_e, rx_n], axis=1)
    signal = data.features[..., FEATURE_NAMES.index("signal_dbfs")].astype(np.float64)
    heard = data.features[..., FEATURE_NAMES.index("presence")] > 0
    extent = np.abs(rx).max() + 20_000.0
    axis = np.arange(-extent, extent, 1_500.0)
    grid = np.stack(np.meshgrid(axis, axis), axis=-1).reshape(-1, 2)
    log_d = 10 * exponent * np.log10(np.maximum(np.linalg.norm(grid[:, None, :] - rx[None], axis=-1), 100.0))
    out = np.zeros((len(signal), 2))
    for b in range(len(signal)):
        use = heard[b] if heard[b].sum() >= 3 else data.mask[b] > 0
        s, ld = signal[b, use], log_d[:, use]
        p0 = (s[None, :] + ld).mean(axis=1, keepdims=True)
        sse = ((p0 - ld - s[None, :]) ** 2).sum(axis=1)
        out[b] = grid[int(np.argmin(sse))]
    return out


def report_json(report: EvaluationReport) -> str:
    """Pretty JSON of an evaluation report."""
    return json.dumps(report.as_dict(), indent=2)
