"""Least privilege on the secured stack: its Kafka principals, their ACLs, and applying them.

The broker runs ``StandardAuthorizer`` with nothing allowed unless an ACL says so; only the
broker's own principals (``admin`` on the client listener, ``controller`` on the controller
listener) are super users.  Everyone else gets exactly what their role needs:

* ``heimdall`` (the consumer): read the input, per-receiver and control topics, write the output, DLQ and
  status topics, its consumer group, and the transactional ids ``<prefix>-*`` (plus Describe on
  the ``heimdall-control-*`` group ids its control-topic reader names);
* ``heimdall-operator`` (``deploy``, ``status``): the only writer of the control topic; reads
  it back (to number the next generation) and the status topic, describes the consumer group
  (and the ``heimdall-cli-*`` group ids its readers name);
* ``heimdall-simulator``: writes the input topic, the per-receiver topic and the ground-truth
  topic (it stands for the receivers and the beacons whose positions are known), nothing else;
* ``heimdall-observer`` (``map``, ``calibrate``): reads the results and the ground truth, in
  consumer groups of its own (``<map prefix>-*``, ``heimdall-calibrate-*``), nothing else.

``rules`` is the one list; ``grant`` applies it through the Admin API, ``acl_commands`` prints
it as ``kafka-acls.sh`` lines (deploy/README.md lists them).  Topic names and the group come
from ``HEIMDALL_KAFKA__*`` variables, defaulting to the service's own defaults.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

ADMIN_USER = "admin"
CONTROLLER_USER = "controller"
# role -> (SASL user name, key of its password in secure.json)
ROLES: dict[str, tuple[str, str]] = {
    "consumer": ("heimdall", "kafka_password"),
    "operator": ("heimdall-operator", "kafka_operator_password"),
    "simulator": ("heimdall-simulator", "kafka_simulator_password"),
    "observer": ("heimdall-observer", "kafka_observer_password"),
}
# Group ids of readers that only assign() (heimdall_stream.control.runtime / .operator).
CONTROL_READER_GROUP_PREFIX = "heimdall-control-"
CLI_READER_GROUP_PREFIX = "heimdall-cli-"
# The calibrator's group (heimdall_stream.calibration.service): this prefix + its instance id.
CALIBRATOR_GROUP_PREFIX = "heimdall-calibrate-"
# Names that are not HEIMDALL_KAFKA__* settings: the field -> its variable.
OTHER_VARIABLES = {
    "receivers_topic": "HEIMDALL_JOIN__TOPIC",
    "truth_topic": "HEIMDALL_CALIBRATION__TRUTH_TOPIC",
    "map_group_prefix": "HEIMDALL_MAP__GROUP_ID_PREFIX",
}
SCRAM_ITERATIONS = 8192  # what kafka-storage's --add-scram uses by default


@dataclass(frozen=True)
class Names:
    """The Kafka resources the ACLs name (the defaults of heimdall_stream.config.KafkaSettings)."""

    input_topic: str = "heimdall.iq.captures"
    output_topic: str = "heimdall.localizations"
    dlq_topic: str = "heimdall.iq.captures.dlq"
    control_topic: str = "heimdall.model-control"
    status_topic: str = "heimdall.model-status"
    group_id: str = "heimdall-stream"
    transactional_id_prefix: str = "heimdall-stream"
    receivers_topic: str = "heimdall.iq.receivers"
    truth_topic: str = "heimdall.ground-truth"
    map_group_prefix: str = "heimdall-map"

    @classmethod
    def from_env(cls, env: Mapping[str, str]) -> Names:
        """The names processes configured by these ``HEIMDALL_*`` variables would use."""
        variables = {
            name: OTHER_VARIABLES.get(name, f"HEIMDALL_KAFKA__{name.upper()}")
            for name in cls.__dataclass_fields__
        }
        return cls(**{name: env[variable] for name, variable in variables.items() if variable in env})


@dataclass(frozen=True)
class Rule:
    """Allow ``user`` ``operation`` on a resource (``prefixed``: every name that starts so)."""

    user: str
    operation: str  # READ, WRITE, DESCRIBE
    resource: str  # topic, group, transactional-id
    name: str
    prefixed: bool = False


def rules(names: Names) -> list[Rule]:
    """Every ACL of the secured stack for these resource names."""
    consumer, operator, simulator, observer = (
        ROLES[r][0] for r in ("consumer", "operator", "simulator", "observer")
    )
    return [
        Rule(consumer, "READ", "topic", names.input_topic),
        Rule(consumer, "READ", "topic", names.receivers_topic),
        Rule(consumer, "WRITE", "topic", names.output_topic),
        Rule(consumer, "WRITE", "topic", names.dlq_topic),
        Rule(consumer, "WRITE", "topic", names.status_topic),
        Rule(consumer, "READ", "topic", names.control_topic),
        Rule(consumer, "READ", "group", names.group_id),
        # transactional.id is "<prefix>-<instance id>": one per instance, all under the prefix.
        Rule(consumer, "WRITE", "transactional-id", f"{names.transactional_id_prefix}-", prefixed=True),
        # The control-topic reader assigns its partition and never joins or commits, but
        # librdkafka still looks up the coordinator of its group id, which needs Describe.
        Rule(consumer, "DESCRIBE", "group", CONTROL_READER_GROUP_PREFIX, prefixed=True),
        Rule(operator, "WRITE", "topic", names.control_topic),
        Rule(operator, "READ", "topic", names.control_topic),
        Rule(operator, "READ", "topic", names.status_topic),
        Rule(operator, "DESCRIBE", "group", names.group_id),  # which instances are live
        Rule(operator, "DESCRIBE", "group", CLI_READER_GROUP_PREFIX, prefixed=True),  # likewise
        Rule(simulator, "WRITE", "topic", names.input_topic),
        Rule(simulator, "WRITE", "topic", names.receivers_topic),
        Rule(simulator, "WRITE", "topic", names.truth_topic),
        Rule(observer, "READ", "topic", names.output_topic),
        Rule(observer, "READ", "topic", names.truth_topic),
        # The map's and the calibrator's groups: "<prefix>-<instance id>", joined but never committed.
        Rule(observer, "READ", "group", f"{names.map_group_prefix}-", prefixed=True),
        Rule(observer, "READ", "group", CALIBRATOR_GROUP_PREFIX, prefixed=True),
    ]


def acl_commands(names: Names, bootstrap: str = "$BOOTSTRAP", config: str = "admin.properties") -> list[str]:
    """``kafka-acls.sh`` command lines that create ``rules(names)`` (as a super user)."""
    lines = []
    for rule in rules(names):
        pattern = " --resource-pattern-type prefixed" if rule.prefixed else ""
        lines.append(
            f"kafka-acls.sh --bootstrap-server {bootstrap} --command-config {config} --add "
            f"--allow-principal User:{rule.user} --operation {rule.operation.capitalize()} "
            f"--{rule.resource} {rule.name}{pattern}"
        )
    return lines


def grant(admin_options: Mapping[str, Any], names: Names, timeout_s: float = 30.0) -> int:
    """Create the ACLs (idempotent: an existing binding is kept); returns how many rules."""
    from confluent_kafka.admin import (  # type: ignore[attr-defined]
        AclBinding,
        AclOperation,
        AclPermissionType,
        AdminClient,
        ResourcePatternType,
        ResourceType,
    )

    resource_types = {
        "topic": ResourceType.TOPIC,
        "group": ResourceType.GROUP,
        "transactional-id": ResourceType.TRANSACTIONAL_ID,
    }
    bindings = [
        AclBinding(
            resource_types[rule.resource],
            rule.name,
            ResourcePatternType.PREFIXED if rule.prefixed else ResourcePatternType.LITERAL,
            f"User:{rule.user}",
            "*",
            AclOperation[rule.operation],
            AclPermissionType.ALLOW,
        )
        for rule in rules(names)
    ]
    admin = AdminClient(dict(admin_options))
    for binding, future in admin.create_acls(bindings, request_timeout=timeout_s).items():
        try:
            future.result()
        except Exception as exc:
            raise RuntimeError(f"could not create the ACL {binding}: {exc}") from exc
    return len(bindings)


def upsert_users(
    admin_options: Mapping[str, Any], passwords: Mapping[str, str], timeout_s: float = 30.0
) -> None:
    """Create or update the SCRAM-SHA-512 credentials of every role (``passwords``: secure.json)."""
    from confluent_kafka.admin import (  # type: ignore[attr-defined]
        AdminClient,
        ScramCredentialInfo,
        ScramMechanism,
        UserScramCredentialAlteration,
        UserScramCredentialUpsertion,
    )

    info = ScramCredentialInfo(ScramMechanism.SCRAM_SHA_512, SCRAM_ITERATIONS)
    upserts: list[UserScramCredentialAlteration] = [
        UserScramCredentialUpsertion(user, info, passwords[key].encode()) for user, key in ROLES.values()
    ]
    admin = AdminClient(dict(admin_options))
    for user, future in admin.alter_user_scram_credentials(upserts, request_timeout=timeout_s).items():
        try:
            future.result()
        except Exception as exc:
            raise RuntimeError(f"could not create the SCRAM user {user}: {exc}") from exc
