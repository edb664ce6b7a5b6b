"""Benchmark figures are recorded under a fresh name: a second run never replaces the first."""

from datetime import UTC, datetime

from bench.recorded import result_path


def test_a_later_run_on_the_same_day_gets_its_own_file(tmp_path):
    morning = datetime(2026, 12, 1, 1, 5, 0, tzinfo=UTC)
    first = result_path("-compare", morning, tmp_path)
    assert first.name == "2026-12-01-compare.json"
    first.write_text("{}")
    later = result_path("-compare", datetime(2026, 12, 1, 4, 16, 9, tzinfo=UTC), tmp_path)
    assert later.name == "2026-12-01-compare-041609.json"
    assert result_path("", morning, tmp_path).name == "2026-12-01.json"  # other kinds are apart
