"""Least privilege on the secured stack: each principal is refused what its role does not need.

The broker enforces ACLs (``StandardAuthorizer``, deploy/local/stacklib/acls.py): the consumer
reads the input and control topics and writes the output, DLQ and status topics with its own
group and transactional ids; the operator alone writes the control topic; the simulator only
writes the input.  Every denial is checked through what the user sees: the command's exit code
and its one-line error (test_security.py shows each role doing its own job).
"""

from __future__ import annotations

import time
import uuid

import pytest
from confluent_kafka import Consumer, KafkaError, TopicPartition

from tests.reliability.secured import as_role, cli, command_env, provision

pytestmark = [pytest.mark.reliability, pytest.mark.slow]
DENIED_TOPIC = "Broker: Topic authorization failed; this principal has no ACL for it"


@pytest.fixture(scope="module")
def acl_env(secure_stack, services, model_uri, tmp_path_factory):
    """One set of topics and ACLs for this module's checks; yields (stack, paths, consumer env)."""
    stack, paths, stack_env = secure_stack
    env = command_env(stack_env, services, model_uri, tmp_path_factory.mktemp("acl"))
    provision(env, stack, paths)
    return stack, paths, env


@pytest.mark.parametrize(
    ("role", "command", "topic", "denial"),
    [
        # The consumer may read the control topic (numbering the generation works) but not write.
        ("consumer", "deploy", "CONTROL", f"Kafka denied user 'heimdall' Write on {{}}: {DENIED_TOPIC}"),
        # The simulator may not even read it (the topic looks empty to it), nor write it.
        (
            "simulator",
            "deploy",
            "CONTROL",
            f"Kafka denied user 'heimdall-simulator' Write on {{}}: {DENIED_TOPIC}",
        ),
        ("consumer", "simulate", "INPUT", f"Kafka denied user 'heimdall' Write on {{}}: {DENIED_TOPIC}"),
    ],
    ids=["consumer-deploys", "simulator-deploys", "consumer-simulates"],
)
def test_only_the_operator_writes_the_control_topic_and_only_the_simulator_the_input(
    acl_env, role, command, topic, denial
):
    stack, paths, env = acl_env
    args = ["deploy", "--model", "any", "--version", "models:/any/1=1", "--no-wait"]
    if command == "simulate":
        args = ["simulate", "--count", "1"]
    started = time.monotonic()
    run = cli(as_role(env, stack, paths, role) if role != "consumer" else env, *args, timeout=90)
    print(f"{role} {command}: exit {run.returncode} after {time.monotonic() - started:.1f} s")
    assert run.returncode == 2, run.stderr[-2000:]
    assert denial.format(env[f"HEIMDALL_KAFKA__{topic}_TOPIC"]) in run.stderr, run.stderr[-2000:]
    assert "authorization failed" in run.stderr.lower() and "Traceback" not in run.stderr


def test_the_operator_does_not_even_see_the_input(acl_env):
    stack, paths, env = acl_env
    run = cli(as_role(env, stack, paths, "operator"), "simulate", "--count", "1", timeout=90)
    assert run.returncode == 2, run.stderr[-2000:]
    name = env["HEIMDALL_KAFKA__INPUT_TOPIC"]
    assert f"topic {name} does not exist" in run.stderr, run.stderr[-2000:]
    assert "user 'heimdall-operator' has no ACL on it" in run.stderr


def test_the_consumer_cannot_create_topics(acl_env):
    _stack, _paths, env = acl_env
    run = cli({**env, "HEIMDALL_KAFKA__INPUT_TOPIC": f"sec-new-{uuid.uuid4().hex[:8]}"}, "topics", timeout=90)
    assert run.returncode == 2, run.stderr[-2000:]
    assert "cannot create topic sec-new-" in run.stderr and "Authorization failed" in run.stderr


def test_the_simulator_can_neither_read_the_output_nor_run_the_consumer(acl_env):
    stack, paths, env = acl_env
    simulator = as_role(env, stack, paths, "simulator")
    # Reading the output, as any Kafka client would: the broker refuses, nothing is fetched.
    errors: list[KafkaError] = []
    reader = Consumer(
        {
            **stack.kafka_client_options(paths, role="simulator"),
            "bootstrap.servers": env["HEIMDALL_KAFKA__BOOTSTRAP_SERVERS"],
            "group.id": f"sim-reader-{uuid.uuid4().hex[:8]}",
            "error_cb": errors.append,
        }
    )
    reader.assign([TopicPartition(env["HEIMDALL_KAFKA__OUTPUT_TOPIC"], 0, 0)])
    deadline = time.monotonic() + 60
    try:
        while not errors and time.monotonic() < deadline:
            message = reader.poll(0.5)
            if message is not None and message.error() is not None:
                errors.append(message.error())
            assert message is None or message.error() is not None, "the simulator read a result"
    finally:
        reader.close()
    assert errors and "authorization failed" in errors[0].str().lower(), errors
    # Running the consumer as the simulator: the topics it may not see are named.
    run = cli(simulator, "run", timeout=90)
    assert run.returncode == 2, run.stderr[-2000:]
    assert "user 'heimdall-simulator' has no ACL on them" in run.stderr, run.stderr[-2000:]


@pytest.mark.parametrize(
    ("setting", "expected"),
    [
        ("HEIMDALL_KAFKA__GROUP_ID", "Group authorization failed"),
        ("HEIMDALL_KAFKA__TRANSACTIONAL_ID_PREFIX", "Transactional Id authorization failed"),
    ],
    ids=["foreign-group", "foreign-transactional-id"],
)
def test_the_consumer_stops_outside_its_group_and_transactional_ids(acl_env, setting, expected):
    _stack, _paths, env = acl_env
    started = time.monotonic()
    run = cli({**env, setting: f"not-granted-{uuid.uuid4().hex[:8]}"}, "run", timeout=180)
    print(f"{setting}: exit {run.returncode} after {time.monotonic() - started:.1f} s")
    assert run.returncode == 3, run.stderr[-2000:]
    assert expected in run.stderr, run.stderr[-2000:]
    assert "Traceback" not in run.stderr


def _observer_joins(stack, paths, env, group: str) -> tuple[list[TopicPartition], list[KafkaError]]:
    """Subscribe to the results as the observer in ``group``: what it was assigned, what it was refused."""
    assigned: list[TopicPartition] = []
    errors: list[KafkaError] = []
    reader = Consumer(
        {
            **stack.kafka_client_options(paths, role="observer"),
            "bootstrap.servers": env["HEIMDALL_KAFKA__BOOTSTRAP_SERVERS"],
            "group.id": group,
            "error_cb": errors.append,
        }
    )
    reader.subscribe(
        [env["HEIMDALL_KAFKA__OUTPUT_TOPIC"]], on_assign=lambda _c, partitions: assigned.extend(partitions)
    )
    deadline = time.monotonic() + 60
    try:
        while not assigned and not errors and time.monotonic() < deadline:
            message = reader.poll(0.5)
            if message is not None and message.error() is not None:
                errors.append(message.error())
    finally:
        reader.close()
    return assigned, errors


def test_the_observer_reads_results_in_the_map_s_groups_and_writes_nothing(acl_env):
    stack, paths, env = acl_env
    # The map's group (HEIMDALL_MAP__GROUP_ID_PREFIX + instance id): joined, partitions assigned.
    assigned, errors = _observer_joins(stack, paths, env, f"heimdall-map-{uuid.uuid4().hex[:8]}")
    assert assigned and not errors, errors
    # The consumer's group is not the observer's to join.
    assigned, errors = _observer_joins(stack, paths, env, env["HEIMDALL_KAFKA__GROUP_ID"])
    assert not assigned and errors and "group authorization failed" in errors[0].str().lower(), errors
    # Nor may it publish captures, as a command would: exit 2 naming what was refused.
    run = cli(as_role(env, stack, paths, "observer"), "simulate", "--count", "1", timeout=90)
    assert run.returncode == 2, run.stderr[-2000:]
    assert "user 'heimdall-observer' has no ACL on it" in run.stderr, run.stderr[-2000:]
