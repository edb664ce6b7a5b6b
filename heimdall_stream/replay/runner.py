"""``heimdall-stream replay``: score a range of the input topic with candidate versions.

Each chunk of records read from the range goes through the stream's batch path
(``BatchProcessor.process``) once per candidate version, with the same pass-through dedup as
the predict API (a replay re-scores on purpose) and an empty in-memory result cache (answers of
the live versions must not stand in for a candidate).  Answers go to the replay's own topic or
file; the report compares each version with the simulator's truth (when a truth file is given)
and with what the live service answered for the same captures (read from its output topic).

Memory stays bounded whatever the range: records are read a chunk at a time and reports are
fixed-bin histograms.  Two lookups grow with the range: the truth (one entry per line of the
truth file) and the live answers (about 100 bytes per capture in the range).  With ``state``,
the resolved range, the offsets reached and the reports are saved after every chunk once its
answers are durable: a replay that stops resumes there, over the range it started with.  A file
is cut back to what the progress covers, so the chunk in progress is written once; on a topic
its answers may be written twice.
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from prometheus_client import CollectorRegistry

from heimdall_stream.api.scoring import PassThrough
from heimdall_stream.config import Settings
from heimdall_stream.errors import ConfigurationError
from heimdall_stream.metrics import Metrics
from heimdall_stream.models.inference import LoadedModel
from heimdall_stream.models.loading import load_version
from heimdall_stream.models.registry import ModelRegistry
from heimdall_stream.models.routing import ModelSet
from heimdall_stream.processing.cache import ResultCache
from heimdall_stream.processing.processor import BatchProcessor
from heimdall_stream.processing.store import InMemoryStore
from heimdall_stream.replay.report import Answer, VersionReport
from heimdall_stream.replay.sinks import FileSink, Sink, TopicSink, check_target
from heimdall_stream.replay.source import Range, is_time, read, reader, resolve
from heimdall_stream.wire.codec import localization_codec

log = logging.getLogger(__name__)
Progress = Callable[[int, int], None]  # (records done in this call, offsets in the range)


@dataclass(frozen=True)
class ReplayJob:
    """What to replay, with what, to where."""

    start: str
    end: str
    model_uris: tuple[str, ...]
    output_topic: str | None = None
    output_file: Path | None = None
    truth_file: Path | None = None
    live_topic: str | None = None  # None: no comparison with the live answers
    state_file: Path | None = None
    chunk: int = 256


def replay(settings: Settings, job: ReplayJob, progress: Progress | None = None) -> dict[str, Any]:
    """Run the replay; return its report (range, versions, figures per version)."""
    check_target(settings, job.output_topic, job.output_file)
    if not job.model_uris:
        raise ConfigurationError("replay needs at least one --model")
    registry = ModelRegistry(settings.mlflow.tracking_uri, settings.mlflow.cache_dir)
    models = [load_version(registry, uri, settings)[0] for uri in job.model_uris]
    consumer = reader(settings)
    try:
        saved = _saved_progress(job, settings.kafka.input_topic, models)
        if saved is None:  # a new replay: its range is fixed now, and saved with its progress
            span = resolve(consumer, settings.kafka.input_topic, job.start, job.end)
            start = {p: first for p, (first, _) in span.bounds.items()}
            reports = {m.label: VersionReport(m.label) for m in models}
            output_bytes = None
        else:
            span, start, reports, output_bytes = saved
        truth = load_truth(job.truth_file) if job.truth_file else {}
        live = load_live(settings, job.live_topic, span, since=job.start) if job.live_topic else {}
        log.info(
            "replaying %d offsets of %s with %s", span.total, span.topic, ", ".join(m.label for m in models)
        )
        sink = _sink(settings, job, resume_at=output_bytes)
        processors = [_processor(settings, model) for model in models]
        try:
            if progress is not None:
                progress(sum(start[p] - s for p, (s, _) in span.bounds.items()), span.total)
            for records in read(consumer, span, start, chunk=job.chunk):
                for model, processor in zip(models, processors, strict=True):
                    scored = processor.process(records)
                    sink.write(scored.results)
                    report = reports[model.label]
                    report.add(model.contract.frame, [r.localization for r in scored.results], truth, live)
                    report.add_dead_letters([letter.reason for letter in scored.dead_letters])
                for record in records:
                    start[record.partition] = max(start[record.partition], record.offset + 1)
                sink.flush()
                _save(job, span, models, start, reports, output_bytes=sink.written())
                if progress is not None:
                    progress(len(records), span.total)
        finally:
            sink.close()
    finally:
        consumer.close()
    return {
        "topic": span.topic,
        "range": span.to_json(),
        "truth": len(truth),
        "live_answers": len(live),
        "versions": {label: report.summary() for label, report in reports.items()},
    }


def _sink(settings: Settings, job: ReplayJob, *, resume_at: int | None) -> Sink:
    """The job's sink; a resumed file is cut back to ``resume_at``, the bytes its progress covers."""
    if job.output_topic is not None:
        return TopicSink(settings, job.output_topic)
    if job.output_file is None:
        raise ConfigurationError("replay needs exactly one of --output-topic and --output")
    return FileSink(job.output_file, resume_at=resume_at)


def _processor(settings: Settings, model: LoadedModel) -> BatchProcessor:
    metrics = Metrics(CollectorRegistry())  # a replay's own: nothing here is scraped
    models = ModelSet.single(model)
    return BatchProcessor(
        lambda: models,
        PassThrough(metrics),
        ResultCache(InMemoryStore()),  # never written: every answer is the candidate's own
        metrics,
        limits=settings.limits,
        confidence=settings.model.confidence,
        batch_prefix=f"replay-{model.version}",
    )


def load_truth(path: Path) -> dict[str, tuple[float, float]]:
    """Truth by capture id from JSON lines (``simulate --truth``: capture_id, latitude, longitude)."""
    truth: dict[str, tuple[float, float]] = {}
    with path.open(encoding="utf-8") as lines:
        for number, line in enumerate(lines, 1):
            if not line.strip():
                continue
            try:
                item = json.loads(line)
                truth[str(item["capture_id"])] = (float(item["latitude"]), float(item["longitude"]))
            except (ValueError, KeyError, TypeError) as exc:
                raise ConfigurationError(f"{path}:{number}: not a truth line ({exc})") from None
    return truth


def load_live(settings: Settings, topic: str, span: Range, *, since: str = "earliest") -> dict[str, Answer]:
    """The live service's answers to captures of the range, by capture id (read_committed, no commits).

    The live topic is read from ``since`` when it is a time (an answer is written after its
    capture, so none of the range's answers is older), else from its start.
    """
    consumer = reader(settings)
    answers: dict[str, Answer] = {}
    codec = localization_codec()
    try:
        output = resolve(consumer, topic, since if is_time(since) else "earliest", "latest")
        for records in read(consumer, output, {p: s for p, (s, _) in output.bounds.items()}, chunk=1000):
            for record in records:
                if record.value is None:
                    continue
                answer = codec.decode(record.value)
                first, end = span.bounds.get(answer.lineage.source_partition, (0, 0))
                if first <= answer.lineage.source_offset < end:
                    c = answer.covariance
                    answers[answer.capture_id] = Answer(
                        answer.latitude,
                        answer.longitude,
                        (c.sigma_east_m, c.sigma_north_m, c.rho),
                        answer.model_version,
                    )
    finally:
        consumer.close()
    return answers


def _identity(job: ReplayJob, topic: str, models: list[LoadedModel]) -> dict[str, Any]:
    """What a saved progress must match to be resumed: the positions as given, not as resolved.

    The range is resolved once, when the replay first starts, and saved with the progress: a
    resumed ``--to latest`` keeps the end it had (the live topic has grown since), and a resumed
    ``--from earliest`` its start (retention may have deleted the first messages since).
    """
    return {
        "topic": topic,
        "from": job.start,
        "to": job.end,
        "models": [m.sha256 for m in models],
        # Where the answers go: a file's progress is no position in a topic, nor the reverse.
        "output": f"topic:{job.output_topic}" if job.output_topic is not None else f"file:{job.output_file}",
    }


def _saved_progress(
    job: ReplayJob, topic: str, models: list[LoadedModel]
) -> tuple[Range, dict[int, int], dict[str, VersionReport], int] | None:
    """The range, next offsets, reports and output bytes saved by an earlier run of this replay."""
    if job.state_file is None or not job.state_file.exists():
        return None
    saved = json.loads(job.state_file.read_text(encoding="utf-8"))
    if saved.get("identity") != _identity(job, topic, models):
        raise ConfigurationError(
            f"{job.state_file} is the progress of another replay (topic, positions or models differ); "
            "remove it to start over"
        )
    span = Range.from_json(topic, saved["range"])
    start = {p: s for p, (s, _) in span.bounds.items()}
    start.update({int(p): int(o) for p, o in saved["next"].items()})
    reports = {label: VersionReport.from_json(r) for label, r in saved["reports"].items()}
    output_bytes = saved.get("output_bytes")
    if job.output_file is not None and output_bytes is None:
        # Without the position its answers reached, cutting the file back would guess: refuse.
        raise ConfigurationError(
            f"{job.state_file} does not say how far {job.output_file} was written; "
            "remove it (and the file) to start the replay over"
        )
    log.info("resuming from %s", job.state_file)
    return span, start, reports, int(output_bytes or 0)


def _save(
    job: ReplayJob,
    span: Range,
    models: list[LoadedModel],
    start: dict[int, int],
    reports: dict[str, VersionReport],
    *,
    output_bytes: int | None = None,
) -> None:
    """Save the progress (atomically) after a chunk's answers are durable up to ``output_bytes``."""
    if job.state_file is None:
        return
    state = {
        "identity": _identity(job, span.topic, models),
        "range": span.to_json(),
        "next": {str(p): o for p, o in start.items()},
        "reports": {label: r.to_json() for label, r in reports.items()},
        "output_bytes": output_bytes,
    }
    temporary = job.state_file.with_suffix(job.state_file.suffix + ".tmp")
    temporary.write_text(json.dumps(state), encoding="utf-8")
    os.replace(temporary, job.state_file)  # atomic: a crash leaves the previous progress whole
