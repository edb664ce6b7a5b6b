"""``heimdall-stream simulate``: publish simulated captures (registered by ``cli``).

Whole captures to the input topic, or with ``--per-receiver`` each receiver's part on its own
(with arrival jitter, late and missing receivers) to the receivers topic; optionally ground
truths for a share of them, the truth as JSON lines, or a file instead of Kafka.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import click

from heimdall_stream.config import load_settings
from heimdall_stream.console.progress import Steps
from heimdall_stream.console.settings_doc import GENERAL, SettingsCommand
from heimdall_stream.errors import ConfigurationError
from heimdall_stream.lab.arrivals import arrivals_from, per_receiver_options
from heimdall_stream.logs import setup_logging
from heimdall_stream.network import load_network


@click.command("simulate", cls=SettingsCommand, reads=(GENERAL, "kafka", "calibration", "join"))
@click.option("--count", default=100, show_default=True, help="Valid captures to send.")
@click.option("--rate", default=0.0, show_default=True, help="Captures per second (0 = as fast as possible).")
@click.option("--seed", default=0, show_default=True, help="Simulator seed.")
@click.option(
    "--duplicates", default=0.0, show_default=True, help="Fraction re-sent with the same capture_id."
)
@click.option("--malformed", default=0.0, show_default=True, help="Fraction followed by a malformed message.")
@click.option(
    "--pool", default=0, show_default=True, help="Distinct transmissions to cycle (0 = all distinct)."
)
@click.option("--topic", default=None, help="Topic (default: HEIMDALL_KAFKA__INPUT_TOPIC).")
@click.option("--truth", "truth_path", type=click.Path(path_type=Path), help="Write the truth as JSON lines.")
@click.option("--output", type=click.Path(path_type=Path), help="Write to this file instead of Kafka.")
@click.option(
    "--network",
    "network_path",
    type=click.Path(path_type=Path, exists=True),
    help="Receiver network JSON (default: the shipped north-west Italy network).",
)
@click.option(
    "--ground-truth",
    "truth_fraction",
    default=0.0,
    show_default=True,
    help="Fraction of captures whose GroundTruth is published to HEIMDALL_CALIBRATION__TRUTH_TOPIC.",
)
@per_receiver_options
def simulate(
    count: int,
    rate: float,
    seed: int,
    duplicates: float,
    malformed: float,
    pool: int,
    topic: str | None,
    truth_path: Path | None,
    output: Path | None,
    network_path: Path | None,
    truth_fraction: float,
    **arrival_options: Any,
) -> None:
    """Publish simulated IQ captures (with optional duplicates and malformed messages)."""
    from confluent_kafka import Producer

    from heimdall_stream.clients import (
        capture_producer_config,
        check_connectivity,
        hidden_topics_hint,
        refused_writes,
    )
    from heimdall_stream.lab.publisher import (
        DeliveryFailedError,
        Outgoing,
        SimulationPlan,
        TruthPlan,
        publish,
        write_file,
    )

    settings = load_settings()
    setup_logging(settings.log_level, settings.log_format)
    network = load_network(network_path)
    arrivals = arrivals_from(settings.join, **arrival_options)  # None: whole captures
    topic = topic or (settings.join.topic if arrivals else None)
    plan = SimulationPlan(count, rate, seed, duplicates, malformed, pool, per_receiver=arrivals)
    if output is not None:
        stats = write_file(output, network, plan)
    else:
        target = topic or settings.kafka.input_topic
        truths = TruthPlan(settings.calibration.truth_topic, truth_fraction) if truth_fraction > 0 else None
        present = check_connectivity(settings)  # exit 2 naming the cause when Kafka refuses
        for needed in (target, *([truths.topic] if truths else [])):
            if needed not in present:
                # Otherwise every message would fail delivery only after the whole run was sent.
                raise ConfigurationError(
                    f"topic {needed} does not exist on {settings.kafka.bootstrap_servers}"
                    f"{hidden_topics_hint(settings, 'it')}; "
                    "create it with `heimdall-stream topics` (the ground-truth topic: "
                    "`heimdall-stream calibrate --create-topic`)"
                )
        producer = Producer(capture_producer_config(settings))
        truth = truth_path.open("w") if truth_path else None
        try:
            with Steps() as steps:
                steps.start(f"publishing {count} captures to {target}", count)

                def tick(out: Outgoing) -> None:
                    if out.kind == "valid":
                        steps.advance()

                try:
                    stats = publish(
                        producer,
                        target,
                        network,
                        plan,
                        truth_file=truth,
                        on_sent=tick,
                        truths=truths,
                    )
                except DeliveryFailedError as exc:
                    raise refused_writes(settings, exc.errors) or exc from exc
        finally:
            if truth is not None:
                truth.close()
    click.echo(
        f"sent {stats.valid} captures, {stats.duplicates} duplicates, {stats.malformed} malformed "
        f"{dict(sorted(stats.malformed_kinds.items()))}"
        + (f", {stats.truths} ground truths" if stats.truths else "")
        + stats.parts_summary()
    )
