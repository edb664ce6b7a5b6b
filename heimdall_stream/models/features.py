"""Feature extraction: pure numpy, vectorised over a batch of captures (B, N, L).

Input is a dense batch: ``iq`` float32 (B, N, 2, L) in receiver slots, ``mask`` (B, N) with 1
where a receiver is present, the sample rate (B,), and each receiver's clock offset in seconds
(B, N; NaN where unknown).  Output is float32 (B, N, F) with these features, in this order:

=================  =======  ====================================================================
name               unit     meaning
=================  =======  ====================================================================
power_dbfs         dBFS     mean power of all samples (signal + noise), DC bin left out
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
tdoa_valid         0/1      1 where the receiver is heard above 10 dB SNR, clock-synchronised,
                            and its correlation peak is sharp (``tdoa_quality`` ≥
                            ``MIN_PEAK_QUALITY``); the strongest receiver when another one is
tdoa_quality       0-1      normalised height of the correlation peak against the strongest
                            receiver (its own: the best of the others'); 0 if not correlated
=================  =======  ====================================================================

Absent slots (mask 0) are all zeros.  Deterministic: no randomness, no state.

Robust to the waveform (a model should not depend on one): the DC bin is left out of every
spectral estimate (a receiver's DC offset is not a signal); the discriminator is gated to the
samples where the signal stands above the noise (a transmitter that keys up part-way, or sends
data in bursts, leaves stretches of noise whose discriminator is random) and correlated only
where a clock offset is reported; and a correlation without a sharp peak (an unmodulated carrier
carries no time information) gives no TDOA.  The lag search is centred on the difference of the
reported clock offsets, so receivers that started recording tens of milliseconds apart still
find their peak.

The numbers are those of the straightforward whole-batch computation (kept as the reference in
tests/unit/test_features.py, which checks the two agree), computed more cheaply: only present
slots are transformed and only slots that can have a TDOA correlated (``models.tdoa``); rows
go through in chunks of ``_CHUNK_ROWS`` so temporaries stay small and in cache; the noise
quantile is an exact selection of two order statistics rather than np.quantile's partition of
everything; float32 throughout.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

import numpy as np
import numpy.typing as npt
import scipy.fft

from heimdall_stream.models.tdoa import MAX_TDOA_S, MIN_PEAK_QUALITY, TDOA_SNR_DB, tdoa
from heimdall_stream.wire.messages import IqCapture

# Re-exported: they define the TDOA features of FEATURE_NAMES.
__all__ = [
    "FEATURE_NAMES",
    "MAX_TDOA_S",
    "MIN_PEAK_QUALITY",
    "TDOA_SNR_DB",
    "assemble_batch",
    "extract_features",
    "normalise_features",
]


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
    "tdoa_quality",
)
PRESENCE_SNR_DB = 3.0
NOISE_QUANTILE = 0.2
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

    tdoa_us, tdoa_valid, quality = tdoa(
        planes, snr_db, noise, heard=heard, offsets=offsets, fs=fs, workers=workers
    )

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
        periodogram[:, 0] = 0.0  # DC: a receiver's offset, not a signal
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
