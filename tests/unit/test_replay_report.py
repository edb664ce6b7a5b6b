"""The replay report: bounded histograms, coverage of calibrated ellipses, agreement, resumption."""

from __future__ import annotations

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

from heimdall_stream.geo import LocalFrame
from heimdall_stream.replay.report import Answer, Quantiles, VersionReport
from heimdall_stream.wire.messages import Covariance, Ellipse, Lineage, Localization, Timings

FRAME = LocalFrame(45.0, 7.5)


@settings(max_examples=50)
@given(
    st.lists(st.floats(min_value=0.02, max_value=5e6), min_size=1, max_size=300), st.sampled_from([0.5, 0.95])
)
def test_quantiles_are_within_one_bin_of_the_exact_ones(values: list[float], q: float) -> None:
    histogram = Quantiles.metres()
    histogram.add(values)
    exact = float(np.quantile(values, q, method="inverted_cdf"))
    found = histogram.quantile(q)
    assert found is not None and exact <= found <= exact * 1.01
    copy = Quantiles.metres()
    copy.load(histogram.to_json())
    assert copy.quantile(q) == found and len(copy) == len(values)


def test_an_empty_histogram_has_no_quantile() -> None:
    assert Quantiles.unit().quantile(0.5) is None


def localization(capture_id: str, east: float, north: float, sigma: float) -> Localization:
    lat, lon = FRAME.to_latlon(east, north)
    return Localization(
        capture_id,
        "m",
        "1",
        float(lat),
        float(lon),
        Covariance(sigma, sigma, 0.0),
        Ellipse(0.95, 1.0, 1.0, 0.0),
        "{}",
        (),
        False,
        Timings(0, 0, 0),
        Lineage(0, 0, "b", 1),
        None,  # type: ignore[arg-type]
    )


def test_coverage_of_a_calibrated_model_matches_its_confidence() -> None:
    rng = np.random.default_rng(1)
    sigma = 500.0
    truth_offsets = rng.normal(0.0, sigma, size=(4000, 2))
    answers = [localization(f"c{i}", 0.0, 0.0, sigma) for i in range(len(truth_offsets))]
    lat, lon = FRAME.to_latlon(truth_offsets[:, 0], truth_offsets[:, 1])
    truth = {f"c{i}": (float(lat[i]), float(lon[i])) for i in range(len(answers))}
    report = VersionReport("m/1")
    report.add(FRAME, answers, truth, {})
    summary = report.summary()
    assert summary["with_truth"] == 4000
    assert abs(summary["coverage"]["68"] - 0.6827) < 0.03 and abs(summary["coverage"]["95"] - 0.95) < 0.015
    median = summary["error_m"]["median"]
    assert abs(median - sigma * np.sqrt(2 * np.log(2))) < 0.05 * sigma  # Rayleigh median


def test_agreement_with_the_live_answers_and_resumption() -> None:
    answers = [localization(c, 0.0, 0.0, 100.0) for c in "ac"] + [localization("b", 300.0, 400.0, 100.0)]
    same = Answer(answers[0].latitude, answers[0].longitude, (100.0, 100.0, 0.0), "3")
    live = {"a": same, "b": same, "c": same}
    report = VersionReport("m/4")
    report.add(FRAME, answers, {}, live)
    report.add_dead_letters(["non_finite", "non_finite"])
    summary = report.summary()["against_live"]
    assert summary["compared"] == 3 and summary["live_versions"] == {"3": 3}
    assert summary["distance_m"]["median"] < 0.02 and abs(summary["distance_m"]["p95"] - 500.0) < 5.0
    assert summary["overlap"]["median"] == 1.0  # identical Gaussians
    assert summary["overlap"]["p05"] < 0.05  # 5 σ apart: almost no overlap
    again = VersionReport.from_json(report.to_json())
    assert again.summary() == report.summary()
    assert again.summary()["dead_letters"] == {"non_finite": 2}
