"""What the whole machine did during a timed run: CPU busy, steal, and CPU pressure.

A latency tail that every system shows, the plain per-message loop included, may come from
outside the consumer: the load generator, the reader and the broker share the same two cores.
Linux's pressure stall information (``/proc/pressure/cpu``, "some") counts the time at least
one runnable task waited for a CPU; steal counts the time the hypervisor ran someone else.
Sampled every ``SAMPLE_EVERY_S`` alongside the run, they say how contended the machine was
overall and, for the captures slower than a bound, over their lifetimes (widened to the samples
around them): if the slow captures lived through much higher pressure than the run as a whole,
they waited for a core.
"""

from __future__ import annotations

import threading
import time
from bisect import bisect_left, bisect_right
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import psutil

SAMPLE_EVERY_S = 0.1
PRESSURE = Path("/proc/pressure/cpu")


def _pressure_us() -> float | None:
    """Microseconds, since boot, during which some runnable task waited for a CPU (None: no PSI)."""
    try:
        first = PRESSURE.read_text().splitlines()[0]  # "some avg10=… avg60=… avg300=… total=N"
    except (OSError, IndexError):
        return None
    return float(first.rsplit("total=", 1)[1])


class MachineWatch:
    """Samples the machine's CPU busy and steal seconds and CPU pressure in a background thread."""

    def __init__(self) -> None:
        # (monotonic s, busy CPU s, steal CPU s, pressure µs or None)
        self.samples: list[tuple[float, float, float, float | None]] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.is_set():
            times = psutil.cpu_times()
            steal = getattr(times, "steal", 0.0)
            busy = sum(times) - times.idle - getattr(times, "iowait", 0.0) - steal
            self.samples.append((time.monotonic(), busy, steal, _pressure_us()))
            self._stop.wait(SAMPLE_EVERY_S)

    def stop(self) -> None:
        """Stop sampling."""
        self._stop.set()
        self._thread.join()

    def during(self, start: float, end: float) -> dict[str, float] | None:
        """Busy and steal cores, and the CPU pressure share, between two monotonic times."""
        times = [s[0] for s in self.samples]
        i = min(max(bisect_right(times, start) - 1, 0), len(times) - 1)
        j = min(bisect_left(times, end), len(times) - 1)
        if j <= i:
            return None
        (t0, busy0, steal0, p0), (t1, busy1, steal1, p1) = self.samples[i], self.samples[j]
        span = t1 - t0
        out = {"busy_cores": (busy1 - busy0) / span, "steal_cores": (steal1 - steal0) / span}
        if p0 is not None and p1 is not None:
            out["cpu_pressure"] = (p1 - p0) / 1e6 / span
        return out

    def tail(self, lifetimes: Sequence[tuple[float, float]], start: float, end: float) -> dict[str, Any]:
        """The machine over the whole run, and (medians) over the lifetimes of its slow captures.

        ``lifetimes`` are the slow captures' (captured, visible) monotonic times.
        """
        slow = [w for w in (self.during(a, b) for a, b in lifetimes) if w is not None]
        out: dict[str, Any] = {"run": self.during(start, end), "slow_captures": len(lifetimes)}
        if slow:
            out["slow_median"] = {k: _median([w[k] for w in slow if k in w]) for k in slow[0]}
            out["slow_seconds"] = len({int(a) for a, _ in lifetimes})  # how clustered they are
        return out


def _median(values: list[float]) -> float:
    ordered = sorted(values)
    mid = len(ordered) // 2
    return ordered[mid] if len(ordered) % 2 else (ordered[mid - 1] + ordered[mid]) / 2
