"""Time differences of arrival: gated FM-discriminator cross-correlation between receivers.

Part of the feature extraction (``heimdall_stream.models.features``, whose docstring defines the
``tdoa_us``, ``tdoa_valid`` and ``tdoa_quality`` features): vectorised over a batch, only the
slots that can have a TDOA are correlated, rows in chunks of ``CHUNK_ROWS``.
"""

from __future__ import annotations

import itertools
import math

import numpy as np
import numpy.typing as npt
import scipy.fft

F32 = npt.NDArray[np.float32]
F64 = npt.NDArray[np.float64]
Ints = npt.NDArray[np.intp]
Bools = npt.NDArray[np.bool_]

MAX_TDOA_S = 1.5e-3
TDOA_SNR_DB = 10.0
CHUNK_ROWS = 16  # rows correlated per step: temporaries stay a few MB
# Normalised correlation peak below which a time difference is noise: FM voice or data above
# 10 dB SNR mostly correlates at 0.2 or more, an unmodulated carrier's discriminator at ~0.03.
MIN_PEAK_QUALITY = 0.12
# Discriminator steps count where the mean power over GATE_SAMPLES samples around them
# exceeds this many times the noise power (noise alone almost never does).
GATE_NOISE_FACTOR = 3.0
GATE_SAMPLES = 16
STEP_SHARE = 0.25  # ... and where both samples of the step hold this share of that power


def tdoa(
    planes: F32, snr_db: F64, noise: F64, *, heard: Bools, offsets: F64, fs: F64, workers: int
) -> tuple[F64, Bools, F64]:
    """Time difference of arrival of each slot against the strongest heard, synchronised slot.

    Receivers tune with different oscillator errors, so raw IQ decorrelates within a few
    milliseconds; the FM discriminator output (instantaneous frequency) does not depend on the
    carrier offset or phase, so that is what is cross-correlated.  Lags are searched within
    ``MAX_TDOA_S`` (longer than any baseline of a regional network) of the lag the reported
    clock offsets predict.  Returns the TDOA (µs), its validity and the peak quality.
    """
    batch, slots = snr_db.shape
    # Below ~10 dB the FM discriminator clicks and the correlation peak is unreliable.
    synced = heard & np.isfinite(offsets) & (snr_db > TDOA_SNR_DB)
    ranked = np.where(synced, snr_db, -np.inf)
    reference = np.argmax(ranked, axis=1)  # (B,)
    batches = np.arange(batch)
    has_reference = np.isfinite(ranked[batches, reference])
    correlated = synced & has_reference[:, None]
    clock = np.where(correlated, offsets - offsets[batches, reference][:, None], 0.0)
    tdoa_s = np.zeros((batch, slots))
    quality = np.zeros((batch, slots))
    rows = np.flatnonzero(correlated)  # only these are correlated: the others report 0 anyway
    if rows.size:
        owner = rows // slots
        max_lag = math.ceil(MAX_TDOA_S * float(np.max(fs)))
        # Where a receiver started recording later, its copy of the signal comes earlier.
        centre = np.round(-clock.flat[rows] * fs[owner]).astype(np.intp)
        lag, quality.flat[rows] = _correlation_lags(
            planes,
            rows,
            owner * slots + reference[owner],
            centres=centre,
            noise=noise.flat[rows],
            max_lag=max_lag,
            workers=workers,
        )
        tdoa_s.flat[rows] = lag / fs[owner]
    is_reference = np.zeros((batch, slots), dtype=bool)
    is_reference[batches, reference] = has_reference
    sharp = correlated & ~is_reference & (quality >= MIN_PEAK_QUALITY)
    # The strongest receiver is as good as its best partner, and useless without one.
    best = np.max(np.where(sharp, quality, 0.0), axis=1)
    quality[is_reference] = best[has_reference]
    valid = sharp | (is_reference & sharp.any(axis=1)[:, None])
    tdoa_s += clock
    # Measured against the strongest receiver, but reported against the mean arrival time of
    # all valid receivers: the meaning of a slot's value then does not hinge on which receiver
    # happened to be the strongest.
    count = np.maximum(valid.sum(axis=1, keepdims=True), 1)
    mean_arrival = np.where(valid, tdoa_s, 0.0).sum(axis=1, keepdims=True) / count
    return np.where(valid, (tdoa_s - mean_arrival) * 1e6, 0.0), valid, quality


def _correlation_lags(
    planes: F32, rows: Ints, references: Ints, *, centres: Ints, noise: F64, max_lag: int, workers: int
) -> tuple[F64, F64]:
    """Lag (samples) and quality of the correlation peak of each slot ``rows[i]`` against ``references[i]``.

    The peak is searched within ±``max_lag`` of ``centres[i]`` and refined to a fraction of a
    sample by a parabola; its quality is its height over the two discriminators' norms (1 for
    identical waveforms).  ``noise`` is each row's noise power, for the discriminator's gate.
    ``rows`` is sorted and holds every reference, so the slots of one reference are adjacent.
    """
    span = planes.shape[-1] - 1
    n_fft = scipy.fft.next_fast_len(2 * span, real=True)  # zero-padded: linear, not circular
    position = np.searchsorted(rows, references)  # where each slot's reference sits in rows
    lags = np.empty(rows.size)
    quality = np.empty(rows.size)
    for start, stop in _whole_groups(position, CHUNK_ROWS * max(1, workers)):
        # The discriminator goes straight into the zero-padded FFT input (scipy would copy).
        padded = np.zeros((stop - start, n_fft), dtype=np.float32)
        for i, slot in enumerate(rows[start:stop]):
            _discriminator(planes[slot], float(noise[start + i]), out=padded[i, :span])
        energy = np.einsum("ij,ij->i", padded, padded, dtype=np.float64)
        spectrum = scipy.fft.rfft(padded, axis=-1, workers=workers)
        for first, last in _whole_groups(position[start:stop], 1):
            spectrum[first:last] *= np.conjugate(spectrum[position[start + first] - start])
        correlation = scipy.fft.irfft(spectrum, n=n_fft, axis=-1, workers=workers, overwrite_x=True)
        lags[start:stop], height = _peak_lag(correlation, centres[start:stop], max_lag, span)
        norm = np.sqrt(energy * energy[position[start:stop] - start])
        quality[start:stop] = np.where(norm > 0, height / np.where(norm > 0, norm, 1.0), 0.0)
    return lags, np.clip(quality, 0.0, 1.0)


def _discriminator(plane: F32, noise: float, out: F32) -> None:
    """Gated FM discriminator of one (2, L) IQ plane, DC and mean removed, into ``out`` (L-1,).

    The phase step arg(z[1:]·conj(z[:-1])) of the DC-free samples (the instantaneous frequency,
    in radians a sample), kept where the mean power of the ``GATE_SAMPLES`` samples around it
    exceeds ``GATE_NOISE_FACTOR`` times the noise power and zero elsewhere; the mean of the
    kept steps is removed from them.
    """
    z = np.empty(plane.shape[-1], dtype=np.complex64)
    z.real = plane[0]
    z.imag = plane[1]
    z -= z.mean()
    product = np.conjugate(z[:-1])
    np.multiply(product, z[1:], out=product)
    np.arctan2(product.imag.copy(), product.real.copy(), out=out)  # contiguous: vectorised
    re, im = z.real.astype(np.float64), z.imag.astype(np.float64)
    sample_power = re * re + im * im
    # Local power over GATE_SAMPLES samples: noise alone stays near the noise power.
    cumulative = np.concatenate([[0.0], np.cumsum(sample_power)])
    local = (cumulative[GATE_SAMPLES:] - cumulative[:-GATE_SAMPLES]) / GATE_SAMPLES
    if not local.size:
        out[:] = 0.0
        return
    around = local[np.clip(np.arange(out.size) - GATE_SAMPLES // 2, 0, local.size - 1)]
    # Step k (samples k, k+1) counts when the window around it stands above the noise and both
    # its samples hold their share of it: a step from noise into a keyed-up carrier is a random
    # phase that would otherwise dominate the correlation, at a whole-sample lag.
    floor = STEP_SHARE * around
    gate = (around > GATE_NOISE_FACTOR * noise) & (sample_power[:-1] > floor) & (sample_power[1:] > floor)
    out[~gate] = 0.0
    kept = int(np.count_nonzero(gate))
    if kept:
        out[gate] -= np.float32(float(np.add.reduce(out, dtype=np.float64)) / kept)


def _whole_groups(keys: Ints, limit: int) -> list[tuple[int, int]]:
    """Consecutive [start, stop) ranges of ``keys`` that never split a run of equal keys.

    Each range holds at most ``limit`` items, unless a single run is longer.
    """
    starts = [int(i) for i in np.flatnonzero(np.r_[True, keys[1:] != keys[:-1]])] + [keys.size]
    ranges: list[tuple[int, int]] = []
    begin = 0
    for run_start, next_start in itertools.pairwise(starts):
        if next_start - begin > limit and run_start > begin:
            ranges.append((begin, run_start))
            begin = run_start
    if keys.size:
        ranges.append((begin, keys.size))
    return ranges


def _peak_lag(correlation: F32, centres: Ints, max_lag: int, span: int) -> tuple[F64, F64]:
    """Sub-sample lag and height of each row's maximum within ``centres ± max_lag``.

    The lag is refined by a parabola through the peak's neighbours.  Lags beyond ±``span`` (no
    overlap) are never searched.
    """
    n_fft = correlation.shape[-1]
    offsets = np.arange(-max_lag, max_lag + 1)
    lag_grid = np.clip(centres[:, None] + offsets[None, :], -span, span)
    window = np.take_along_axis(correlation, lag_grid % n_fft, axis=-1)
    peak = np.clip(np.argmax(window, axis=-1), 1, window.shape[-1] - 2)
    left = np.take_along_axis(window, (peak - 1)[:, None], axis=-1)[:, 0]
    centre = np.take_along_axis(window, peak[:, None], axis=-1)[:, 0]
    right = np.take_along_axis(window, (peak + 1)[:, None], axis=-1)[:, 0]
    curvature = left - 2.0 * centre + right
    safe = np.where(curvature < 0, curvature, -1.0)
    fraction = np.where(curvature < 0, 0.5 * (left - right) / safe, 0.0)
    base = np.take_along_axis(lag_grid, peak[:, None], axis=-1)[:, 0]
    lag: F64 = base + np.clip(fraction, -0.5, 0.5)
    return lag, centre.astype(np.float64)
