"""Where a benchmark records its figures: ``bench/results/<date><suffix>.json``, never over an earlier run.

A second run on the same (UTC) day gets the time as well (``<date><suffix>-<HHMMSS>.json``), so a
day's earlier figures, which the README may cite, stay as they were recorded.
"""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path

RESULTS = Path(__file__).resolve().parent / "results"


def result_path(suffix: str = "", now: datetime | None = None, directory: Path = RESULTS) -> Path:
    """A fresh file for this run's figures: the day's name, or the day's and the time's when taken."""
    now = now or datetime.now(UTC)
    path = directory / f"{now:%Y-%m-%d}{suffix}.json"
    if path.exists():
        path = directory / f"{now:%Y-%m-%d}{suffix}-{now:%H%M%S}.json"
    return path
