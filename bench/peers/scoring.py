"""One capture at a time through the project's own functions, as a hand-written app would call them.

decode → validate → the model's ``prepare`` + ``infer`` (a batch of one) → ``finish``.  No
micro-batching, no dedup, no result cache, no shadow models: only what every localization
costs.  Also the command-line arguments every peer shares.
"""

from __future__ import annotations

import argparse
import time
from datetime import UTC, datetime
from pathlib import Path

import numpy as np

from heimdall_stream.config import LimitsSettings
from heimdall_stream.errors import InferenceError, InvalidCaptureError
from heimdall_stream.models.inference import load_model
from heimdall_stream.models.registry import file_sha256
from heimdall_stream.processing.intake import decode, validate
from heimdall_stream.processing.records import DeadLetter, Decoded, InputRecord, Result
from heimdall_stream.processing.results import FinishContext, finish

CONFIDENCE = 0.95  # the consumer's default ellipse confidence


class Scorer:
    """A loaded model and the per-capture path from input bytes to a ``Result``."""

    def __init__(self, path: Path, *, name: str, version: str, batch_prefix: str) -> None:
        # onnxruntime's own defaults (its memory arena on), as a hand-written app would have them.
        self.model = load_model(
            path,
            name=name,
            version=version,
            uri=str(path),
            sha256=file_sha256(path),
            warm_up_batch=1,
            cpu_mem_arena=True,
        )
        self.limits = LimitsSettings()
        self.radius = self.model.contract.radius(CONFIDENCE)
        self.batch_prefix = batch_prefix
        self.scored = 0
        self.dead = 0

    def score(self, record: InputRecord) -> Result | DeadLetter:
        """The result of one input record, or the dead letter that says why there is none."""
        capture = decode(record, self.limits)
        if isinstance(capture, DeadLetter):
            return self._dead(capture)
        model = self.model
        try:
            validate(capture, model.contract, self.limits)
        except InvalidCaptureError as exc:
            return self._dead(DeadLetter.of(record, exc))
        prepared = model.prepare([capture])
        started = time.monotonic()
        try:
            prediction = model.infer(prepared)
        except InferenceError as exc:
            return self._dead(DeadLetter.of(record, exc))
        inference_ms = (time.monotonic() - started) * 1000.0
        position, covariance = prediction.position_enu_m[0], prediction.covariance_enu[0]
        lats, lons = model.contract.frame.to_latlon(np.array([position[0]]), np.array([position[1]]))
        self.scored += 1
        context = FinishContext(
            model=model,
            confidence=CONFIDENCE,
            radius=self.radius,
            batch_id=f"{self.batch_prefix}-{self.scored}",
            batch_size=1,
            inference_started=started,
            inference_ms=inference_ms,
            now=datetime.now(UTC),
        )
        result = finish(
            Decoded(record, capture),
            (position, covariance),
            (float(lats[0]), float(lons[0])),
            cache_key=prepared.cache_keys[0],
            cache_hit=False,
            receivers_used=prepared.receivers_used[0],
            ctx=context,
        )
        return self._dead(result) if isinstance(result, DeadLetter) else result

    def _dead(self, letter: DeadLetter) -> DeadLetter:
        self.dead += 1
        return letter


def arguments(description: str) -> argparse.ArgumentParser:
    """The arguments every peer takes (topics, group, model file and identity)."""
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--bootstrap", required=True, help="Kafka bootstrap servers")
    parser.add_argument("--input", required=True, help="topic of IqCapture records")
    parser.add_argument("--output", required=True, help="topic for Localization records")
    parser.add_argument("--group", required=True, help="consumer group id")
    parser.add_argument("--model", required=True, type=Path, help="the fetched ONNX model file")
    parser.add_argument("--model-name", default="bench", help="registered model name (for the records)")
    parser.add_argument("--model-version", default="1", help="registered model version")
    return parser
