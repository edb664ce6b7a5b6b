"""The secured stack's ACLs, read without a broker: who may do what, the runbook, the defaults."""

from __future__ import annotations

import importlib
from pathlib import Path

from heimdall_stream.clients import consumer_config, producer_config
from heimdall_stream.config import KafkaSettings, Settings
from tests.conftest import load_stack_module

load_stack_module()  # puts deploy/local on sys.path for stacklib
acls = importlib.import_module("stacklib.acls")
REPO = Path(__file__).resolve().parents[2]


def _allowed(names) -> set[tuple[str, str, str, str, bool]]:
    return {(r.user, r.operation, r.resource, r.name, r.prefixed) for r in acls.rules(names)}


def test_each_role_gets_exactly_what_it_needs_and_only_the_operator_writes_control():
    names = acls.Names(
        input_topic="in",
        output_topic="out",
        dlq_topic="dlq",
        control_topic="ctl",
        status_topic="st",
        group_id="grp",
        transactional_id_prefix="tx",
        receivers_topic="parts",
        truth_topic="truth",
        map_group_prefix="mapg",
    )
    allowed = _allowed(names)
    assert {rule for rule in allowed if rule[0] == "heimdall-simulator"} == {
        ("heimdall-simulator", "WRITE", "topic", "in", False),
        ("heimdall-simulator", "WRITE", "topic", "parts", False),
        ("heimdall-simulator", "WRITE", "topic", "truth", False),
    }
    # The map and the calibrator read results and truths in groups of their own, nothing else.
    assert {rule for rule in allowed if rule[0] == "heimdall-observer"} == {
        ("heimdall-observer", "READ", "topic", "out", False),
        ("heimdall-observer", "READ", "topic", "truth", False),
        ("heimdall-observer", "READ", "group", "mapg-", True),
        ("heimdall-observer", "READ", "group", "heimdall-calibrate-", True),
    }
    writers = {(rule[0], rule[3]) for rule in allowed if rule[1] == "WRITE" and rule[2] == "topic"}
    assert writers == {
        ("heimdall", "out"),
        ("heimdall", "dlq"),
        ("heimdall", "st"),
        ("heimdall-operator", "ctl"),
        ("heimdall-simulator", "in"),
        ("heimdall-simulator", "parts"),
        ("heimdall-simulator", "truth"),
    }
    readers = {(rule[0], rule[3]) for rule in allowed if rule[1] == "READ" and rule[2] == "topic"}
    assert readers == {
        ("heimdall", "in"),
        ("heimdall", "parts"),
        ("heimdall", "ctl"),
        ("heimdall-observer", "out"),
        ("heimdall-observer", "truth"),
        ("heimdall-operator", "ctl"),
        ("heimdall-operator", "st"),
    }
    assert ("heimdall", "READ", "group", "grp", False) in allowed
    assert ("heimdall", "WRITE", "transactional-id", "tx-", True) in allowed
    # Nothing on the cluster resource, nothing for anyone else, no wildcard.
    assert {rule[2] for rule in allowed} == {"topic", "group", "transactional-id"}
    assert all(rule[3] != "*" for rule in allowed)


def test_the_grants_cover_the_names_the_service_actually_uses():
    settings = Settings(instance_id="pod-7")
    names = acls.Names()
    kafka = settings.kafka
    assert (names.input_topic, names.output_topic, names.dlq_topic) == (
        kafka.input_topic,
        kafka.output_topic,
        kafka.dlq_topic,
    )
    assert (names.control_topic, names.status_topic) == (kafka.control_topic, kafka.status_topic)
    assert names.group_id == consumer_config(settings)["group.id"]
    assert producer_config(settings)["transactional.id"].startswith(f"{names.transactional_id_prefix}-")
    assert set(acls.Names.__dataclass_fields__) - set(acls.OTHER_VARIABLES) <= set(KafkaSettings.model_fields)
    assert (names.receivers_topic, names.truth_topic) == (
        settings.join.topic,
        settings.calibration.truth_topic,
    )
    assert names.map_group_prefix == settings.map.group_id_prefix


def test_names_follow_the_heimdall_kafka_variables():
    names = acls.Names.from_env(
        {"HEIMDALL_KAFKA__INPUT_TOPIC": "x", "HEIMDALL_KAFKA__GROUP_ID": "g", "HEIMDALL_JOIN__TOPIC": "p"}
    )
    assert names.input_topic == "x" and names.group_id == "g" and names.receivers_topic == "p"
    assert names.output_topic == acls.Names().output_topic


def test_the_runbook_lists_every_acl_as_a_kafka_acls_command():
    runbook = (REPO / "deploy" / "README.md").read_text()
    commands = acls.acl_commands(acls.Names())
    assert len(commands) == len(acls.rules(acls.Names()))
    missing = [line for line in commands if line not in runbook]
    assert not missing, f"deploy/README.md lacks (run `deploy/local/stack acls`): {missing}"
    assert "--operation Write --transactional-id heimdall-stream- --resource-pattern-type prefixed" in (
        "\n".join(commands)
    )


def test_the_prefixed_describe_grants_match_the_group_ids_of_the_assign_only_readers():
    runtime = (REPO / "heimdall_stream" / "control" / "runtime.py").read_text()
    operator = (REPO / "heimdall_stream" / "control" / "operator.py").read_text()
    assert f'f"{acls.CONTROL_READER_GROUP_PREFIX}{{' in runtime
    assert f'f"{acls.CLI_READER_GROUP_PREFIX}{{' in operator
    calibrator = (REPO / "heimdall_stream" / "calibration" / "service.py").read_text()
    assert f'f"{acls.CALIBRATOR_GROUP_PREFIX}{{' in calibrator
