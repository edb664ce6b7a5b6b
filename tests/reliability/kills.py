"""SIGKILLs placed by the consumer's progress, not by the clock (shared by the crash tests)."""

from __future__ import annotations

import random
import time
from collections.abc import Callable, Sequence

from tests.integration.conftest import ConsumerProcess, wait_for


def kill_at_progress(
    consumer: ConsumerProcess,
    progress: Callable[[], int],
    moments: Sequence[int],
    rng: random.Random,
    timeout_s: float,
) -> int:
    """SIGKILL and restart ``consumer`` once ``progress()`` reaches each of ``moments``; the kills.

    Each kill waits for progress past the moment and past the restart before it (so it lands
    while the consumer works through the stream, however long start-ups take on this machine),
    then falls anywhere in the transaction under way.
    """
    kills = 0
    for moment in moments:
        since = progress()
        wait_for(
            lambda moment=moment, since=since: progress() >= max(moment, since + 1),
            timeout_s,
            f"the consumer made no progress after {kills} kills",
            interval=0.05,
        )
        time.sleep(rng.uniform(0.0, 0.5))
        consumer.kill()
        kills += 1
        consumer.start()
    return kills
