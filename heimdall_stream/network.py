"""The receiver network: which SDR sites exist and where they are.

The package ships the north-west Italy network (``data/receivers.json``); users can pass their
own file of the same shape.  Sites may be near-duplicates (Giaveno and Coazze are 1.6 km apart):
nothing here assumes receivers are far from each other.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any

from heimdall_stream.errors import ConfigurationError


@dataclass(frozen=True, slots=True)
class Receiver:
    """One SDR site."""

    id: str
    name: str
    latitude: float
    longitude: float
    altitude_m: float | None = None


@dataclass(frozen=True, slots=True)
class Network:
    """An ordered set of receivers; the order defines the model's receiver slots."""

    name: str
    receivers: tuple[Receiver, ...]

    @property
    def ids(self) -> tuple[str, ...]:
        """Receiver ids in slot order."""
        return tuple(r.id for r in self.receivers)

    def index(self) -> dict[str, int]:
        """Slot of each receiver id."""
        return {r.id: i for i, r in enumerate(self.receivers)}

    def centroid(self) -> tuple[float, float]:
        """Mean latitude and longitude: the default reference point of a local frame."""
        lat = sum(r.latitude for r in self.receivers) / len(self.receivers)
        lon = sum(r.longitude for r in self.receivers) / len(self.receivers)
        return lat, lon

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready form (the model contract embeds it)."""
        return {
            "name": self.name,
            "receivers": [
                {
                    "id": r.id,
                    "name": r.name,
                    "latitude": r.latitude,
                    "longitude": r.longitude,
                    "altitude_m": r.altitude_m,
                }
                for r in self.receivers
            ],
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Network:
        """Build and validate a network from its JSON form."""
        try:
            receivers = tuple(
                Receiver(
                    id=str(r["id"]),
                    name=str(r.get("name", r["id"])),
                    latitude=float(r["latitude"]),
                    longitude=float(r["longitude"]),
                    altitude_m=None if r.get("altitude_m") is None else float(r["altitude_m"]),
                )
                for r in data["receivers"]
            )
        except (KeyError, TypeError, ValueError) as exc:
            raise ConfigurationError(f"receiver network is malformed: {exc!r}") from exc
        ids = [r.id for r in receivers]
        if not receivers:
            raise ConfigurationError("receiver network has no receivers")
        if len(set(ids)) != len(ids):
            raise ConfigurationError(f"receiver ids are not unique: {ids}")
        for r in receivers:
            if not (-90 <= r.latitude <= 90 and -180 <= r.longitude <= 180) or not all(
                math.isfinite(v) for v in (r.latitude, r.longitude)
            ):
                raise ConfigurationError(f"receiver {r.id} has an invalid position")
        return cls(name=str(data.get("name", "network")), receivers=receivers)


def load_network(path: Path | None = None) -> Network:
    """The shipped network, or the one in ``path``."""
    if path is None:
        text = resources.files("heimdall_stream").joinpath("data", "receivers.json").read_text()
    else:
        text = Path(path).read_text()
    return Network.from_dict(json.loads(text))
