"""How simulated receivers' parts arrive (``simulate --per-receiver``), and the command-line options for it.

Light on purpose (click and dataclasses only): the command line builds its options from here
at import time, while the splitting and publishing itself (``lab.per_receiver``) loads the
simulator only when a command runs.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, TypeVar

import click

from heimdall_stream.service_settings import JoinSettings

F = TypeVar("F", bound=Callable[..., Any])


@dataclass(frozen=True)
class Arrivals:
    """How parts arrive: upload jitter, late and missing receivers, and how keys are agreed."""

    jitter_ms: float = 250.0  # mean of the exponential delay after the window
    window_ms: float = 2_000.0  # the join's window: on-time delays stay below it
    late_fraction: float = 0.02
    missing_fraction: float = 0.03
    scheduled: bool = True  # key = the capture id; False = the frequency + time-slot key
    slot_ms: int = 1_000
    channel_hz: float = 12_500.0


def per_receiver_options(command: F) -> F:
    """The ``--per-receiver`` flag and how its parts arrive, as click options of ``command``."""
    options = [
        click.option(
            "--per-receiver",
            is_flag=True,
            help="Each receiver publishes its own part (ReceiverCapture) to HEIMDALL_JOIN__TOPIC.",
        ),
        click.option(
            "--jitter-ms", default=250.0, show_default=True, help="Per receiver: mean upload delay."
        ),
        click.option(
            "--late", default=0.02, show_default=True, help="Per receiver: fraction of parts sent late."
        ),
        click.option("--missing", default=0.03, show_default=True, help="Per receiver: fraction never sent."),
        click.option(
            "--slot-keys", is_flag=True, help="Per receiver: key by frequency + time slot, not capture id."
        ),
    ]
    for option in reversed(options):
        command = option(command)
    return command


def arrivals_from(
    join: JoinSettings, *, per_receiver: bool, jitter_ms: float, late: float, missing: float, slot_keys: bool
) -> Arrivals | None:
    """The arrivals the options ask for, with the join's window, slot and raster (None: whole captures)."""
    if not per_receiver:
        return None
    return Arrivals(jitter_ms, join.window_ms, late, missing, not slot_keys, join.slot_ms, join.channel_hz)
