"""Where a replay writes its answers: a JSON-lines file or a topic of its own, never the live output."""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from pathlib import Path
from typing import IO, Protocol

from confluent_kafka import Producer

from heimdall_stream.api.bodies import localization_json
from heimdall_stream.clients import idempotent_producer_config
from heimdall_stream.config import Settings
from heimdall_stream.errors import ConfigurationError, HeimdallError
from heimdall_stream.processing.records import Result

SOURCE_HEADER = "heimdall.replay.source"


class Sink(Protocol):
    """Takes a version's answers; ``flush`` returns once everything written so far is durable."""

    def write(self, results: Sequence[Result]) -> None:
        """Write answers (buffered)."""

    def flush(self) -> None:
        """Make every answer written so far durable."""

    def written(self) -> int | None:
        """How far the durable output reaches (bytes of a file), or None where it cannot be cut back."""

    def close(self) -> None:
        """Flush and release."""


def check_target(settings: Settings, topic: str | None, path: Path | None) -> None:
    """Exactly one target, and never a topic the live service reads or writes."""
    if (topic is None) == (path is None):
        raise ConfigurationError("replay needs exactly one of --output-topic and --output")
    kafka = settings.kafka
    if topic in {
        kafka.output_topic,
        kafka.input_topic,
        kafka.dlq_topic,
        kafka.control_topic,
        kafka.status_topic,
    }:
        raise ConfigurationError(
            f"replay never writes to {topic}: the live service uses it; name a topic of its own"
        )


class FileSink:
    """JSON lines: ``{"source": {"partition", "offset"}, "localization": {...}}`` per answer.

    A new replay never appends to an existing file (answers of two runs would mix).  A resumed
    one first cuts the file back to what its saved progress covers, so the chunk that was being
    written when it stopped is written once, not twice.
    """

    def __init__(self, path: Path, resume_at: int | None = None) -> None:
        if resume_at is None:
            if path.exists() and path.stat().st_size > 0:
                raise ConfigurationError(
                    f"{path} already holds answers; a new replay does not append to them: "
                    "remove it or name another file"
                )
        else:
            size = path.stat().st_size if path.exists() else 0
            if size < resume_at:
                raise ConfigurationError(
                    f"{path} holds {size} bytes, fewer than the {resume_at} its saved progress "
                    "covers; remove the progress file to start the replay over"
                )
            os.truncate(path, resume_at)
        self._file: IO[str] = path.open("a", encoding="utf-8")

    def write(self, results: Sequence[Result]) -> None:
        """Append one line per answer."""
        for result in results:
            line = {
                "source": {"partition": result.record.partition, "offset": result.record.offset},
                "localization": localization_json(result.localization),
            }
            self._file.write(json.dumps(line) + "\n")

    def flush(self) -> None:
        """Flush to the disk (the progress saved after it may say these answers are written)."""
        self._file.flush()
        os.fsync(self._file.fileno())

    def written(self) -> int | None:
        """Bytes of the file so far (durable after ``flush``)."""
        return self._file.tell()

    def close(self) -> None:
        """Flush and close."""
        self.flush()
        self._file.close()


class TopicSink:
    """The Localization records, keyed by capture id, with their source in a header."""

    def __init__(self, settings: Settings, topic: str) -> None:
        self._topic = topic
        self._producer = Producer(idempotent_producer_config(settings, linger_ms=20))
        self._errors: list[str] = []

    def write(self, results: Sequence[Result]) -> None:
        """Produce one record per answer."""
        for result in results:
            record = result.record
            source = f"{record.topic}/{record.partition}/{record.offset}".encode()
            while True:
                try:
                    self._producer.produce(
                        self._topic,
                        key=result.localization.capture_id.encode(),
                        value=result.value,
                        headers=[(SOURCE_HEADER, source)],
                        on_delivery=self._delivered,
                    )
                    break
                except BufferError:
                    self._producer.poll(0.05)
            self._producer.poll(0)

    def _delivered(self, error: object, _message: object) -> None:
        if error is not None:
            self._errors.append(str(error))

    def flush(self) -> None:
        """Wait until every answer is acknowledged; raise if any was not."""
        left = self._producer.flush(120)
        if left or self._errors:
            raise HeimdallError(
                f"replay output to {self._topic}: {left} undelivered, errors {self._errors[:3]}"
            )

    def written(self) -> None:
        """None: records on a topic cannot be taken back (a resumed chunk may appear twice)."""
        return None

    def close(self) -> None:
        """Flush."""
        self.flush()
