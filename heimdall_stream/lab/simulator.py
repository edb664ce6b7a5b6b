"""IQ simulator: what each receiver of the network records when a transmitter keys up.

The link model is deliberately physical and simple:

* path loss: free space up to ``d0`` (100 m), then a log-distance law with exponent ``n``,
  plus log-normal shadowing (independent per receiver and capture);
* a thermal noise floor ``-174 dBm/Hz + 10 log10(fs) + NF`` over the sampled bandwidth;
* the transmitter is narrowband FM (eight random voice-band tones, 2.5 kHz deviation), so every
  receiver hears the same waveform, delayed by its propagation time: cross-correlation between
  receivers then measures time differences of arrival;
* each receiver has a carrier frequency offset (oscillator error, ppm) and a clock offset;
  receivers with a disciplined clock report that offset in ``timestamp_offset_ns``, the others
  report nothing and are off by milliseconds;
* receivers are sometimes offline (missing from the capture); far ones hear only noise;
* samples are quantised to CI16 with ``full_scale_dbm`` at digital full scale (and clip above).

Shift axes (``LinkModel`` fields after ``fm_deviation_hz``; the defaults are the nominal simulator
and draw nothing, so a nominal capture is the same as before they existed): per-receiver gain
and noise-figure errors, the modulation (FM voice, unmodulated carrier, 2-FSK data bursts),
transmitters keying up part-way through the window, receivers that start recording at
different moments (the start offset is part of the reported ``timestamp_offset_ns`` where a
disciplined clock is present), and a DC offset.  ``heimdall_stream.lab.shift`` builds variants
and training randomisation from them.

Everything is deterministic from ``seed``: capture ``i`` uses its own generator seeded by
``(seed, i)``, and the truth travels with the capture.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta

import numpy as np
import numpy.typing as npt
from pyproj import Geod

from heimdall_stream.network import Network
from heimdall_stream.wire.messages import IqCapture, ReceiverIq, SampleFormat

SPEED_OF_LIGHT = 299_792_458.0
BANDS_HZ = {"2m": (144.0e6, 146.0e6), "70cm": (430.0e6, 440.0e6)}
EPOCH = datetime(2026, 1, 1, tzinfo=UTC)
_GEOD = Geod(ellps="WGS84")


@dataclass(frozen=True, slots=True)
class LinkModel:
    """Parameters of the propagation and receiver model."""

    path_loss_exponent: float = 2.8
    reference_distance_m: float = 100.0
    shadowing_db: float = 4.0
    noise_figure_db: float = 6.0
    full_scale_dbm: float = -50.0
    offline_probability: float = 0.05
    oscillator_ppm: float = 0.5
    clock_jitter_s: float = 2e-6  # residual error of a disciplined clock
    unsynced_clock_s: float = 2e-3  # typical offset of a receiver without one
    synced_fraction: float = 0.8  # share of receivers that report their clock offset
    fm_deviation_hz: float = 2_500.0
    # --- shift axes: the defaults leave the nominal simulator unchanged ---
    receiver_gain_db: float = 0.0  # std of each receiver's gain error (signal and noise alike)
    noise_figure_spread_db: float = 0.0  # std of each receiver's noise-figure error
    # probabilities of FM voice, an unmodulated carrier, 2-FSK data bursts (normalised)
    modulation: tuple[float, float, float] = (1.0, 0.0, 0.0)
    key_up_probability: float = 0.0  # share of transmissions keyed up inside the window
    start_offset_s: float = 0.0  # receivers start recording up to ± this apart (uniform)
    dc_offset_dbfs: tuple[float, float] | None = None  # DC offset level range, dBFS


FM, CARRIER, DATA = "fm", "carrier", "data"
MODULATIONS = (FM, CARRIER, DATA)
DATA_BAUD = 4_800.0
DATA_DEVIATION_HZ = 2_000.0


@dataclass(frozen=True, slots=True)
class Transmitter:
    """Ground truth of one transmission."""

    latitude: float
    longitude: float
    power_dbm: float
    frequency_hz: float
    modulation: str = FM
    key_up_s: float = 0.0  # source time at which the carrier comes on (0: on all window)


@dataclass(frozen=True, slots=True)
class SimulatedCapture:
    """A capture plus the truth it was generated from."""

    capture: IqCapture
    transmitter: Transmitter
    received_power_dbm: dict[str, float] = field(default_factory=dict)
    snr_db: dict[str, float] = field(default_factory=dict)


class IqSimulator:
    """Generates captures of random or given transmitters over a receiver network."""

    def __init__(
        self,
        network: Network,
        link: LinkModel | None = None,
        *,
        sample_rate_hz: float = 50_000.0,
        sample_count: int = 10_000,
        sample_format: SampleFormat = SampleFormat.CI16,
        seed: int = 0,
        area_margin_deg: float = 0.15,
        links: Callable[[int], LinkModel] | None = None,
    ) -> None:
        self.network = network
        self.link = link or LinkModel()
        # Per-capture link models (domain randomisation); ``link`` for every capture otherwise.
        self.links = links
        self.sample_rate_hz = sample_rate_hz
        self.sample_count = sample_count
        self.sample_format = sample_format
        self.seed = seed
        lats = [r.latitude for r in network.receivers]
        lons = [r.longitude for r in network.receivers]
        self.area = (
            min(lats) - area_margin_deg,
            max(lats) + area_margin_deg,
            min(lons) - area_margin_deg,
            max(lons) + area_margin_deg,
        )

    @property
    def noise_floor_dbm(self) -> float:
        """Thermal noise over the sampled bandwidth plus the receiver noise figure."""
        return self._noise_floor_dbm(self.link)

    def _noise_floor_dbm(self, link: LinkModel) -> float:
        return -174.0 + 10.0 * math.log10(self.sample_rate_hz) + link.noise_figure_db

    def link_for(self, index: int) -> LinkModel:
        """The link model capture ``index`` is simulated with."""
        return self.links(index) if self.links is not None else self.link

    def random_transmitter(self, rng: np.random.Generator) -> Transmitter:
        """A transmitter somewhere over the network, 1-50 W, in the 2 m or 70 cm band."""
        lat_min, lat_max, lon_min, lon_max = self.area
        band = BANDS_HZ["2m"] if rng.random() < 0.6 else BANDS_HZ["70cm"]
        return Transmitter(
            latitude=float(rng.uniform(lat_min, lat_max)),
            longitude=float(rng.uniform(lon_min, lon_max)),
            power_dbm=float(rng.uniform(30.0, 47.0)),
            frequency_hz=float(round(rng.uniform(*band) / 12_500.0) * 12_500.0),
        )

    def generate(self, index: int, transmitter: Transmitter | None = None) -> SimulatedCapture:
        """Capture number ``index`` (deterministic), of ``transmitter`` or a random one."""
        rng = np.random.default_rng([self.seed, index])
        # Shift axes draw from their own stream, so the nominal captures stay what they were.
        shift_rng = np.random.default_rng([self.seed, index, 1])
        link, fs, count = self.link_for(index), self.sample_rate_hz, self.sample_count
        tx = transmitter or self._shifted(self.random_transmitter(rng), link, shift_rng)
        t = np.arange(count, dtype=np.float64) / fs
        phase_of = _waveform(tx.modulation, rng, shift_rng, link.fm_deviation_hz)
        bursts = _burst_gate(shift_rng) if tx.modulation == DATA else None
        online = rng.random(len(self.network.receivers)) >= link.offline_probability
        if online.sum() < 3:  # a capture set always has a few receivers
            online[rng.choice(len(online), size=3, replace=False)] = True
        receivers: list[ReceiverIq] = []
        powers: dict[str, float] = {}
        snrs: dict[str, float] = {}
        for slot, rx in enumerate(self.network.receivers):
            if not online[slot]:
                continue
            _, _, distance = _GEOD.inv(tx.longitude, tx.latitude, rx.longitude, rx.latitude)
            distance = max(float(distance), 1.0)
            power = (
                tx.power_dbm
                - _path_loss_db(link, distance, tx.frequency_hz)
                + rng.normal(0.0, link.shadowing_db)
            )
            synced = rng.random() < link.synced_fraction
            clock_offset = rng.normal(0.0, link.clock_jitter_s if synced else link.unsynced_clock_s)
            clock_offset += _uniform(shift_rng, link.start_offset_s)
            delay = distance / SPEED_OF_LIGHT
            cfo = tx.frequency_hz * rng.normal(0.0, link.oscillator_ppm * 1e-6)
            source_time = t + clock_offset - delay
            phase = phase_of(source_time)
            carrier = 2.0 * math.pi * cfo * t + rng.uniform(0.0, 2.0 * math.pi)
            gain_db = _normal(shift_rng, link.receiver_gain_db)
            noise_db = self._noise_floor_dbm(link) + _normal(shift_rng, link.noise_figure_spread_db)
            amplitude = 10.0 ** ((power + gain_db - link.full_scale_dbm) / 20.0)
            noise_rms = 10.0 ** ((noise_db + gain_db - link.full_scale_dbm) / 20.0)
            signal = amplitude * np.exp(1j * (phase + carrier))
            if tx.key_up_s > 0.0:
                signal[source_time < tx.key_up_s] = 0.0
            if bursts is not None:
                signal[~bursts(source_time)] = 0.0
            noise = (noise_rms / math.sqrt(2.0)) * (
                rng.standard_normal(count) + 1j * rng.standard_normal(count)
            )
            if link.dc_offset_dbfs is not None:
                level = 10.0 ** (shift_rng.uniform(*link.dc_offset_dbfs) / 20.0)
                noise += level * np.exp(1j * shift_rng.uniform(0.0, 2.0 * math.pi))
            receivers.append(
                ReceiverIq(
                    receiver_id=rx.id,
                    latitude=rx.latitude,
                    longitude=rx.longitude,
                    altitude_m=rx.altitude_m,
                    sample_rate_hz=fs,
                    sample_format=self.sample_format,
                    samples=_quantise(signal + noise, self.sample_format),
                    timestamp_offset_ns=round(clock_offset * 1e9) if synced else None,
                )
            )
            powers[rx.id] = power
            snrs[rx.id] = power - noise_db
        capture = IqCapture(
            capture_id=f"sim-{self.seed}-{index}",
            captured_at=EPOCH + timedelta(seconds=index),
            center_frequency_hz=tx.frequency_hz,
            receivers=tuple(receivers),
        )
        return SimulatedCapture(capture, tx, powers, snrs)

    def _shifted(self, tx: Transmitter, link: LinkModel, rng: np.random.Generator) -> Transmitter:
        """The random transmitter with the link's modulation and key-up time drawn."""
        if link.modulation == (1.0, 0.0, 0.0) and link.key_up_probability <= 0.0:
            return tx
        weights = np.asarray(link.modulation, dtype=np.float64)
        modulation = MODULATIONS[int(rng.choice(3, p=weights / weights.sum()))]
        duration = self.sample_count / self.sample_rate_hz
        key_up = rng.uniform(0.1, 0.7) * duration if rng.random() < link.key_up_probability else 0.0
        return dataclasses.replace(tx, modulation=modulation, key_up_s=float(key_up))

    def stream(self, count: int, start: int = 0) -> Iterator[SimulatedCapture]:
        """Captures ``start`` .. ``start + count - 1``."""
        for index in range(start, start + count):
            yield self.generate(index)


def _path_loss_db(link: LinkModel, distance_m: float, frequency_hz: float) -> float:
    """Free space up to the reference distance, then the log-distance law."""
    d0 = link.reference_distance_m
    wavelength = SPEED_OF_LIGHT / frequency_hz
    free_space_d0 = 20.0 * math.log10(4.0 * math.pi * d0 / wavelength)
    return free_space_d0 + 10.0 * link.path_loss_exponent * math.log10(max(distance_m, d0) / d0)


def _uniform(rng: np.random.Generator, half_width: float) -> float:
    """Uniform in ±half_width; nothing is drawn when it is 0 (the nominal simulator)."""
    return float(rng.uniform(-half_width, half_width)) if half_width > 0.0 else 0.0


def _normal(rng: np.random.Generator, std: float) -> float:
    """Normal with standard deviation ``std``; nothing is drawn when it is 0."""
    return float(rng.normal(0.0, std)) if std > 0.0 else 0.0


Phase = Callable[[npt.NDArray[np.float64]], npt.NDArray[np.float64]]


def _waveform(
    modulation: str, rng: np.random.Generator, shift_rng: np.random.Generator, deviation_hz: float
) -> Phase:
    """The transmitter's phase (radians) as a function of source time, for its modulation.

    FM voice draws its tones from ``rng`` exactly as the nominal simulator always did.
    """
    if modulation == FM:
        tones = _fm_tones(rng)
        return lambda t: _fm_phase(tones, t, deviation_hz)
    _fm_tones(rng)  # keep the main stream aligned with an FM capture's
    if modulation == CARRIER:
        return np.zeros_like
    return _data_bursts(shift_rng)


def _data_bursts(rng: np.random.Generator) -> Phase:
    """2-FSK at ``DATA_BAUD`` with ±``DATA_DEVIATION_HZ``, continuous phase, random bits.

    Symbols cover source times -0.5 .. 1.5 s (any window and start offset falls inside).
    """
    start, symbols = -0.5, rng.choice([-1.0, 1.0], size=int(2.0 * DATA_BAUD))
    step = 2.0 * math.pi * DATA_DEVIATION_HZ / DATA_BAUD  # phase advance over one symbol
    at_boundary = np.concatenate([[0.0], np.cumsum(symbols) * step])

    def phase(t: npt.NDArray[np.float64]) -> npt.NDArray[np.float64]:
        position = np.clip((t - start) * DATA_BAUD, 0.0, symbols.size - 1e-9)
        k = position.astype(np.intp)
        return np.asarray(at_boundary[k] + symbols[k] * (position - k) * step)

    return phase


def _burst_gate(rng: np.random.Generator) -> Callable[[npt.NDArray[np.float64]], npt.NDArray[np.bool_]]:
    """When a data transmitter is on: bursts of 30-80 ms separated by 10-40 ms of silence."""
    edges = [float(rng.uniform(-0.05, 0.0))]
    while edges[-1] < 1.5:
        edges.append(edges[-1] + float(rng.uniform(0.03, 0.08)))  # burst
        edges.append(edges[-1] + float(rng.uniform(0.01, 0.04)))  # gap
    boundaries = np.asarray(edges)
    # Even intervals [edges[2k], edges[2k+1]) are bursts.
    return lambda t: np.asarray(np.searchsorted(boundaries, t, side="right") % 2 == 1)


def _fm_tones(rng: np.random.Generator) -> npt.NDArray[np.float64]:
    """Random voice-band audio: eight tones (frequency Hz, relative amplitude, phase).

    Eight incommensurate tones give a sharp autocorrelation peak, as speech would.
    """
    freqs = rng.uniform(300.0, 3000.0, size=8)
    amps = rng.dirichlet(np.ones(8))
    phases = rng.uniform(0.0, 2.0 * math.pi, size=8)
    return np.stack([freqs, amps, phases], axis=1)


def _fm_phase(
    tones: npt.NDArray[np.float64], t: npt.NDArray[np.float64], deviation_hz: float
) -> npt.NDArray[np.float64]:
    """Instantaneous FM phase: the integral of the audio, evaluated exactly at times ``t``."""
    phase = np.zeros_like(t)
    for freq, amp, offset in tones:
        phase += (deviation_hz * amp / freq) * np.sin(2.0 * math.pi * freq * t + offset)
    return phase


def _quantise(iq: npt.NDArray[np.complex128], sample_format: SampleFormat) -> bytes:
    if sample_format is SampleFormat.CF32:
        return iq.astype("<c8").tobytes()
    interleaved = np.empty(2 * iq.size, dtype=np.float64)
    interleaved[0::2], interleaved[1::2] = iq.real, iq.imag
    return np.clip(np.round(interleaved * 32768.0), -32768, 32767).astype("<i2").tobytes()
