"""Known true positions, read from the JSON lines ``heimdall-stream simulate --truth`` writes.

The file is followed while it grows (the simulator appends as it sends), so a result that
arrives before its truth line gets its error once the line is there on a later look-up.  Only
the newest ``limit`` truths are kept: memory stays bounded however long the map runs.
"""

from __future__ import annotations

import json
import logging
import threading
from collections import OrderedDict
from pathlib import Path

log = logging.getLogger(__name__)


class TruthFile:
    """capture_id → {latitude, longitude, frequency_hz} from a growing JSON-lines file."""

    def __init__(self, path: Path, limit: int = 100_000) -> None:
        self.path = path
        self.limit = limit
        self.bad_lines = 0
        self._offset = 0
        self._partial = b""
        self._known: OrderedDict[str, dict[str, float]] = OrderedDict()
        self._lock = threading.Lock()

    def get(self, capture_id: str) -> dict[str, float] | None:
        """The truth of ``capture_id``, reading lines appended since the last look-up."""
        with self._lock:
            if capture_id not in self._known:
                self._read_new_lines()
            return self._known.get(capture_id)

    def _read_new_lines(self) -> None:
        try:
            with self.path.open("rb") as handle:
                handle.seek(self._offset)
                chunk = handle.read()
        except OSError as exc:  # not written yet, or gone: no truth, the map goes on
            log.debug("truth file %s unreadable: %s", self.path, exc)
            return
        self._offset += len(chunk)
        *lines, self._partial = (self._partial + chunk).split(b"\n")
        for line in lines:
            if line.strip():
                self._add(line)

    def _add(self, line: bytes) -> None:
        try:
            item = json.loads(line)
            truth = {"latitude": float(item["latitude"]), "longitude": float(item["longitude"])}
            if item.get("frequency_hz") is not None:
                truth["frequency_hz"] = float(item["frequency_hz"])
            self._known[str(item["capture_id"])] = truth
        except (ValueError, KeyError, TypeError):
            self.bad_lines += 1
            return
        while len(self._known) > self.limit:
            self._known.popitem(last=False)
