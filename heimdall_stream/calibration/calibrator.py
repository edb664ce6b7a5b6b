"""The calibrator's work on each record, without Kafka: decode, check, join, score, count.

``Calibrator.on_result`` and ``on_truth`` take the raw bytes of a record of the results topic and
of the ground-truth topic.  A record that cannot be used is counted in
``heimdall_calibration_bad_records_total{kind, reason}`` and logged (the first of each reason,
then every ``LOG_EVERY``-th, with where it was), and left where it is: the topics keep it, so
nothing is lost and a DLQ would only copy it.  Reasons: ``empty`` (no value: a tombstone),
the decoder's (``bad_magic``,
``truncated``, ``corrupt``, ``wrong_schema``, ``unknown_schema``, ``decode``), and for truths
``bad_position`` (not a finite WGS84 position), ``bad_time`` (captured further in the future
than the join window: its event time would expire every waiting entry) and ``key_mismatch``
(the message key is not the record's capture id).

Event time: a truth's ``captured_at``; a result's ``produced_at`` minus its end-to-end latency,
which is its capture's ``captured_at``.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable, Sequence
from datetime import datetime

from heimdall_stream.calibration.coverage import Estimate, score
from heimdall_stream.calibration.join import SIDES, Step, TruthJoin
from heimdall_stream.calibration.metrics import CalibrationMetrics
from heimdall_stream.errors import DecodeError, GeometryError
from heimdall_stream.wire.codec import ground_truth_codec, localization_codec
from heimdall_stream.wire.messages import GroundTruth

log = logging.getLogger(__name__)
LOG_EVERY = 1000


class Calibrator:
    """Results and truths in, metrics out."""

    def __init__(
        self,
        metrics: CalibrationMetrics,
        *,
        confidences: Sequence[float],
        window_s: float,
        max_pending: int,
        wall_clock: Callable[[], float],
    ) -> None:
        self.metrics = metrics
        self.confidences = tuple(confidences)
        self.join: TruthJoin[Estimate, GroundTruth] = TruthJoin(window_s, max_pending)
        self._wall_clock = wall_clock
        self._bad: dict[tuple[str, str], int] = {}

    def on_result(self, value: bytes | None, where: str = "") -> None:
        """A record of the results topic."""
        self.metrics.records.labels("results").inc()
        if not value:
            self._bad_record("results", "empty", "a record without a value (a tombstone?)", where)
            return
        try:
            result = localization_codec().decode(value)
        except DecodeError as exc:
            self._bad_record("results", exc.reason, str(exc), where)
            return
        event_time = _seconds(result.produced_at) - result.timings.end_to_end_ms / 1000.0
        # Only what scoring needs waits in the join: a result's GeoJSON alone is ~2 KB.
        estimate = Estimate.of(result, self.confidences)
        self._after(self.join.add_result(result.capture_id, event_time, estimate))

    def on_truth(self, key: bytes | None, value: bytes | None, where: str = "") -> None:
        """A record of the ground-truth topic."""
        self.metrics.records.labels("truths").inc()
        if not value:
            self._bad_record("truths", "empty", "a record without a value (a tombstone?)", where)
            return
        try:
            truth = ground_truth_codec().decode(value)
        except DecodeError as exc:
            self._bad_record("truths", exc.reason, str(exc), where)
            return
        problem = self._check_truth(key, truth)
        if problem is not None:
            self._bad_record("truths", *problem, where)
            return
        self._after(self.join.add_truth(truth.capture_id, _seconds(truth.captured_at), truth))

    def _check_truth(self, key: bytes | None, truth: GroundTruth) -> tuple[str, str] | None:
        """(reason, message) when the truth cannot be used, else None."""
        lat, lon = truth.latitude, truth.longitude
        if not (math.isfinite(lat) and math.isfinite(lon) and -90.0 < lat < 90.0 and -180.0 <= lon <= 180.0):
            return "bad_position", f"truth of {truth.capture_id!r} is not a WGS84 position: {lat}, {lon}"
        ahead = _seconds(truth.captured_at) - self._wall_clock()
        if ahead > self.join.window_s:
            return "bad_time", f"truth of {truth.capture_id!r} was captured {ahead:.0f} s in the future"
        if key is not None and key != truth.capture_id.encode():
            return "key_mismatch", f"key {key[:64]!r} is not the truth's capture id {truth.capture_id!r}"
        return None

    def _after(self, step: Step[Estimate, GroundTruth]) -> None:
        """Count what a join step did, and score the pair it completed."""
        for dropped in step.dropped:
            self.metrics.unmatched.labels(dropped.side, dropped.reason).inc()
        for side in SIDES:
            self.metrics.pending.labels(side).set(self.join.pending(side))
        self.metrics.watermark.set(max(self.join.watermark, 0.0))
        if step.matched is None:
            return
        estimate, truth = step.matched
        try:
            judged = score(estimate, truth.latitude, truth.longitude, self.confidences)
        except GeometryError as exc:
            self.metrics.unscorable.labels(
                estimate.model_name, estimate.model_version, "bad_covariance"
            ).inc()
            log.warning("calibrate: the result of %s cannot be scored: %s", truth.capture_id, exc)
            return
        self.metrics.record_score(estimate.model_name, estimate.model_version, judged)

    def _bad_record(self, kind: str, reason: str, message: str, where: str) -> None:
        self.metrics.bad_records.labels(kind, reason).inc()
        seen = self._bad[(kind, reason)] = self._bad.get((kind, reason), 0) + 1
        if seen == 1 or seen % LOG_EVERY == 0:
            log.warning(
                "calibrate: unusable record on the %s topic%s (%s, %d so far): %s",
                kind,
                f" at {where}" if where else "",
                reason,
                seen,
                message,
            )


def _seconds(moment: datetime) -> float:
    return moment.timestamp()
