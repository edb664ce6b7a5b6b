"""Every command's --help: help text for each option and the HEIMDALL_* settings it reads;
``heimdall-stream config``: the effective settings with every secret masked."""

from __future__ import annotations

import json
import os
import shlex

import click
import pytest
from click.testing import CliRunner

from heimdall_stream import cli
from heimdall_stream.config import Settings
from heimdall_stream.console.settings_doc import SECTIONS, SettingsCommand, documented

# What each command reads; run and config read everything.
READS = {
    "run": SECTIONS,
    "config": SECTIONS,
    "simulate": ("general", "kafka", "calibration", "join"),
    "train-reference": ("general", "mlflow"),
    "deploy": ("general", "kafka", "model"),
    "status": ("general", "kafka"),
    "check-model": ("general", "mlflow", "model"),
    "topics": ("general", "kafka"),
    "demo": ("general", "kafka", "redis", "mlflow", "model", "batching", "limits", "join"),
    "replay": ("general", "kafka", "mlflow", "model", "batching", "limits"),
    "map": ("general", "kafka", "map"),
    "calibrate": ("general", "kafka", "calibration"),
}


@pytest.fixture(autouse=True)
def _clean_env(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in [n for n in os.environ if n.startswith("HEIMDALL_")]:
        monkeypatch.delenv(name)


def _help(command: str) -> str:
    result = CliRunner().invoke(cli.main, [command, "--help"], terminal_width=100)
    assert result.exit_code == 0, result.output
    return result.output


def test_every_option_of_every_command_has_help_text() -> None:
    for name, command in cli.main.commands.items():
        for param in command.params:
            if isinstance(param, click.Option):
                assert param.help, f"{name} {param.opts} has no help text"


@pytest.mark.parametrize("command", sorted(READS))
def test_help_lists_the_settings_of_the_sections_the_command_reads(command: str) -> None:
    assert isinstance(cli.main.commands[command], SettingsCommand)
    assert cli.main.commands[command].reads == READS[command]
    text = _help(command)
    for doc in documented(SECTIONS):
        listed = f"  {doc.variable}=" in text or f"  {doc.variable} (unset)" in text
        assert listed == (doc.section in READS[command]), (command, doc.variable)
        if listed:  # the description follows the variable (the first words, before any wrap)
            first_words = " ".join((doc.field.description or "").split()[:2])
            assert first_words in " ".join(text.split()), (command, doc.variable)


def test_help_shows_defaults_from_the_model() -> None:
    text = _help("run")
    assert "HEIMDALL_KAFKA__BOOTSTRAP_SERVERS=localhost:9092\n" in text
    assert "HEIMDALL_KAFKA__STATIC_MEMBERSHIP=false\n" in text
    assert "HEIMDALL_KAFKA__CLIENT_OPTIONS={}\n" in text
    assert "HEIMDALL_KAFKA__SASL_PASSWORD (unset)\n" in text
    assert "HEIMDALL_BATCHING__WORKERS=<usable cores>\n" in text
    assert "HEIMDALL_MLFLOW__CACHE_DIR=~/.cache/heimdall-stream/models\n" in text


def test_every_setting_has_a_description() -> None:
    missing = [doc.variable for doc in documented() if not doc.field.description]
    assert not missing


def test_an_unknown_section_is_refused() -> None:
    with pytest.raises(ValueError, match="unknown settings sections"):
        SettingsCommand("x", reads=("kafak",))


SECRETS = {
    "HEIMDALL_KAFKA__SASL_PASSWORD": "kafka-s3cret",
    "HEIMDALL_REDIS__PASSWORD": "redis-s3cret",
    "HEIMDALL_MODEL__CONTROL_HMAC_KEY": "hmac-s3cret",
}


def test_config_prints_every_variable_with_secrets_masked(monkeypatch: pytest.MonkeyPatch) -> None:
    for key, value in {
        **SECRETS,
        "HEIMDALL_KAFKA__BOOTSTRAP_SERVERS": "b1:9093,b2:9093",
        "HEIMDALL_KAFKA__SASL_USERNAME": "svc",
        "HEIMDALL_KAFKA__CLIENT_OPTIONS": json.dumps(
            {
                "ssl.key.password": "pem-s3cret",
                "sasl.oauthbearer.client.secret": "oauth-s3cret",
                "linger.ms": "7",
            }
        ),
        "HEIMDALL_MLFLOW__TRACKING_URI": "https://ops:url-s3cret@mlflow.example:443",
    }.items():
        monkeypatch.setenv(key, value)
    result = CliRunner().invoke(cli.main, ["config"])
    assert result.exit_code == 0, result.output
    assert "s3cret" not in result.output
    lines = result.output.splitlines()
    assert len(lines) == len(list(documented()))
    assert "HEIMDALL_KAFKA__BOOTSTRAP_SERVERS=b1:9093,b2:9093" in lines
    assert "HEIMDALL_KAFKA__SASL_USERNAME=svc" in lines
    assert "HEIMDALL_KAFKA__SASL_PASSWORD='****'" in lines
    assert "HEIMDALL_MLFLOW__TRACKING_URI='https://ops:****@mlflow.example:443'" in lines
    assert "# HEIMDALL_KAFKA__SSL_CA_LOCATION is unset" in lines
    assert "HEIMDALL_KAFKA__DELIVERY=exactly_once" in lines  # a default

    as_json = CliRunner().invoke(cli.main, ["config", "--json"])
    assert as_json.exit_code == 0 and "s3cret" not in as_json.output
    values = json.loads(as_json.output)
    assert values["HEIMDALL_REDIS__PASSWORD"] == "****" and values["HEIMDALL_KAFKA__SSL_CA_LOCATION"] is None
    assert values["HEIMDALL_KAFKA__CLIENT_OPTIONS"] == {
        "ssl.key.password": "****",
        "sasl.oauthbearer.client.secret": "****",
        "linger.ms": "7",
    }
    assert values["HEIMDALL_BATCHING__MAX_BATCH_SIZE"] == 32
    assert values["HEIMDALL_KAFKA__STATIC_MEMBERSHIP"] is False


def test_config_lines_read_back_give_the_same_settings(monkeypatch: pytest.MonkeyPatch) -> None:
    # Without secrets, the printed lines are the settings: parsed back they make the same object.
    monkeypatch.setenv("HEIMDALL_KAFKA__CLIENT_OPTIONS", '{"client.rack": "eu 1"}')
    monkeypatch.setenv("HEIMDALL_INSTANCE_ID", "pinned")
    original = Settings()
    output = CliRunner().invoke(cli.main, ["config"]).output
    for line in output.splitlines():
        if not line.startswith("#"):
            name, _, value = line.partition("=")
            (parsed,) = shlex.split(value) or [""]
            monkeypatch.setenv(name, parsed)
    assert Settings() == original


def test_config_with_a_bad_setting_names_it(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HEIMDALL_KAFKA__CONNECT_TIMEOUT_S", "0")
    result = CliRunner().invoke(cli.main, ["config"])
    assert result.exit_code == 2
    assert result.stderr.startswith("error: invalid settings: HEIMDALL_KAFKA__CONNECT_TIMEOUT_S: ")
