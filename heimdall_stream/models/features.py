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
"""

from __future__ import annotations

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

F32 = npt.NDArray[np.float32]
F64 = npt.NDArray[np.float64]


def extract_features(
    iq: F32,
    mask: F32,
    sample_rate_hz: npt.ArrayLike,
    clock_offset_s: F64 | None = None,
) -> F32:
    """Features (B, N, len(FEATURE_NAMES)) of a batch; see the module docstring."""
    if iq.ndim != 4 or iq.shape[2] != 2:
        raise ValueError(f"iq must be (B, N, 2, L), got {iq.shape}")
    batch, slots, _, length = iq.shape
    fs = np.broadcast_to(np.asarray(sample_rate_hz, dtype=np.float64), (batch,))
    present = mask.astype(bool)
    offsets = (
        np.full((batch, slots), np.nan) if clock_offset_s is None else np.asarray(clock_offset_s, np.float64)
    )

    z = iq[:, :, 0, :].astype(np.complex64)
    z.imag = iq[:, :, 1, :]
    spectrum = scipy.fft.fft(z, axis=-1)  # (B, N, L) complex64 (numpy's FFT would upcast)
    periodogram = (spectrum.real**2 + spectrum.imag**2) / np.float32(length * length)

    power = periodogram.sum(axis=-1, dtype=np.float64)  # Parseval: mean |x|²
    # Noise bins of complex white noise are exponential, so the q-quantile of the periodogram is
    # -ln(1-q) times the mean noise bin. A low quantile stays clear of the FM signal's bins.
    noise = np.quantile(periodogram, NOISE_QUANTILE, axis=-1) * length / -np.log1p(-NOISE_QUANTILE)
    signal = np.maximum(power - noise, noise * 0.01)
    snr_db = 10.0 * np.log10((signal + _TINY) / (noise + _TINY))
    peak = np.argmax(periodogram, axis=-1)
    freq_offset = np.fft.fftfreq(length)[peak] * fs[:, None]
    heard = present & (snr_db > PRESENCE_SNR_DB)

    tdoa_us, tdoa_valid = _tdoa(z, snr_db, heard, offsets, fs)

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


def _tdoa(
    z: npt.NDArray[np.complex64],
    snr_db: F64,
    heard: npt.NDArray[np.bool_],
    offsets: F64,
    fs: F64,
) -> tuple[F64, npt.NDArray[np.bool_]]:
    """Time difference of arrival of each slot against the strongest heard, synchronised slot.

    Receivers tune with different oscillator errors, so raw IQ decorrelates within a few
    milliseconds; the FM discriminator output (instantaneous frequency) does not depend on the
    carrier offset or phase, so that is what is cross-correlated.  Lags are searched within
    ``MAX_TDOA_S`` (longer than any baseline of a regional network).
    """
    batch, _slots, _ = z.shape
    # Below ~10 dB the FM discriminator clicks and the correlation peak is unreliable.
    synced = heard & np.isfinite(offsets) & (snr_db > TDOA_SNR_DB)
    ranked = np.where(synced, snr_db, -np.inf)
    reference = np.argmax(ranked, axis=1)  # (B,)
    rows = np.arange(batch)
    has_reference = np.isfinite(ranked[rows, reference])

    discriminator = np.angle(z[..., 1:] * np.conj(z[..., :-1])).astype(np.float32)
    discriminator -= discriminator.mean(axis=-1, keepdims=True)
    length = discriminator.shape[-1]
    n_fft = scipy.fft.next_fast_len(2 * length, real=True)  # zero-padded: linear, not circular
    spectrum = scipy.fft.rfft(discriminator, n=n_fft, axis=-1)
    ref_spectrum = spectrum[rows, reference][:, None, :]
    correlation = scipy.fft.irfft(spectrum * np.conj(ref_spectrum), n=n_fft, axis=-1)
    max_lag = int(np.ceil(MAX_TDOA_S * float(np.max(fs))))
    window = np.concatenate([correlation[..., -max_lag:], correlation[..., : max_lag + 1]], axis=-1)
    peak = np.clip(np.argmax(window, axis=-1), 1, window.shape[-1] - 2)
    left = np.take_along_axis(window, (peak - 1)[..., None], axis=-1)[..., 0]
    centre = np.take_along_axis(window, peak[..., None], axis=-1)[..., 0]
    right = np.take_along_axis(window, (peak + 1)[..., None], axis=-1)[..., 0]
    curvature = left - 2.0 * centre + right
    safe = np.where(curvature < 0, curvature, -1.0)
    fraction = np.where(curvature < 0, 0.5 * (left - right) / safe, 0.0)
    lag = (peak - max_lag) + np.clip(fraction, -0.5, 0.5)
    ref_offset = offsets[rows, reference][:, None]
    tdoa_s = lag / fs[:, None] + (offsets - ref_offset)
    valid = synced & has_reference[:, None]
    # Measured against the strongest receiver, but reported against the mean arrival time of
    # all valid receivers: the meaning of a slot's value then does not hinge on which receiver
    # happened to be the strongest.
    count = np.maximum(valid.sum(axis=1, keepdims=True), 1)
    mean_arrival = np.where(valid, tdoa_s, 0.0).sum(axis=1, keepdims=True) / count
    return np.where(valid, (tdoa_s - mean_arrival) * 1e6, 0.0), valid


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
    iq = np.zeros((batch, len(slots), 2, sample_count), dtype=np.float32)
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
    return iq, mask, fs, offsets
