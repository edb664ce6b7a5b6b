"""``heimdall-stream calibrate``: the command line of the live calibrator (registered by ``cli``)."""

from __future__ import annotations

import click

from heimdall_stream.console.settings_doc import GENERAL, SettingsCommand
from heimdall_stream.errors import ConfigurationError
from heimdall_stream.map.command import parse_start


@click.command("calibrate", cls=SettingsCommand, reads=(GENERAL, "kafka", "calibration"))
@click.option(
    "--from",
    "start",
    default=None,
    help="Read both topics from this time: ISO 8601 (UTC unless it says) or a duration ago (15m, 2h). "
    "Default: HEIMDALL_CALIBRATION__WINDOW_S ago.",
)
@click.option("--port", type=int, default=None, help="Port of /metrics (default HEIMDALL_CALIBRATION__PORT).")
@click.option(
    "--create-topic",
    is_flag=True,
    help="Create the ground-truth topic if it is missing (as many partitions as the results topic).",
)
def calibrate(start: str | None, port: int | None, create_topic: bool) -> None:
    """Join the results with the ground-truth topic; export coverage and error per model version.

    Reads the results (HEIMDALL_KAFKA__OUTPUT_TOPIC, read_committed) and the known true positions
    (HEIMDALL_CALIBRATION__TRUTH_TOPIC, GroundTruth records keyed by capture id), and serves
    heimdall_calibration_* metrics on /metrics until SIGTERM or SIGINT.
    """
    from heimdall_stream.calibration.service import run_calibrate
    from heimdall_stream.calibration.topics import create_truth_topic
    from heimdall_stream.clients import check_connectivity
    from heimdall_stream.config import load_settings
    from heimdall_stream.logs import setup_logging

    settings = load_settings()
    setup_logging(settings.log_level, settings.log_format)
    start_at = parse_start(start)
    if port is not None:
        update = {"calibration": settings.calibration.model_copy(update={"port": port})}
        settings = settings.model_copy(update=update)
    present = check_connectivity(settings)
    results, truths = settings.kafka.output_topic, settings.calibration.truth_topic
    if results not in present:
        raise ConfigurationError(
            f"topic {results} does not exist on {settings.kafka.bootstrap_servers}; "
            "create it with `heimdall-stream topics`"
        )
    if truths not in present:
        if not create_topic:
            raise ConfigurationError(
                f"ground-truth topic {truths} does not exist on {settings.kafka.bootstrap_servers}; "
                "create it (keyed by capture id), or pass --create-topic"
            )
        create_truth_topic(settings)
    run_calibrate(settings, start_at)
