"""The ``heimdall-stream`` command line.

Subcommands: ``run`` (the consumer), ``simulate`` (publish simulated captures),
``train-reference`` (train and register the reference models), ``deploy`` (publish a signed
model deployment and wait for the instances), ``status`` (what each instance applied),
``check-model`` (fetch, verify and describe a model), ``topics`` (create the service's topics),
``config`` (the effective settings, secrets masked) and ``demo`` (everything end to end on the
local stack).  Every setting comes from ``HEIMDALL_*`` environment variables (see
``heimdall_stream/config.py``); each command's ``--help`` lists the ones it reads
(``reads=``), and options here only cover what a command does, not where the services are.

Errors are mapped to exit codes in one place (``HeimdallGroup``, in ``console.failures``): a
``HeimdallError`` escaping any command ends it with one ``error: ...`` line on stderr saying
what to set, and the code of its class.  Another module adds a command with
``main.add_command(command)``; a ``SettingsCommand`` (``cls=SettingsCommand, reads=(...)``)
lists the settings it reads in its help.
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path
from typing import Any

import click
from tqdm import tqdm

from heimdall_stream.config import Settings, load_settings
from heimdall_stream.console.failures import EXIT_CODES, HeimdallGroup, describe, exit_code, one_line
from heimdall_stream.console.progress import Steps
from heimdall_stream.console.settings_doc import GENERAL, SECTIONS, SettingsCommand, effective, env_lines
from heimdall_stream.errors import HeimdallError
from heimdall_stream.logs import setup_logging
from heimdall_stream.map.command import map_command
from heimdall_stream.network import load_network

__all__ = ["EXIT_CODES", "HeimdallGroup", "SettingsCommand", "describe", "exit_code", "main", "one_line"]


def _settings() -> Settings:
    """The settings (``ConfigurationError`` naming each bad variable), with logging set up."""
    settings = load_settings()
    setup_logging(settings.log_level, settings.log_format)
    return settings


def _connect_or_exit(settings: Settings) -> set[str]:
    """The cluster's topics; stop (exit 2) when Kafka is unreachable or refuses the credentials.

    The ``ConfigurationError`` of the check is reported by ``HeimdallGroup`` like any other.
    """
    from heimdall_stream.clients import check_connectivity

    return check_connectivity(settings)


@click.group(cls=HeimdallGroup)
@click.version_option(package_name="heimdall-stream")
def main() -> None:
    """Real-time transmitter localization from SDR IQ captures on Kafka.

    Every setting is a HEIMDALL_* environment variable: `heimdall-stream COMMAND --help` lists
    the ones a command reads, with defaults; `heimdall-stream config` shows the values in force.

    \b
    Exit codes:
      0  done
      1  the command ran but did not succeed (deploy: not applied by every live instance
         within the timeout); also any unexpected error, which prints a traceback
      2  bad usage or settings, a service that refuses or cannot be reached at start,
         a model that cannot be loaded or does not fit its contract, a refused deployment
      3  fatal Kafka error (producer fenced, authorization, fatal idempotence error): restart
      4  any other heimdall-stream error
    """  # noqa: D301 (click's \b keeps the list as written)


@main.command(reads=SECTIONS)
def run() -> None:
    """Consume captures and produce localizations until SIGTERM/SIGINT."""
    settings = _settings()
    from heimdall_stream.stream.preload import ensure_allocator

    # Before anything else allocates much: it may re-execute this process on jemalloc.
    ensure_allocator(settings.memory.allocator, settings.memory.jemalloc_library)
    # Imported after the settings so a bad variable is reported before the heavy imports.
    from heimdall_stream.stream.service import run_service

    run_service(settings)


@main.command("train-reference", reads=(GENERAL, "mlflow"))
@click.option(
    "--n-train",
    default=8000,
    show_default=True,
    help="Simulated training captures (calibration and test sets get a quarter each, at least 200).",
)
@click.option("--seed", default=7, show_default=True, help="Simulator and training seed.")
@click.option("--if-absent", is_flag=True, help="Do nothing when localization_model@champion exists.")
@click.option("--no-iq", is_flag=True, help="Skip the IQ benchmark model.")
@click.option(
    "--shift-per-variant",
    type=click.IntRange(min=0),
    default=None,
    help="Fresh captures per shift-suite variant (default: n-train / 40, at least 20; 0 skips it).",
)
def train_reference(
    n_train: int, seed: int, if_absent: bool, no_iq: bool, shift_per_variant: int | None
) -> None:
    """Train, evaluate and register the reference models in MLflow.

    Prints each phase on stderr as it begins (simulate, fit, calibrate, export, register) and
    the evaluation report as JSON on stdout.
    """
    # Before mlflow is imported: stdout carries the report only, and MLflow's INFO chatter
    # (experiment created, waiting for the version) would bury the steps.
    os.environ.setdefault("MLFLOW_SUPPRESS_PRINTING_URL_TO_STDOUT", "true")
    os.environ.setdefault("MLFLOW_LOGGING_LEVEL", "WARNING")
    from heimdall_stream.lab.reference import champion_exists, train_and_register
    from heimdall_stream.lab.training import report_json

    settings = _settings()
    uri = settings.mlflow.tracking_uri
    if if_absent and champion_exists(uri):
        click.echo("localization_model@champion exists; not training")
        return
    with Steps() as steps:
        registered, report = train_and_register(
            uri,
            load_network(),
            n_train=n_train,
            seed=seed,
            progress=steps.advance,
            step=steps.start,
            include_iq=not no_iq,
            shift_per_variant=shift_per_variant,
        )
    click.echo(f"registered {registered.name}/{registered.version} @{registered.alias}")
    click.echo(report_json(report))


@main.command(reads=(GENERAL, "kafka", "model"))
@click.option("--model", "model_name", required=True, help="Registered model name.")
@click.option(
    "--version", "versions", multiple=True, required=True, help="URI=WEIGHT, repeated; weights sum to 1."
)
@click.option("--shadow", "shadows", multiple=True, help="URI scored for comparison only, repeated.")
@click.option(
    "--issued-by",
    default=lambda: os.environ.get("USER", "operator"),
    show_default="$USER",
    help="Who issues the deployment (recorded in it and in the status reports).",
)
@click.option(
    "--wait/--no-wait", default=True, show_default=True, help="Wait until every live instance applied it."
)
@click.option("--timeout", default=180.0, show_default=True, help="Seconds to wait.")
def deploy(
    model_name: str,
    versions: tuple[str, ...],
    shadows: tuple[str, ...],
    issued_by: str,
    wait: bool,
    timeout: float,
) -> None:
    """Publish a signed deployment (weights, shadows) and wait until the instances apply it."""
    from heimdall_stream.control.operator import parse_versions, publish_deployment, wait_applied

    settings = _settings()
    _connect_or_exit(settings)
    try:
        deployment = publish_deployment(settings, model_name, parse_versions(versions), shadows, issued_by)
    except HeimdallError as exc:
        click.echo(f"not published: {describe(exc)}", err=True)
        sys.exit(2)
    click.echo(f"published {model_name} generation {deployment.generation}")
    if not wait:
        return
    with tqdm(total=0, unit="instance", desc="applied", disable=None) as bar:

        def show(done: int, live: int) -> None:
            bar.total = live
            bar.n = done
            bar.refresh()

        applied, errors = wait_applied(settings, model_name, deployment.generation, timeout, show)
    for instance, error in sorted(errors.items()):
        click.echo(f"{instance}: {error}", err=True)
    click.echo(
        f"{len(applied)} instance(s) applied generation {deployment.generation}, "
        f"{len(errors)} did not (refused, or still pending at the timeout)"
    )
    if errors or not applied:
        sys.exit(1)


@main.command(reads=(GENERAL, "kafka"))
def status() -> None:
    """Show what every live instance has applied: generation, versions, weights, errors."""
    from heimdall_stream.control.operator import live_instances, statuses
    from heimdall_stream.wire.messages import ApplyState

    settings = _settings()
    _connect_or_exit(settings)
    live = live_instances(settings)
    for instance, report in sorted(statuses(settings).items()):
        state = "live" if instance in live else "gone"
        versions = ", ".join(
            f"{v.version}{' (shadow)' if v.shadow else f'={v.weight:g}'} sha256:{v.sha256[:12]}"
            for v in report.versions
        )
        click.echo(f"{instance} [{state}] {report.model_name} generation {report.generation}: {versions}")
        if report.error:
            # pending / refused / rejected: what became of the newest generation it was sent
            label = "error" if report.state is ApplyState.APPLIED else report.state.lower()
            click.echo(f"    {label}: {report.error}")


@main.command("check-model", reads=(GENERAL, "mlflow", "model"))
@click.argument("uri")
def check_model(uri: str) -> None:
    """Fetch, verify and describe a model (URI models:/name@alias or models:/name/<version>).

    Checks the file's sha256 against the registry's tag and the model against its contract,
    and warms it up as `run` would.
    """
    from heimdall_stream.models.loading import load_version
    from heimdall_stream.models.registry import ModelRegistry

    settings = _settings()
    try:
        registry = ModelRegistry(settings.mlflow.tracking_uri, settings.mlflow.cache_dir)
        model, _fetched = load_version(registry, uri, settings)  # as `run` would load it
    except HeimdallError as exc:
        click.echo(f"refused: {describe(exc)}", err=True)
        sys.exit(2)
    contract = model.contract
    click.echo(f"{model.label} sha256={model.sha256} input={contract.input_kind}")
    click.echo(f"receivers: {', '.join(contract.network.ids)}")
    click.echo(f"benchmark only: {contract.benchmark_only}; {contract.description}")


@main.command(reads=(GENERAL, "kafka"))
@click.option("--partitions", default=6, show_default=True, help="Partitions of the input and output topics.")
def topics(partitions: int) -> None:
    """Create the input, output, DLQ, control and status topics if missing."""
    from heimdall_stream.clients import ensure_topics

    settings = _settings()
    _connect_or_exit(settings)
    ensure_topics(settings, partitions)
    click.echo("topics ready")


@main.command(reads=(GENERAL, "kafka", "redis", "mlflow", "model", "batching", "limits", "join"))
@click.option("--count", default=300, show_default=True, help="Captures to send.")
@click.option("--rate", default=20.0, show_default=True, help="Captures per second.")
@click.option(
    "--output",
    default=Path("demo-output"),
    type=click.Path(path_type=Path),
    show_default=True,
    help="Directory of the GeoJSON of every result and its truth.",
)
@click.option("--keep-stack", is_flag=True, help="Leave Kafka, Redis and MLflow running afterwards.")
@click.option("--per-receiver", is_flag=True, help="Receivers publish on their own; the consumer joins them.")
def demo(**options: Any) -> None:
    """Run everything end to end on the local stack and print a summary.

    The stack's addresses replace HEIMDALL_KAFKA__BOOTSTRAP_SERVERS, HEIMDALL_REDIS__URL and
    HEIMDALL_MLFLOW__TRACKING_URI; the demo's consumer logs at WARNING unless HEIMDALL_LOG_LEVEL
    is set.
    """
    from heimdall_stream.lab.demo import run_demo

    setup_logging("INFO")
    sys.exit(run_demo(**options))  # count, rate, output, keep_stack, per_receiver


@main.command("config", reads=SECTIONS)
@click.option("--json", "as_json", is_flag=True, help="One JSON object instead of VARIABLE=value lines.")
def show_config(as_json: bool) -> None:
    """Print the effective settings (environment, else defaults) with secrets masked.

    One HEIMDALL_X=value line per variable (shell-quoted; an unset one as a comment), or with
    --json one object.  Passwords, keys and tokens show as ****: SecretStr settings, anything
    named like a credential (also inside HEIMDALL_KAFKA__CLIENT_OPTIONS) and URL passwords.
    """
    values = effective(load_settings())
    if as_json:
        click.echo(json.dumps(values, indent=2))
    else:
        for line in env_lines(values):
            click.echo(line)


from heimdall_stream.replay.command import replay as _replay  # noqa: E402 (light: click only)

main.add_command(_replay)

main.add_command(map_command)

from heimdall_stream.calibration.command import calibrate as _calibrate  # noqa: E402 (light: click only)
from heimdall_stream.lab.simulate_command import simulate as _simulate  # noqa: E402 (light: click only)

main.add_command(_calibrate)
main.add_command(_simulate)


if __name__ == "__main__":
    main()
