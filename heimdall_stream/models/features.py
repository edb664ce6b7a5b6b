"""Feature extraction: pure numpy, vectorised over a batch of captures (B, N, L).

Input is a dense batch: ``iq`` float32 (B, N, 2, L) in receiver slots, ``mask`` (B, N) with 1
where a receiver is present, the sample rate (B,), and each receiver's clock offset in seconds
(B, N; NaN where unknown).  Output is float32 (B, N, F) with these features, in this order:

=================  =======  ====================================================================
name               unit     meaning
=================  =======  ====================================================================
power_dbfs         dBFS     mean power of all samples (signal + noise)
noise_floor_dbfs   dBFS     noise power, from a low periodogram quantile (robust to the signal)
snr_db             dB       signal-to-noise ratio, signal = power - noise (floored at -20 dB)
signal_dbfs        dBFS     signal power alone (power minus noise, floored 20 dB under the noise)
relative_signal_db dB       signal_dbfs minus the strongest receiver's: free of the unknown
                            transmit power
freq_offset_hz     Hz       offset of the strongest periodogram bin from the tuned centre
presence           0/1      1 where SNR exceeds ``PRESENCE_SNR_DB``
tdoa_us            µs       arrival time against the mean arrival at all valid receivers, from
                            cross-correlation with the strongest one, corrected by the clock
                            offsets; 0 if invalid
tdoa_valid         0/1      1 where the receiver is heard above 10 dB SNR and clock-synchronised
=================  =======  ====================================================================

Absent slots (mask 0) are all zeros.  Deterministic: no randomness, no state.

The numbers are those of the straightforward whole-batch computation (kept as the reference in
tests/unit/test_features.py, which checks the two agree), computed more cheaply: only present
slots are transformed and only TDOA-valid slots correlated; rows go through in chunks of
``_CHUNK_ROWS`` so temporaries stay small and in cache; the noise quantile is an exact selection
of two order statistics rather than np.quantile's partition of everything; float32 throughout.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Mapping, Sequence

import numpy as np
import numpy.typing as npt
import scipy.fft

from heimdall_stream.wire.messages import IqCapture

FEATURE_NAMES: tuple[str, ...] = (
    "power_dbfs",
    "noise_floor_dbfs",
    "snr_db",
    "signal_dbfs",
    "relative_signal_db",
    "freq_offset_hz",
    "presence",
    "tdoa_us",
    "tdoa_valid",
)
PRESENCE_SNR_DB = 3.0
NOISE_QUANTILE = 0.2
MAX_TDOA_S = 1.5e-3
TDOA_SNR_DB = 10.0
_TINY = 1e-20
# Rows transformed per step: every temporary stays a few MB, so it is recycled by malloc
# (instead of fresh zeroed pages from the kernel each batch) and mostly served from cache.
_CHUNK_ROWS = 16
_SAMPLE_STRIDE = 8  # noise floor: one periodogram bin in 8 brackets the wanted quantile ...
_BRACKET_SD = 3.5  # ... by this many binomial standard deviations
_MIN_SAMPLED_LENGTH = 1024

F32 = npt.NDArray[np.float32]
F64 = npt.NDArray[np.float64]
Ints = npt.NDArray[np.intp]
Bools = npt.NDArray[np.bool_]


def extract_features(
    iq: F32,
    mask: F32,
    sample_rate_hz: npt.ArrayLike,
    clock_offset_s: F64 | None = None,
    *,
    workers: int = 1,
) -> F32:
    """Features (B, N, len(FEATURE_NAMES)) of a batch; see the module docstring.

    ``workers`` is the number of threads each FFT may use; the result does not depend on it.
    """
    if iq.ndim != 4 or iq.shape[2] != 2:
        raise ValueError(f"iq must be (B, N, 2, L), got {iq.shape}")
    batch, slots, _, length = iq.shape
    fs = np.broadcast_to(np.asarray(sample_rate_hz, dtype=np.float64), (batch,))
    present = mask.astype(bool)
    offsets = (
        np.full((batch, slots), np.nan) if clock_offset_s is None else np.asarray(clock_offset_s, np.float64)
    )
    planes = iq.reshape(batch * slots, 2, length)

    # Only slots with a receiver are transformed: absent ones end up all zeros whatever they hold.
    rows = np.flatnonzero(present)  # flat slot indices b * slots + n
    power = np.zeros((batch, slots))
    noise = np.zeros((batch, slots))
    peak = np.zeros((batch, slots), dtype=np.intp)
    power.flat[rows], noise.flat[rows], peak.flat[rows] = _spectral_estimates(planes, rows, workers)
    signal = np.maximum(power - noise, noise * 0.01)
    snr_db = 10.0 * np.log10((signal + _TINY) / (noise + _TINY))
    freq_offset = np.fft.fftfreq(length)[peak] * fs[:, None]
    heard = present & (snr_db > PRESENCE_SNR_DB)

    tdoa_us, tdoa_valid = _tdoa(planes, snr_db, heard, offsets, fs, workers=workers)

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
        ],
        axis=-1,
    )
    features[~present] = 0.0
    return features.astype(np.float32)


def _spectral_estimates(planes: F32, rows: Ints, workers: int) -> tuple[F64, F64, Ints]:
    """Mean power, noise power and strongest periodogram bin of the slots ``rows`` of ``planes``."""
    length = planes.shape[-1]
    power = np.empty(rows.size)
    low = np.empty(rows.size, dtype=np.float32)
    peak = np.empty(rows.size, dtype=np.intp)
    step = _CHUNK_ROWS * max(1, workers)  # each FFT thread gets a chunk's worth of rows
    for start in range(0, rows.size, step):
        chunk = rows[start : start + step]
        done = slice(start, start + chunk.size)
        z = np.empty((chunk.size, length), dtype=np.complex64)
        z.real = planes[chunk, 0]
        z.imag = planes[chunk, 1]
        spectrum = scipy.fft.fft(z, axis=-1, workers=workers, overwrite_x=True)  # in place, complex64
        # |X|² / L²: the same float32 operations as (re**2 + im**2) / L², squares taken in place.
        parts = spectrum.view(np.float32).reshape(chunk.size, length, 2)
        np.square(parts, out=parts)
        periodogram = np.add(parts[..., 0], parts[..., 1])
        periodogram /= np.float32(length * length)
        power[done] = periodogram.sum(axis=-1, dtype=np.float64)  # Parseval: mean |x|²
        peak[done] = np.argmax(periodogram, axis=-1)
        # Noise bins of complex white noise are exponential, so the q-quantile of the periodogram
        # is -ln(1-q) times the mean noise bin. A low quantile stays clear of the FM signal's bins.
        low[done] = _low_quantile(periodogram, NOISE_QUANTILE)
    low[np.isnan(power)] = np.nan  # as np.quantile: a NaN anywhere in the row
    noise: F64 = low * length / -np.log1p(-NOISE_QUANTILE)
    return power, noise, peak


def _low_quantile(values: F32, q: float) -> F32:
    """``np.quantile(values, q, axis=-1)`` ('linear' method) of NaN-free rows, bit for bit.

    The two order statistics around the virtual index q·(L-1) come from ``_order_statistics``
    instead of np.quantile's partition of the whole array along a moved axis; the interpolation
    repeats np.quantile's own float32 arithmetic (from the nearer neighbour).
    """
    length = values.shape[-1]
    virtual = (length - 1) * q
    below = math.floor(virtual)
    gamma = virtual - below
    above = min(below + 1, length - 1)
    lower, upper = _order_statistics(values, below, above)
    diff = upper - lower
    result: F32 = upper - diff * (1 - gamma) if gamma >= 0.5 else lower + diff * gamma
    return result


def _order_statistics(values: F32, below: int, above: int) -> tuple[F32, F32]:
    """The ``below``-th and ``above``-th smallest (0-based, above ∈ {below, below + 1}) of each row.

    A full selection (np.partition) costs ~6-13 ns a value here.  Instead, a strided sample of
    each row gives two bounds that bracket the wanted ranks by ``_BRACKET_SD`` binomial standard
    deviations; only the values between them (~1/8 of the row) are partitioned, the rank shifted
    by the count under the lower bound.  A row whose bracket misses (rare; ties) is partitioned
    whole: exact either way.
    """
    rows, length = values.shape
    if length < _MIN_SAMPLED_LENGTH:  # too short to sample
        whole = np.partition(values, above, axis=-1)
        top: F32 = whole[:, above]
        return (whole[:, :above].max(axis=-1) if above > below else top), top
    sample = np.ascontiguousarray(values[:, ::_SAMPLE_STRIDE])
    size = sample.shape[1]
    p = (below + 0.5) / length
    spread = _BRACKET_SD * math.sqrt(size * p * (1 - p)) + 1.0
    low_rank = max(0, math.floor(size * p - spread))
    high_rank = min(size - 1, math.ceil(size * p + spread))
    # Two single partitions: numpy's partition with two ranks is several times slower.
    sample.partition(high_rank, axis=-1)
    sample[:, :high_rank].partition(low_rank, axis=-1)
    lower = np.empty(rows, dtype=values.dtype)
    upper = np.empty(rows, dtype=values.dtype)
    for r in range(rows):
        row = values[r]
        low_bound = sample[r, low_rank]
        high_bound = sample[r, high_rank]
        smaller = int(np.count_nonzero(row < low_bound))
        band = np.compress((row >= low_bound) & (row <= high_bound), row)
        if smaller > below or smaller + band.size <= above:
            band, smaller = row.copy(), 0
        rank = above - smaller
        band.partition(rank)
        upper[r] = band[rank]
        lower[r] = band[:rank].max() if above > below else band[rank]
    return lower, upper


def _tdoa(
    planes: F32, snr_db: F64, heard: Bools, offsets: F64, fs: F64, *, workers: int
) -> tuple[F64, Bools]:
    """Time difference of arrival of each slot against the strongest heard, synchronised slot.

    Receivers tune with different oscillator errors, so raw IQ decorrelates within a few
    milliseconds; the FM discriminator output (instantaneous frequency) does not depend on the
    carrier offset or phase, so that is what is cross-correlated.  Lags are searched within
    ``MAX_TDOA_S`` (longer than any baseline of a regional network).
    """
    batch, slots = snr_db.shape
    # Below ~10 dB the FM discriminator clicks and the correlation peak is unreliable.
    synced = heard & np.isfinite(offsets) & (snr_db > TDOA_SNR_DB)
    ranked = np.where(synced, snr_db, -np.inf)
    reference = np.argmax(ranked, axis=1)  # (B,)
    batches = np.arange(batch)
    has_reference = np.isfinite(ranked[batches, reference])
    valid = synced & has_reference[:, None]
    tdoa_s = np.zeros((batch, slots))
    rows = np.flatnonzero(valid)  # only valid slots are correlated: the others report 0 anyway
    if rows.size:
        owner = rows // slots
        max_lag = math.ceil(MAX_TDOA_S * float(np.max(fs)))
        lag = _correlation_lags(planes, rows, owner * slots + reference[owner], max_lag, workers)
        tdoa_s.flat[rows] = lag / fs[owner]
    tdoa_s += np.where(valid, offsets - offsets[batches, reference][:, None], 0.0)
    # Measured against the strongest receiver, but reported against the mean arrival time of
    # all valid receivers: the meaning of a slot's value then does not hinge on which receiver
    # happened to be the strongest.
    count = np.maximum(valid.sum(axis=1, keepdims=True), 1)
    mean_arrival = np.where(valid, tdoa_s, 0.0).sum(axis=1, keepdims=True) / count
    return np.where(valid, (tdoa_s - mean_arrival) * 1e6, 0.0), valid


def _correlation_lags(planes: F32, rows: Ints, references: Ints, max_lag: int, workers: int) -> F64:
    """Lag (samples) of the correlation peak of each slot ``rows[i]`` against ``references[i]``.

    The peak is searched within ±``max_lag`` and refined to a fraction of a sample by a parabola.
    ``rows`` is sorted and holds every reference, so the slots of one reference are adjacent.
    """
    span = planes.shape[-1] - 1
    n_fft = scipy.fft.next_fast_len(2 * span, real=True)  # zero-padded: linear, not circular
    position = np.searchsorted(rows, references)  # where each slot's reference sits in rows
    lags = np.empty(rows.size)
    for start, stop in _whole_groups(position, _CHUNK_ROWS * max(1, workers)):
        # The discriminator goes straight into the zero-padded FFT input (scipy would copy).
        padded = np.zeros((stop - start, n_fft), dtype=np.float32)
        for i, slot in enumerate(rows[start:stop]):
            _discriminator(planes[slot], out=padded[i, :span])
        spectrum = scipy.fft.rfft(padded, axis=-1, workers=workers)
        for first, last in _whole_groups(position[start:stop], 1):
            spectrum[first:last] *= np.conjugate(spectrum[position[start + first] - start])
        correlation = scipy.fft.irfft(spectrum, n=n_fft, axis=-1, workers=workers, overwrite_x=True)
        lags[start:stop] = _peak_lag(correlation, max_lag)
    return lags


def _discriminator(plane: F32, out: F32) -> None:
    """FM discriminator of one (2, L) IQ plane, mean removed, into ``out`` (L-1,).

    The phase step arg(z[1:]·conj(z[:-1])), by the same complex64 operations as np.angle of the
    product (the instantaneous frequency, in radians a sample).
    """
    z = np.empty(plane.shape[-1], dtype=np.complex64)
    z.real = plane[0]
    z.imag = plane[1]
    product = np.conjugate(z[:-1])
    np.multiply(product, z[1:], out=product)
    # Contiguous copies: arctan2 is vectorised only for contiguous operands (same bits either way).
    np.arctan2(product.imag.copy(), product.real.copy(), out=out)
    # out.mean() without its Python overhead: float32 sum, float64 division, back to float32.
    out -= np.float32(float(np.add.reduce(out)) / out.size)


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


def _peak_lag(correlation: F32, max_lag: int) -> F64:
    """Sub-sample lag of each row's maximum within lags ±max_lag (parabola through its neighbours)."""
    window = np.concatenate([correlation[:, -max_lag:], correlation[:, : max_lag + 1]], axis=-1)
    peak = np.clip(np.argmax(window, axis=-1), 1, window.shape[-1] - 2)
    left = np.take_along_axis(window, (peak - 1)[:, None], axis=-1)[:, 0]
    centre = np.take_along_axis(window, peak[:, None], axis=-1)[:, 0]
    right = np.take_along_axis(window, (peak + 1)[:, None], axis=-1)[:, 0]
    curvature = left - 2.0 * centre + right
    safe = np.where(curvature < 0, curvature, -1.0)
    fraction = np.where(curvature < 0, 0.5 * (left - right) / safe, 0.0)
    lag: F64 = (peak - max_lag) + np.clip(fraction, -0.5, 0.5)
    return lag


def normalise_features(features: F32, mask: F32, mean: npt.ArrayLike, std: npt.ArrayLike) -> F32:
    """(features - mean) / std per feature, zero in absent slots: what a features model eats."""
    mean32 = np.asarray(mean, dtype=np.float32)
    std32 = np.asarray(std, dtype=np.float32)
    return ((features - mean32) / std32 * mask[..., None]).astype(np.float32)


def assemble_batch(
    captures: Sequence[IqCapture], slots: Mapping[str, int], sample_count: int
) -> tuple[F32, F32, F64, F64]:
    """Dense arrays (iq, mask, sample_rate_hz, clock_offset_s) of validated captures.

    Receivers land in their model slot; slots without a receiver stay zero with mask 0.
    Every receiver must carry exactly ``sample_count`` samples (the validator checks this).
    """
    batch = len(captures)
    # Not np.zeros: every present slot is overwritten, so only the absent ones are cleared below.
    iq = np.empty((batch, len(slots), 2, sample_count), dtype=np.float32)
    mask = np.zeros((batch, len(slots)), dtype=np.float32)
    fs = np.zeros(batch, dtype=np.float64)
    offsets = np.full((batch, len(slots)), np.nan, dtype=np.float64)
    for b, capture in enumerate(captures):
        fs[b] = capture.receivers[0].sample_rate_hz
        for receiver in capture.receivers:
            slot = slots[receiver.receiver_id]
            receiver.write_iq(iq[b, slot])  # straight from the message bytes into the batch
            mask[b, slot] = 1.0
            if receiver.timestamp_offset_ns is not None:
                offsets[b, slot] = receiver.timestamp_offset_ns * 1e-9
    iq[mask == 0] = 0.0
    return iq, mask, fs, offsets
