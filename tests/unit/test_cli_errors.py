"""The command line maps every HeimdallError to an exit code and one stderr line, no traceback."""

from __future__ import annotations

import os
import sys
from collections.abc import Callable, Iterator
from types import ModuleType

import click
import pytest
from click.testing import CliRunner

from heimdall_stream import cli
from heimdall_stream.errors import (
    ConfigurationError,
    ControlMessageError,
    DecodeError,
    FatalKafkaError,
    HeimdallError,
    InferenceError,
    ModelContractError,
    ModelLoadError,
    ModelNotFoundError,
    RegistryUnavailableError,
)

FailingCommand = Callable[[BaseException], str]


@pytest.fixture(autouse=True)
def _quiet(monkeypatch: pytest.MonkeyPatch) -> None:
    # Commands set up logging on the root logger; keep pytest's handlers and levels as they are.
    monkeypatch.setattr(cli, "setup_logging", lambda *args, **kwargs: None)
    for name in [n for n in os.environ if n.startswith("HEIMDALL_")]:
        monkeypatch.delenv(name)


@pytest.fixture
def failing_command() -> Iterator[FailingCommand]:
    """Registers a test-only command on ``main`` that raises the given error; removed after."""
    names: list[str] = []

    def register(error: BaseException) -> str:
        name = f"test-fail-{len(names)}"

        @cli.main.command(name)
        def fail() -> None:
            raise error

        names.append(name)
        return name

    yield register
    for name in names:
        cli.main.commands.pop(name, None)


@pytest.mark.parametrize(
    ("error", "code"),
    [
        (ConfigurationError("HEIMDALL_KAFKA__BOOTSTRAP_SERVERS unreachable"), 2),
        (ModelLoadError("no such version"), 2),
        (RegistryUnavailableError("MLflow down and nothing cached"), 2),
        (ModelContractError("input kind unknown"), 2),
        (ControlMessageError("unsigned deployment"), 2),
        (FatalKafkaError("fatal Kafka error: producer fenced"), 3),
        (DecodeError("bad magic"), 4),
        (InferenceError("non-finite output"), 4),
    ],
)
def test_each_error_class_has_its_exit_code_and_one_line(
    failing_command: FailingCommand, error: HeimdallError, code: int
) -> None:
    result = CliRunner().invoke(cli.main, [failing_command(error)])
    assert result.exit_code == code, result.output
    assert result.stderr.startswith(f"error: {error}") and result.stderr.count("\n") == 1
    assert result.stdout == ""
    assert "Traceback" not in result.output


def test_every_heimdall_error_class_has_a_code() -> None:
    def subclasses(cls: type[HeimdallError]) -> list[type[HeimdallError]]:
        return [cls] + [s for sub in cls.__subclasses__() for s in subclasses(sub)]

    for cls in subclasses(HeimdallError):
        assert cli.exit_code(cls("x")) in {2, 3, 4}, cls


def test_a_multi_line_message_is_reported_on_one_line(failing_command: FailingCommand) -> None:
    result = CliRunner().invoke(cli.main, [failing_command(ConfigurationError("first\n  second\n"))])
    assert result.exit_code == 2
    assert result.stderr == "error: first second\n"


def test_an_unexpected_exception_is_a_bug_and_keeps_its_traceback(failing_command: FailingCommand) -> None:
    result = CliRunner().invoke(cli.main, [failing_command(RuntimeError("bug"))])
    assert result.exit_code == 1
    assert isinstance(result.exception, RuntimeError)


def test_run_with_a_bad_setting_names_the_variable(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HEIMDALL_BATCHING__MAX_BATCH_SIZE", "0")
    result = CliRunner().invoke(cli.main, ["run"])
    assert result.exit_code == 2
    assert result.stderr.startswith("error: invalid settings: HEIMDALL_BATCHING__MAX_BATCH_SIZE: ")
    assert result.stderr.count("\n") == 1 and "Traceback" not in result.stderr


def test_run_ends_with_exit_3_on_a_fatal_kafka_error(monkeypatch: pytest.MonkeyPatch) -> None:
    # A stand-in for the service module: the real one would need Kafka, Redis and a model.
    service = ModuleType("heimdall_stream.stream.service")

    def run_service(_settings: object) -> None:
        raise FatalKafkaError("fatal Kafka error: Fenced by a newer producer")

    service.run_service = run_service  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, "heimdall_stream.stream.service", service)
    result = CliRunner().invoke(cli.main, ["run"])
    assert result.exit_code == 3
    assert result.stderr == "error: fatal Kafka error: Fenced by a newer producer\n"


def test_usage_errors_keep_clicks_exit_code_2() -> None:
    result = CliRunner().invoke(cli.main, ["simulate", "--count", "many"])
    assert result.exit_code == 2 and "Invalid value" in result.stderr


def test_the_exit_codes_are_documented_in_the_help() -> None:
    result = CliRunner().invoke(cli.main, ["--help"])
    assert result.exit_code == 0
    for code, cls in ((2, ConfigurationError), (3, FatalKafkaError), (2, ModelLoadError)):
        assert cli.exit_code(cls("x")) == code
        assert f"\n    {code}  " in result.output
    assert isinstance(cli.main, click.Group) and isinstance(cli.main, cli.HeimdallGroup)


def test_a_missing_model_suggests_train_reference(failing_command: FailingCommand) -> None:
    missing = ModelNotFoundError(
        "registry has no models:/localization_model@champion (MLflow at http://mlflow:5000): not found"
    )
    result = CliRunner().invoke(cli.main, [failing_command(missing)])
    assert result.exit_code == 2
    assert result.stderr.startswith(f"error: {missing}; ")
    assert "`heimdall-stream train-reference`" in result.stderr and "HEIMDALL_MODEL__URI" in result.stderr
    assert "ModelRef(" not in result.stderr and "Traceback" not in result.stderr


def test_an_unreachable_registry_names_the_variable(failing_command: FailingCommand) -> None:
    down = RegistryUnavailableError("registry http://mlflow:5000 unreachable and no cached copy")
    result = CliRunner().invoke(cli.main, [failing_command(down)])
    assert result.exit_code == 2 and "HEIMDALL_MLFLOW__TRACKING_URI" in result.stderr


def test_other_errors_get_no_hint() -> None:
    assert cli.describe(DecodeError("bad magic")) == "bad magic"
    assert cli.describe(ConfigurationError("a\nb")) == "a b"


def test_a_model_reference_reads_as_its_uri() -> None:
    from heimdall_stream.models.registry import ModelRef

    for uri in ("models:/m@champion", "models:/m/3", "models:/m/Production"):
        assert str(ModelRef.parse(uri)) == uri
