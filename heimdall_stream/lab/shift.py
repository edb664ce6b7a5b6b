"""A shift suite: simulator variants along the axes a real network differs on, and randomisation.

Each variant is a ``LinkModel`` that moves one axis (or, for ``combined``, many at once) away
from the nominal simulator: propagation law and shadowing, noise floor and receiver gain,
modulation (FM voice, unmodulated carrier, data bursts), key-up part-way through the window,
per-receiver start offsets with and without reported clocks, oscillator and DC offsets, and
receivers missing.

Training randomises the link per capture (``RandomisedLinks``): each axis is moved with
probability ``AXIS_PROBABILITY`` to a value drawn from its training range, at most
``MAX_TRAINING_AXES`` at a time.  Some things are held out of training altogether so the
evaluation stays honest: data bursts (training sees only FM voice and carriers) and
combinations of more than ``MAX_TRAINING_AXES`` axes (``combined``, built like a real network
that differs in everything at once).  ``HELD_OUT`` names those variants; the others are fresh
captures (their own seeds) of one axis the training randomised over, at a fixed setting.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from heimdall_stream.lab.simulator import LinkModel

NOMINAL = LinkModel()

VARIANTS: dict[str, LinkModel] = {
    "nominal": NOMINAL,
    "steep_path_loss": dataclasses.replace(NOMINAL, path_loss_exponent=3.5, shadowing_db=8.0),
    "noise_and_gain": dataclasses.replace(
        NOMINAL, noise_figure_db=10.0, noise_figure_spread_db=3.0, receiver_gain_db=5.0
    ),
    "fm_voice": dataclasses.replace(NOMINAL, modulation=(1.0, 0.0, 0.0)),
    "carrier": dataclasses.replace(NOMINAL, modulation=(0.0, 1.0, 0.0)),
    "data_bursts": dataclasses.replace(NOMINAL, modulation=(0.0, 0.0, 1.0)),
    "key_up": dataclasses.replace(NOMINAL, key_up_probability=1.0),
    "key_up_carrier": dataclasses.replace(NOMINAL, modulation=(0.0, 1.0, 0.0), key_up_probability=1.0),
    "start_offsets_reported": dataclasses.replace(NOMINAL, start_offset_s=0.04, synced_fraction=0.9),
    "start_offsets_unreported": dataclasses.replace(NOMINAL, start_offset_s=0.04, synced_fraction=0.3),
    "oscillator_and_dc": dataclasses.replace(NOMINAL, oscillator_ppm=3.0, dc_offset_dbfs=(-70.0, -50.0)),
    "receivers_missing": dataclasses.replace(NOMINAL, offline_probability=0.35),
    "combined": LinkModel(
        path_loss_exponent=3.4,
        shadowing_db=7.0,
        noise_figure_db=9.0,
        noise_figure_spread_db=2.0,
        receiver_gain_db=4.0,
        modulation=(0.8, 0.2, 0.0),
        key_up_probability=0.35,
        start_offset_s=0.03,
        synced_fraction=0.7,
        oscillator_ppm=2.0,
        dc_offset_dbfs=(-75.0, -55.0),
        offline_probability=0.1,
    ),
}
# Never seen in training, in kind or in combination.
HELD_OUT = frozenset({"data_bursts", "combined"})

AXIS_PROBABILITY = 0.3
MAX_TRAINING_AXES = 3
Axis = Callable[[LinkModel, np.random.Generator], LinkModel]


def _path_loss(link: LinkModel, rng: np.random.Generator) -> LinkModel:
    return dataclasses.replace(
        link, path_loss_exponent=float(rng.uniform(2.4, 3.7)), shadowing_db=float(rng.uniform(2.0, 9.0))
    )


def _noise_and_gain(link: LinkModel, rng: np.random.Generator) -> LinkModel:
    return dataclasses.replace(
        link,
        noise_figure_db=float(rng.uniform(3.0, 12.0)),
        noise_figure_spread_db=float(rng.uniform(0.0, 4.0)),
        receiver_gain_db=float(rng.uniform(0.0, 6.0)),
    )


def _carrier(link: LinkModel, rng: np.random.Generator) -> LinkModel:
    return dataclasses.replace(link, modulation=(0.0, 1.0, 0.0))


def _key_up(link: LinkModel, rng: np.random.Generator) -> LinkModel:
    return dataclasses.replace(link, key_up_probability=1.0)


def _start_offsets(link: LinkModel, rng: np.random.Generator) -> LinkModel:
    return dataclasses.replace(
        link, start_offset_s=float(rng.uniform(0.0, 0.05)), synced_fraction=float(rng.uniform(0.2, 1.0))
    )


def _oscillator_and_dc(link: LinkModel, rng: np.random.Generator) -> LinkModel:
    level = float(rng.uniform(-80.0, -50.0))
    return dataclasses.replace(
        link, oscillator_ppm=float(rng.uniform(0.5, 4.0)), dc_offset_dbfs=(level - 5.0, level + 5.0)
    )


def _missing(link: LinkModel, rng: np.random.Generator) -> LinkModel:
    return dataclasses.replace(link, offline_probability=float(rng.uniform(0.05, 0.5)))


TRAINING_AXES: tuple[Axis, ...] = (
    _path_loss,
    _noise_and_gain,
    _carrier,
    _key_up,
    _start_offsets,
    _oscillator_and_dc,
    _missing,
)


@dataclass(frozen=True)
class RandomisedLinks:
    """Per-capture link models for domain-randomised training (see the module docstring)."""

    seed: int = 0
    probability: float = AXIS_PROBABILITY
    max_axes: int = MAX_TRAINING_AXES

    def __call__(self, index: int) -> LinkModel:
        """The link model of capture ``index`` (deterministic)."""
        rng = np.random.default_rng([self.seed, index, 2])
        chosen = np.flatnonzero(rng.random(len(TRAINING_AXES)) < self.probability)
        if chosen.size > self.max_axes:
            chosen = rng.choice(chosen, size=self.max_axes, replace=False)
        link = NOMINAL
        for axis in sorted(int(i) for i in chosen):
            link = TRAINING_AXES[axis](link, rng)
        return link
