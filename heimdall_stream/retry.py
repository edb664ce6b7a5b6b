"""One way to wait before trying again: exponential backoff with jitter, on injected clocks.

Every retry in heimdall-stream goes through here: the transactional Kafka calls (a bounded
number of attempts while librdkafka says the error is retriable), the control plane waiting for
an unreachable registry, and the Redis store probing again while degraded.  ``Backoff`` only
computes delays; who sleeps, and on which clock, is the caller's (so tests need no real time).
"""

from __future__ import annotations

import random
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TypeVar

T = TypeVar("T")


@dataclass
class Backoff:
    """Delays that start at ``first_s``, grow by ``factor`` up to ``max_s``, each ± ``jitter``.

    Jitter (a fraction of the delay) keeps many instances that failed together from retrying
    together.  ``reset`` after a success starts the next failure from ``first_s`` again.
    """

    first_s: float
    max_s: float
    factor: float = 2.0
    jitter: float = 0.1
    rng: Callable[[], float] = field(default=random.random, repr=False)
    _current: float | None = field(default=None, init=False, repr=False)

    def __post_init__(self) -> None:
        if not (0 < self.first_s <= self.max_s) or self.factor < 1 or not (0 <= self.jitter < 1):
            raise ValueError(f"bad backoff {self.first_s=} {self.max_s=} {self.factor=} {self.jitter=}")

    def next_delay(self) -> float:
        """The delay before the next attempt (grows with every call until ``reset``)."""
        self._current = (
            self.first_s if self._current is None else min(self._current * self.factor, self.max_s)
        )
        spread = self._current * self.jitter
        return max(self._current - spread + 2.0 * spread * self.rng(), 0.0)

    def reset(self) -> None:
        """Forget past failures."""
        self._current = None


def retry_call(
    fn: Callable[[], T],
    *,
    attempts: int,
    retriable: Callable[[BaseException], bool],
    backoff: Backoff,
    sleep: Callable[[float], None] = time.sleep,
    on_retry: Callable[[BaseException, float], None] | None = None,
) -> T:
    """Call ``fn`` up to ``attempts`` times while it raises what ``retriable`` accepts.

    The last failure, or the first one that is not retriable, is raised unchanged.
    """
    if attempts < 1:
        raise ValueError(f"attempts must be >= 1, got {attempts}")
    for attempt in range(1, attempts + 1):
        try:
            return fn()
        except Exception as exc:
            if attempt == attempts or not retriable(exc):
                raise
            delay = backoff.next_delay()
            if on_retry is not None:
                on_retry(exc, delay)
            sleep(delay)
    raise AssertionError("unreachable")  # pragma: no cover - the loop returns or raises
