"""The machine's CPU over a run and over its slow captures' lifetimes, from given samples."""

import pytest

from bench.machine import MachineWatch, _pressure_us


def _watch(samples: list[tuple[float, float, float, float | None]]) -> MachineWatch:
    watch = MachineWatch()
    watch.stop()
    watch.samples = samples
    return watch


def test_busy_steal_and_pressure_are_rates_between_the_samples_around_the_window():
    # 10 s: 1.5 cores busy, 0.1 stolen, pressure 0.2 of the time; then 2 s fully contended.
    watch = _watch([(0.0, 0.0, 0.0, 0.0), (10.0, 15.0, 1.0, 2e6), (12.0, 19.0, 1.0, 4e6)])
    run = watch.during(0.0, 10.0)
    assert run == pytest.approx({"busy_cores": 1.5, "steal_cores": 0.1, "cpu_pressure": 0.2})
    late = watch.during(10.5, 11.5)  # widened to the samples around it
    assert late == pytest.approx({"busy_cores": 2.0, "steal_cores": 0.0, "cpu_pressure": 1.0})


def test_the_slow_captures_are_compared_with_the_whole_run():
    watch = _watch([(float(t), 1.0 * t, 0.0, 1e5 * t + (8e5 if t >= 5 else 0.0)) for t in range(11)])
    tail = watch.tail([(5.1, 5.4), (5.5, 5.9)], 0.0, 10.0)
    assert tail["slow_captures"] == 2 and tail["slow_seconds"] == 1
    assert tail["run"]["cpu_pressure"] == pytest.approx(0.18)
    assert tail["slow_median"]["cpu_pressure"] == pytest.approx(0.1)  # the jump was before 5 s
    on_a_sample = watch.during(5.0, 6.0)  # starting on a sample: from that one, not the one before
    assert on_a_sample is not None and on_a_sample["cpu_pressure"] == pytest.approx(0.1)


def test_without_samples_or_pressure_information_nothing_is_made_up():
    assert _watch([]).during(0.0, 1.0) is None
    no_psi = _watch([(0.0, 0.0, 0.0, None), (1.0, 1.0, 0.0, None)]).during(0.0, 1.0)
    assert no_psi is not None and "cpu_pressure" not in no_psi
    assert _watch([]).tail([], 0.0, 1.0) == {"run": None, "slow_captures": 0}
    pressure = _pressure_us()  # this machine's kernel: with pressure information or without
    assert pressure is None or pressure >= 0
