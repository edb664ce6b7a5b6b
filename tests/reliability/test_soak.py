"""Soak: a steady load for a bounded time; RSS, open file descriptors and p99 must stay flat.

CI runs 120 s (``HEIMDALL_SOAK_SECONDS`` sets longer runs, e.g. 1200 for the documented 20-minute
soak).  Slopes are fitted after a warm-up third and printed; the asserts only catch clear leaks.
"""

from __future__ import annotations

import os
import threading
import time

import numpy as np
import psutil
import pytest

from tests.integration.conftest import (
    ConsumerProcess,
    group_assignment,
    read_topic,
    results_of,
    send_captures,
    wait_for,
)

SECONDS = float(os.environ.get("HEIMDALL_SOAK_SECONDS", "120"))
RATE = 40.0
# The suite-wide per-test timeout is 600 s; a long soak gets its own length plus slack.
pytestmark = [pytest.mark.reliability, pytest.mark.slow, pytest.mark.timeout(int(SECONDS) + 420)]


def _slope_per_minute(samples: list[tuple[float, float]]) -> float:
    t, v = np.array(samples).T
    return float(np.polyfit(t / 60.0, v, 1)[0])


def test_steady_load_keeps_memory_descriptors_and_latency_flat(make_settings, tmp_path):
    settings = make_settings(instance_id="soak-1")
    consumer = ConsumerProcess(settings, tmp_path / "soak.log").start()
    count = int(SECONDS * RATE)
    sender = threading.Thread(target=lambda: send_captures(settings, count, pool=50, rate=RATE, seed=71))
    # The load starts once the consumer is up and holds the partitions, however long start-up takes.
    wait_for(lambda: any(group_assignment(settings).values()), 180, "the consumer did not join its group")
    process = psutil.Process(consumer.proc.pid)
    started = time.monotonic()
    sender.start()
    rss, fds = [], []
    try:
        while sender.is_alive():
            elapsed = time.monotonic() - started
            rss.append((elapsed, process.memory_info().rss / 1e6))
            fds.append((elapsed, float(process.num_fds())))
            time.sleep(2)
        results = results_of(
            read_topic(
                settings.kafka.bootstrap_servers, settings.kafka.output_topic, expected=count, timeout=240
            )
        )
    finally:
        assert consumer.terminate() == 0
    assert len(results) == count
    warm = SECONDS / 3
    rss_steady = [s for s in rss if s[0] > warm]
    fds_steady = [s for s in fds if s[0] > warm]
    by_window: dict[int, list[float]] = {}
    order = sorted(results, key=lambda r: r.produced_at)
    first = order[0].produced_at
    for r in order:
        by_window.setdefault(int((r.produced_at - first).total_seconds() // 20), []).append(
            r.timings.end_to_end_ms
        )
    p99 = [(w * 20.0, float(np.percentile(v, 99))) for w, v in sorted(by_window.items()) if w * 20.0 > warm]
    rss_slope, fd_slope, p99_slope = (_slope_per_minute(s) for s in (rss_steady, fds_steady, p99))
    print(
        f"soak {SECONDS:.0f} s at {RATE:.0f}/s: RSS {rss_steady[0][1]:.0f}→{rss_steady[-1][1]:.0f} MB "
        f"({rss_slope:+.2f} MB/min), fds {fds_steady[0][1]:.0f}→{fds_steady[-1][1]:.0f} "
        f"({fd_slope:+.2f}/min), "
        f"p99 slope {p99_slope:+.1f} ms/min"
    )
    assert rss_steady[-1][1] < rss_steady[0][1] * 1.15 + 20, "RSS grows under a steady load"
    assert fds_steady[-1][1] - fds_steady[0][1] <= 8, "file descriptors leak"
