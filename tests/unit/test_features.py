"""Feature extraction: shapes, determinism, physics sanity, and the same numbers as the
straightforward reference implementation (``reference_extract_features``).

Tolerances of the comparison with the reference (float32 outputs):

* dB features: 1e-4 dB absolute (a float32 ulp at -120 dB is 7.6e-6 dB).  Both implementations
  compute the periodogram, its sum and its quantile with the same float32/float64 operations, so
  in practice these are identical to the bit.
* freq_offset_hz, presence, tdoa_valid: identical.  They come from an argmax of, and thresholds
  on, those same numbers; a flip is only accepted where the reference SNR lies within
  ``SNR_FLOAT_NOISE_DB`` of a threshold (none has been seen).  A capture with such a flip is left
  out of the tdoa comparison, since its mean arrival then averages other receivers.
* tdoa_quality: 1e-4 absolute (a ratio of float64 sums of the same float32 discriminators).
* tdoa_us: 1e-3 µs absolute (5e-5 of a sample at 50 kHz).  The discriminator's complex64
  product z[1:]·conj(z[:-1]) is rounded in its last bit differently by numpy depending on the
  operands' layout: with float (not CI16) samples even the reference gives a capture slightly
  different bits alone than in a batch (measured up to 1.5e-5 µs), and the row-by-row
  discriminator here differs from the reference by up to 6.1e-5 µs (300 random batches; the
  simulated CI16 captures agree to the bit).  Everything after it is the same computation.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import numpy.typing as npt
import pytest
import scipy.fft
from hypothesis import given, settings
from hypothesis import strategies as st
from pyproj import Geod

from heimdall_stream.lab.simulator import SPEED_OF_LIGHT, IqSimulator, LinkModel, Transmitter
from heimdall_stream.models import features as features_module
from heimdall_stream.models.features import (
    FEATURE_NAMES,
    MAX_TDOA_S,
    MIN_PEAK_QUALITY,
    NOISE_QUANTILE,
    PRESENCE_SNR_DB,
    TDOA_SNR_DB,
    assemble_batch,
    extract_features,
)
from heimdall_stream.models.tdoa import GATE_NOISE_FACTOR, GATE_SAMPLES, STEP_SHARE
from heimdall_stream.network import load_network
from heimdall_stream.wire.messages import SampleFormat

NETWORK = load_network()
COL = {name: i for i, name in enumerate(FEATURE_NAMES)}
DB_FEATURES = ("power_dbfs", "noise_floor_dbfs", "snr_db", "signal_dbfs", "relative_signal_db")
DB_TOLERANCE = 1e-4
TDOA_TOLERANCE_US = 1e-3
QUALITY_TOLERANCE = 1e-4
SNR_FLOAT_NOISE_DB = 1e-3
_TINY = 1e-20
F32 = npt.NDArray[np.float32]
F64 = npt.NDArray[np.float64]
Batch = tuple[F32, F32, F64, F64]


def reference_extract_features(
    iq: F32, mask: F32, sample_rate_hz: npt.ArrayLike, clock_offset_s: F64 | None = None
) -> F32:
    """The straightforward implementation (whole-batch numpy, np.quantile, np.angle): the
    definition the optimised ``extract_features`` must reproduce."""
    batch, slots, _, length = iq.shape
    fs = np.broadcast_to(np.asarray(sample_rate_hz, dtype=np.float64), (batch,))
    present = mask.astype(bool)
    offsets = (
        np.full((batch, slots), np.nan) if clock_offset_s is None else np.asarray(clock_offset_s, np.float64)
    )
    z = iq[:, :, 0, :].astype(np.complex64)
    z.imag = iq[:, :, 1, :]
    spectrum = scipy.fft.fft(z, axis=-1)
    periodogram = (spectrum.real**2 + spectrum.imag**2) / np.float32(length * length)
    periodogram[..., 0] = 0.0
    power = periodogram.sum(axis=-1, dtype=np.float64)
    noise = np.quantile(periodogram, NOISE_QUANTILE, axis=-1) * length / -np.log1p(-NOISE_QUANTILE)
    signal = np.maximum(power - noise, noise * 0.01)
    snr_db = 10.0 * np.log10((signal + _TINY) / (noise + _TINY))
    peak = np.argmax(periodogram, axis=-1)
    freq_offset = np.fft.fftfreq(length)[peak] * fs[:, None]
    heard = present & (snr_db > PRESENCE_SNR_DB)
    tdoa_us, tdoa_valid, quality = _reference_tdoa(z, snr_db, noise, heard=heard, offsets=offsets, fs=fs)
    signal_db = 10.0 * np.log10(signal + _TINY)
    strongest = np.max(np.where(present, signal_db, -np.inf), axis=1, keepdims=True)
    relative_db = np.where(present, signal_db - np.where(np.isfinite(strongest), strongest, 0.0), 0.0)
    features = np.stack(
        [
            10.0 * np.log10(power + _TINY),
            10.0 * np.log10(noise + _TINY),
            snr_db,
            signal_db,
            relative_db,
            freq_offset,
            heard.astype(np.float64),
            tdoa_us,
            tdoa_valid.astype(np.float64),
            quality,
        ],
        axis=-1,
    )
    features[~present] = 0.0
    return features.astype(np.float32)


def _reference_tdoa(
    z: Any, snr_db: F64, noise: F64, *, heard: Any, offsets: F64, fs: Any
) -> tuple[F64, Any, F64]:
    batch, slots = snr_db.shape
    synced = heard & np.isfinite(offsets) & (snr_db > TDOA_SNR_DB)
    ranked = np.where(synced, snr_db, -np.inf)
    reference = np.argmax(ranked, axis=1)
    rows = np.arange(batch)
    has_reference = np.isfinite(ranked[rows, reference])
    correlated = synced & has_reference[:, None]
    clock = np.where(correlated, offsets - offsets[rows, reference][:, None], 0.0)
    dc_free = z - z.mean(axis=-1, keepdims=True)
    discriminator = np.angle(dc_free[..., 1:] * np.conj(dc_free[..., :-1])).astype(np.float32)
    # Gate: mean power of the GATE_SAMPLES samples around each step above the noise.
    power = np.abs(dc_free.astype(np.complex128)) ** 2
    kernel = np.ones(GATE_SAMPLES) / GATE_SAMPLES
    length = discriminator.shape[-1]
    gate = np.zeros(discriminator.shape, dtype=bool)
    for b in range(batch):
        for n in range(slots):
            local = np.convolve(power[b, n], kernel, mode="valid")
            if local.size:
                around = local[np.clip(np.arange(length) - GATE_SAMPLES // 2, 0, local.size - 1)]
                gate[b, n] = (
                    (around > GATE_NOISE_FACTOR * noise[b, n])
                    & (power[b, n, :-1] > STEP_SHARE * around)
                    & (power[b, n, 1:] > STEP_SHARE * around)
                )
    discriminator[~gate] = 0.0
    kept = gate.sum(axis=-1, keepdims=True)
    means = discriminator.sum(axis=-1, keepdims=True, dtype=np.float64) / np.maximum(kept, 1)
    discriminator = np.where(gate, discriminator - means.astype(np.float32), 0.0).astype(np.float32)
    energy = (discriminator.astype(np.float64) ** 2).sum(axis=-1)
    n_fft = scipy.fft.next_fast_len(2 * length, real=True)
    spectrum = scipy.fft.rfft(discriminator, n=n_fft, axis=-1)
    ref_spectrum = spectrum[rows, reference][:, None, :]
    correlation = scipy.fft.irfft(spectrum * np.conj(ref_spectrum), n=n_fft, axis=-1)
    max_lag = int(np.ceil(MAX_TDOA_S * float(np.max(fs))))
    centre_lag = np.round(-clock * fs[:, None]).astype(np.intp)
    lag_grid = np.clip(centre_lag[..., None] + np.arange(-max_lag, max_lag + 1), -length, length)
    window = np.take_along_axis(correlation, lag_grid % n_fft, axis=-1)
    peak = np.clip(np.argmax(window, axis=-1), 1, window.shape[-1] - 2)
    left = np.take_along_axis(window, (peak - 1)[..., None], axis=-1)[..., 0]
    centre = np.take_along_axis(window, peak[..., None], axis=-1)[..., 0]
    right = np.take_along_axis(window, (peak + 1)[..., None], axis=-1)[..., 0]
    curvature = left - 2.0 * centre + right
    safe = np.where(curvature < 0, curvature, -1.0)
    fraction = np.where(curvature < 0, 0.5 * (left - right) / safe, 0.0)
    lag = np.take_along_axis(lag_grid, peak[..., None], axis=-1)[..., 0] + np.clip(fraction, -0.5, 0.5)
    norm = np.sqrt(energy * energy[rows, reference][:, None])
    quality = np.where(correlated & (norm > 0), np.clip(centre / np.where(norm > 0, norm, 1.0), 0, 1), 0.0)
    is_reference = np.zeros((batch, slots), dtype=bool)
    is_reference[rows, reference] = has_reference
    sharp = correlated & ~is_reference & (quality >= MIN_PEAK_QUALITY)
    quality[is_reference] = np.max(np.where(sharp, quality, 0.0), axis=1)[has_reference]
    valid = sharp | (is_reference & sharp.any(axis=1)[:, None])
    tdoa_s = lag / fs[:, None] + clock
    count = np.maximum(valid.sum(axis=1, keepdims=True), 1)
    mean_arrival = np.where(valid, tdoa_s, 0.0).sum(axis=1, keepdims=True) / count
    return np.where(valid, (tdoa_s - mean_arrival) * 1e6, 0.0), valid, quality


def assert_matches_reference(
    got: npt.NDArray[np.float32], want: npt.NDArray[np.float32], *, compare_tdoa: bool = True
) -> None:
    """``got`` equals the reference ``want`` within the tolerances of the module docstring."""
    assert got.shape == want.shape
    assert got.dtype == np.float32
    for name in DB_FEATURES:
        np.testing.assert_allclose(got[..., COL[name]], want[..., COL[name]], rtol=0, atol=DB_TOLERANCE)
    np.testing.assert_array_equal(got[..., COL["freq_offset_hz"]], want[..., COL["freq_offset_hz"]])
    snr = want[..., COL["snr_db"]]
    flips = np.zeros(want.shape[:2], dtype=bool)
    for name, threshold in (("presence", PRESENCE_SNR_DB), ("tdoa_valid", TDOA_SNR_DB)):
        differs = got[..., COL[name]] != want[..., COL[name]]
        assert not (differs & (np.abs(snr - threshold) >= SNR_FLOAT_NOISE_DB)).any(), name
        flips |= differs
    same = ~flips.any(axis=1)
    if not compare_tdoa:
        return
    np.testing.assert_allclose(
        got[same][..., COL["tdoa_us"]], want[same][..., COL["tdoa_us"]], rtol=0, atol=TDOA_TOLERANCE_US
    )
    np.testing.assert_allclose(
        got[same][..., COL["tdoa_quality"]],
        want[same][..., COL["tdoa_quality"]],
        rtol=0,
        atol=QUALITY_TOLERANCE,
    )


def _batch(sims: list[Any]) -> Batch:
    return assemble_batch([s.capture for s in sims], NETWORK.index(), 10_000)


def test_shape_dtype_and_absent_slots_are_zero():
    sim = IqSimulator(NETWORK, LinkModel(offline_probability=0.4), seed=3)
    caps = [sim.generate(i) for i in range(6)]
    iq, mask, fs, offsets = _batch(caps)
    features = extract_features(iq, mask, fs, offsets)
    assert features.shape == (6, len(NETWORK.receivers), len(FEATURE_NAMES))
    assert features.dtype == np.float32
    assert np.isfinite(features).all()
    assert (features[mask == 0] == 0).all()
    assert (mask == 0).any()


def test_deterministic_and_batch_independent():
    sim = IqSimulator(NETWORK, seed=5)
    caps = [sim.generate(i) for i in range(4)]
    together = extract_features(*_batch(caps))
    alone = np.concatenate([extract_features(*_batch([c])) for c in caps])
    np.testing.assert_allclose(together, alone, rtol=1e-5, atol=1e-4)
    np.testing.assert_array_equal(together, extract_features(*_batch(caps)))


def test_snr_and_noise_floor_track_the_simulated_truth():
    sim = IqSimulator(NETWORK, LinkModel(offline_probability=0.0), seed=11)
    caps = [sim.generate(i) for i in range(16)]
    features = extract_features(*_batch(caps))
    expected_noise_dbfs = sim.noise_floor_dbm - sim.link.full_scale_dbm
    noise = features[..., COL["noise_floor_dbfs"]]
    # Far from the signal the noise estimate is within a dB; strong FM sidebands lift it a little.
    assert np.median(noise) == pytest.approx(expected_noise_dbfs, abs=3.0)
    truth = np.array([[c.snr_db[r] for r in NETWORK.ids] for c in caps])
    measured = features[..., COL["snr_db"]]
    usable = (truth > 5) & (truth < 30)
    assert np.median(np.abs(measured[usable] - truth[usable])) < 2.0
    assert (features[..., COL["presence"]][truth > 10] == 1).all()


def test_a_receiver_that_hears_only_noise_is_not_present():
    sim = IqSimulator(NETWORK, LinkModel(offline_probability=0.0), seed=1)
    # 1 mW far south of Genova: Milano hears nothing.
    cap = sim.generate(0, Transmitter(44.0, 8.9, 0.0, 145.0e6))
    features = extract_features(*_batch([cap]))
    assert cap.snr_db["milano-baggio"] < -10
    assert features[0, NETWORK.index()["milano-baggio"], COL["presence"]] == 0


@given(lat=st.floats(44.4, 45.5), lon=st.floats(7.3, 9.1))
@settings(max_examples=8, deadline=None)
def test_tdoa_matches_the_geometry_for_strong_synchronised_receivers(lat, lon):
    sim = IqSimulator(
        NETWORK, LinkModel(offline_probability=0.0, synced_fraction=1.0, shadowing_db=0.0), seed=2
    )
    cap = sim.generate(0, Transmitter(lat, lon, 47.0, 145.0e6))
    features = extract_features(*_batch([cap]))[0]
    geod = Geod(ellps="WGS84")
    dist = np.array([geod.inv(lon, lat, r.longitude, r.latitude)[2] for r in NETWORK.receivers])
    valid = features[:, COL["tdoa_valid"]] > 0
    assert valid.sum() >= 3
    assert features[valid, COL["tdoa_us"]].sum() == pytest.approx(0.0, abs=1e-2)
    arrival_us = dist / SPEED_OF_LIGHT * 1e6
    expected_us = arrival_us - arrival_us[valid].mean()
    good = valid & (features[:, COL["snr_db"]] > 15)
    errors = np.abs(features[good, COL["tdoa_us"]] - expected_us[good])
    assert np.median(errors) < 5.0  # 1/10 of a sample at 50 kHz


def test_rejects_a_malformed_batch():
    with pytest.raises(ValueError, match=r"\(B, N, 2, L\)"):
        extract_features(np.zeros((2, 7, 3, 10), np.float32), np.ones((2, 7), np.float32), 50e3)


def _simulated(
    seed: int,
    count: int,
    link: LinkModel,
    sample_count: int = 10_000,
    *,
    sample_rate: float = 50_000.0,
    fmt: SampleFormat = SampleFormat.CI16,
) -> Batch:
    sim = IqSimulator(
        NETWORK, link, sample_rate_hz=sample_rate, sample_count=sample_count, sample_format=fmt, seed=seed
    )
    return assemble_batch([sim.generate(i).capture for i in range(count)], NETWORK.index(), sample_count)


@given(
    seed=st.integers(0, 2**16),
    count=st.integers(1, 6),
    offline=st.floats(0.0, 0.7),
    synced=st.floats(0.0, 1.0),
    shadowing=st.floats(0.0, 10.0),
    sample_count=st.sampled_from([1000, 4096, 10_000]),
    sample_rate=st.sampled_from([25_000.0, 50_000.0, 100_000.0]),
    fmt=st.sampled_from(list(SampleFormat)),
)
@settings(max_examples=30, deadline=None)
def test_simulated_captures_match_the_reference(  # noqa: PLR0917 (hypothesis passes them by name)
    seed, count, offline, synced, shadowing, sample_count, sample_rate, fmt
):
    link = LinkModel(offline_probability=offline, synced_fraction=synced, shadowing_db=shadowing)
    iq, mask, fs, offsets = _simulated(seed, count, link, sample_count, sample_rate=sample_rate, fmt=fmt)
    got = extract_features(iq, mask, fs, offsets)
    assert_matches_reference(got, reference_extract_features(iq, mask, fs, offsets))
    assert_matches_reference(extract_features(iq, mask, fs), reference_extract_features(iq, mask, fs))


def _random_batch(rng: np.random.Generator, batch: int, slots: int, length: int, quantised: bool) -> Batch:
    """Noise plus, per capture, one shared random waveform that each slot receives delayed,
    frequency-shifted and rotated at its own SNR; absent slots hold samples too (ignored)."""
    shift = 24
    iq = np.empty((batch, slots, 2, length), dtype=np.float32)
    for b in range(batch):
        # Narrowband (a tenth of the band), as the noise floor estimate expects of a signal.
        spectrum = rng.standard_normal(length + shift) + 1j * rng.standard_normal(length + shift)
        spectrum[np.abs(np.fft.fftfreq(length + shift)) > 0.05] = 0
        base = np.fft.ifft(spectrum)
        base *= math.sqrt(2.0 / max(np.mean(np.abs(base) ** 2), 1e-30))  # the noise's power
        for n in range(slots):
            delay = int(rng.integers(0, shift))
            snr_db = rng.uniform(-10.0, 40.0)
            carrier = np.exp(1j * (rng.uniform(0, 2 * math.pi) + rng.uniform(-0.3, 0.3) * np.arange(length)))
            noise = rng.standard_normal(length) + 1j * rng.standard_normal(length)
            z = (10 ** (snr_db / 20) * base[delay : delay + length] * carrier + noise) * 10 ** rng.uniform(
                -4, 0
            )
            iq[b, n, 0], iq[b, n, 1] = z.real, z.imag
    if quantised:  # CI16-like: few distinct values, many ties in the periodogram
        iq = np.round(iq * 64) / np.float32(64)
    mask = (rng.random((batch, slots)) < 0.75).astype(np.float32)
    offsets = np.where(rng.random((batch, slots)) < 0.3, np.nan, rng.normal(0.0, 1e-5, (batch, slots)))
    fs = rng.choice([10e3, 50e3, 200e3], size=batch)
    return iq, mask, fs, offsets


@given(
    seed=st.integers(0, 2**32 - 1),
    batch=st.integers(1, 4),
    slots=st.integers(1, 6),
    length=st.sampled_from([2, 3, 17, 256, 1023, 1024, 1025, 3000, 8192]),
    quantised=st.booleans(),
)
@settings(max_examples=40, deadline=None)
def test_random_iq_matches_the_reference(seed, batch, slots, length, quantised):
    iq, mask, fs, offsets = _random_batch(np.random.default_rng(seed), batch, slots, length, quantised)
    # A capture of two or three samples leaves a discriminator of one or two values; after the
    # mean removal their correlation peaks in a tie (float noise, or lags -1 and +1 equal) that
    # either implementation may break its own way, so only the other features are compared.
    assert_matches_reference(
        extract_features(iq, mask, fs, offsets),
        reference_extract_features(iq, mask, fs, offsets),
        compare_tdoa=length > 3,
    )


def test_random_iq_exercises_valid_tdoa_rows():
    # The random batches above do contain synchronised receivers heard above the TDOA threshold.
    iq, mask, fs, offsets = _random_batch(np.random.default_rng(7), 4, 6, 3000, False)
    assert extract_features(iq, mask, fs, offsets)[..., COL["tdoa_valid"]].sum() >= 4


def test_degenerate_batches_match_the_reference():
    sim_iq, sim_mask, sim_fs, sim_offsets = _simulated(4, 3, LinkModel(synced_fraction=1.0))
    cases = [
        # nobody present
        (sim_iq, np.zeros_like(sim_mask), sim_fs, sim_offsets),
        # present receivers that recorded nothing but zeros: every periodogram bin ties
        (np.zeros_like(sim_iq), sim_mask, sim_fs, sim_offsets),
        # one capture, one receiver
        (sim_iq[:1, :1], sim_mask[:1, :1], sim_fs[:1], sim_offsets[:1, :1]),
    ]
    for iq, mask, fs, offsets in cases:
        assert_matches_reference(
            extract_features(iq, mask, fs, offsets), reference_extract_features(iq, mask, fs, offsets)
        )


def test_non_finite_samples_give_what_the_reference_gives():
    iq, mask, fs, offsets = _simulated(5, 2, LinkModel(offline_probability=0.0, synced_fraction=1.0))
    iq[0, 1, 0, 17] = np.nan
    iq[1, 2, 1, 99] = np.inf
    with np.errstate(invalid="ignore"):
        got = extract_features(iq, mask, fs, offsets)
        want = reference_extract_features(iq, mask, fs, offsets)
    np.testing.assert_array_equal(np.isnan(got), np.isnan(want))
    finite = np.isfinite(want).all(axis=(1, 2))
    assert_matches_reference(got[finite], want[finite])


def test_results_do_not_depend_on_the_fft_thread_count():
    iq, mask, fs, offsets = _simulated(6, 24, LinkModel(offline_probability=0.2))
    one = extract_features(iq, mask, fs, offsets, workers=1)
    assert_matches_reference(extract_features(iq, mask, fs, offsets, workers=2), one)
    assert_matches_reference(one, reference_extract_features(iq, mask, fs, offsets))


@given(
    seed=st.integers(0, 2**32 - 1),
    rows=st.integers(1, 5),
    length=st.sampled_from([1, 2, 5, 1023, 1024, 2048, 5000]),
    distinct=st.sampled_from([1, 2, 7, 1000, None]),
    layout=st.sampled_from(["random", "sorted", "reversed", "blocks"]),
    q=st.sampled_from([NOISE_QUANTILE, 0.0, 0.5, 0.999, 1.0]),
)
@settings(max_examples=60, deadline=None)
def test_low_quantile_is_np_quantile_bit_for_bit(seed, rows, length, distinct, layout, q):  # noqa: PLR0917
    rng = np.random.default_rng(seed)
    values = rng.exponential(size=(rows, length)).astype(np.float32)
    if distinct is not None:  # ties
        values = rng.choice(rng.exponential(size=distinct), size=(rows, length)).astype(np.float32)
    if layout == "sorted":
        values.sort(axis=-1)
    elif layout == "reversed":
        values = np.ascontiguousarray(np.sort(values, axis=-1)[:, ::-1])
    elif layout == "blocks":  # a strong band, as an FM signal's bins in a periodogram
        values[:, : length // 3] *= 1e4
    got = features_module._low_quantile(values, q)
    np.testing.assert_array_equal(got, np.quantile(values, q, axis=-1))
    assert got.dtype == np.float32


@pytest.mark.parametrize("seed", range(6))
def test_full_size_simulated_batches_match_the_reference(seed):
    # Reference-size captures (7 receivers × 10,000 samples), batches as large as the consumer's.
    iq, mask, fs, offsets = _simulated(seed, 16, LinkModel(offline_probability=0.1, shadowing_db=8.0))
    got = extract_features(iq, mask, fs, offsets)
    assert_matches_reference(got, reference_extract_features(iq, mask, fs, offsets))
    assert got[..., COL["tdoa_valid"]].sum() > 0


def _geometry_errors_us(features: F32, tx: Transmitter) -> F64:
    geod = Geod(ellps="WGS84")
    dist = np.array(
        [geod.inv(tx.longitude, tx.latitude, r.longitude, r.latitude)[2] for r in NETWORK.receivers]
    )
    valid = features[:, COL["tdoa_valid"]] > 0
    arrival_us = dist / SPEED_OF_LIGHT * 1e6
    expected_us = arrival_us - arrival_us[valid].mean()
    return np.asarray(np.abs(features[valid, COL["tdoa_us"]] - expected_us[valid]))


@pytest.mark.parametrize("modulation", ["fm", "data"])
def test_reported_start_offsets_and_key_up_still_give_the_geometry(modulation):
    # Receivers start recording up to 40 ms apart (reported), the transmitter keys up 60 ms in.
    link = LinkModel(offline_probability=0.0, synced_fraction=1.0, shadowing_db=0.0, start_offset_s=0.04)
    sim = IqSimulator(NETWORK, link, seed=8)
    tx = Transmitter(45.0, 8.0, 47.0, 145.0e6, modulation=modulation, key_up_s=0.06)
    cap = sim.generate(0, tx)
    offsets_ms = [abs(r.timestamp_offset_ns or 0) / 1e6 for r in cap.capture.receivers]
    assert max(offsets_ms) > 10 * MAX_TDOA_S * 1e3  # far outside the plain lag window
    features = extract_features(*_batch([cap]))[0]
    assert (features[:, COL["tdoa_valid"]] > 0).sum() >= 4
    assert np.median(_geometry_errors_us(features, tx)) < 5.0


def test_an_unmodulated_carrier_gives_no_time_difference():
    link = LinkModel(offline_probability=0.0, synced_fraction=1.0, shadowing_db=0.0)
    cap = IqSimulator(NETWORK, link, seed=9).generate(0, Transmitter(45.0, 8.0, 47.0, 145.0e6, "carrier"))
    features = extract_features(*_batch([cap]))[0]
    assert (features[:, COL["snr_db"]] > 20).sum() >= 4  # heard loud and clear ...
    assert (features[:, COL["tdoa_valid"]] == 0).all()  # ... but it carries no time
    assert (features[:, COL["tdoa_quality"]] < MIN_PEAK_QUALITY).all()


def test_a_dc_offset_alone_is_not_a_signal():
    link = LinkModel(offline_probability=0.0, dc_offset_dbfs=(-45.0, -45.0))
    sim = IqSimulator(NETWORK, link, seed=1)
    cap = sim.generate(0, Transmitter(44.0, 8.9, 0.0, 145.0e6))  # 1 mW: Milano hears nothing
    features = extract_features(*_batch([cap]))
    assert features[0, NETWORK.index()["milano-baggio"], COL["presence"]] == 0


def test_shifted_captures_match_the_reference():
    link = LinkModel(
        start_offset_s=0.03, key_up_probability=0.5, modulation=(0.5, 0.3, 0.2), dc_offset_dbfs=(-70.0, -50.0)
    )
    iq, mask, fs, offsets = _simulated(12, 8, link)
    assert_matches_reference(
        extract_features(iq, mask, fs, offsets), reference_extract_features(iq, mask, fs, offsets)
    )
