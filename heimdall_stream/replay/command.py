"""The ``heimdall-stream replay`` command (registered in ``cli``); the work is in ``replay.runner``."""

from __future__ import annotations

import json
from pathlib import Path

import click

from heimdall_stream.console.settings_doc import GENERAL, SettingsCommand


@click.command(
    "replay", cls=SettingsCommand, reads=(GENERAL, "kafka", "mlflow", "model", "batching", "limits")
)
@click.option(
    "--from",
    "start",
    default="earliest",
    show_default=True,
    help="First position: an offset (every partition), earliest, latest or an ISO 8601 time.",
)
@click.option(
    "--to",
    "end",
    default="latest",
    show_default=True,
    help="End position, exclusive (same forms); fixed when the replay starts.",
)
@click.option(
    "--model",
    "models",
    multiple=True,
    required=True,
    help="Candidate version to score with, e.g. models:/localization_model/4 (repeatable).",
)
@click.option("--output-topic", default=None, help="Write the answers to this topic (never the live output).")
@click.option(
    "--output",
    "output_file",
    type=click.Path(path_type=Path),
    default=None,
    help="Write the answers to this JSON-lines file instead.",
)
@click.option(
    "--truth",
    "truth_file",
    type=click.Path(path_type=Path, exists=True, dir_okay=False),
    default=None,
    help="Simulator truth as JSON lines (simulate --truth): error and coverage.",
)
@click.option(
    "--live-topic",
    default=None,
    help="Where the live answers are (default: the configured output topic); '' skips the comparison.",
)
@click.option(
    "--state",
    "state_file",
    type=click.Path(path_type=Path, dir_okay=False),
    default=None,
    help="Progress file: saved after every chunk, resumed from when it exists.",
)
@click.option(
    "--report",
    "report_file",
    type=click.Path(path_type=Path, dir_okay=False),
    default=None,
    help="Also write the report to this JSON file.",
)
def replay(
    start: str,
    end: str,
    models: tuple[str, ...],
    output_topic: str | None,
    output_file: Path | None,
    truth_file: Path | None,
    live_topic: str | None,
    state_file: Path | None,
    report_file: Path | None,
) -> None:
    """Score a range of the input topic with candidate versions, into a topic or file of its own."""
    from heimdall_stream.config import load_settings
    from heimdall_stream.console.progress import Steps
    from heimdall_stream.logs import setup_logging
    from heimdall_stream.replay.runner import ReplayJob
    from heimdall_stream.replay.runner import replay as run_replay

    settings = load_settings()
    setup_logging(settings.log_level, settings.log_format)
    job = ReplayJob(
        start,
        end,
        models,
        output_topic,
        output_file,
        truth_file,
        settings.kafka.output_topic if live_topic is None else (live_topic or None),
        state_file,
    )
    # Like the other long commands: a bar on a terminal, plain quarter lines in CI logs and pipes.
    with Steps() as steps:

        def progress(done: int, total: int) -> None:
            if not steps.active:  # the first call: the range is resolved, its size known
                steps.start(f"replaying {total} offsets of {settings.kafka.input_topic}", total)
            steps.advance(done)

        report = run_replay(settings, job, progress)
    text = json.dumps(report, indent=2)
    if report_file is not None:
        report_file.write_text(text + "\n", encoding="utf-8")
    click.echo(text)
