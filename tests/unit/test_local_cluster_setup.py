"""The local three-node cluster's layout: size rules, ports, node configurations, proxies, env."""

from __future__ import annotations

import importlib
import json

import pytest

from tests.conftest import load_stack_module

stack = load_stack_module()  # puts deploy/local on sys.path for stacklib
layout = importlib.import_module("stacklib.cluster_config")
toxiproxy = importlib.import_module("stacklib.toxiproxy")


@pytest.fixture
def paths(tmp_path):
    return stack.Paths(state=tmp_path / "state", cache=tmp_path / "cache")


def _properties(text: str) -> dict[str, str]:
    return dict(line.split("=", 1) for line in text.splitlines() if line and not line.startswith("#"))


def test_a_state_directory_is_single_node_until_told_and_keeps_its_size(paths):
    assert layout.size(paths) == 1
    layout.set_size(paths, 3)
    assert layout.size(paths) == 3
    cluster_id = layout.info(paths)["cluster_id"]
    layout.set_size(paths, 3)  # idempotent: the same cluster id, so formatted nodes still match
    assert layout.info(paths)["cluster_id"] == cluster_id
    with pytest.raises(RuntimeError, match="another HEIMDALL_STACK_DIR"):
        layout.set_size(paths, 1)


def test_a_formatted_single_broker_cannot_become_a_cluster(paths):
    (paths.state / "kafka" / "data").mkdir(parents=True)
    (paths.state / "kafka" / "data" / "meta.properties").write_text("node.id=1\n")
    with pytest.raises(RuntimeError, match="another HEIMDALL_STACK_DIR"):
        layout.set_size(paths, 3)


@pytest.mark.parametrize("brokers", [0, 2, 5])
def test_only_one_or_three_nodes(paths, brokers):
    with pytest.raises(RuntimeError, match="--brokers must be one of 1, 3"):
        layout.set_size(paths, brokers)


def test_each_node_is_replicated_three_ways_and_advertises_its_proxy_on_the_proxied_listener(paths):
    layout.set_size(paths, 3)
    ports = layout.assign_ports(paths, {})
    assert json.loads(paths.ports_file.read_text()) == ports  # remembered for the next `up`
    assert len(set(ports.values())) == len(ports) == 13  # 4 per node and the proxy's API
    props = _properties((layout.node_config(paths, ports, 2) / "server.properties").read_text())
    own = layout.node_ports(ports, 2)
    assert props["node.id"] == "2"
    assert props["controller.quorum.voters"].count("@127.0.0.1:") == 3
    assert f"PROXIED://127.0.0.1:{own['proxy']}" in props["advertised.listeners"]
    assert f"PROXIED://127.0.0.1:{own['behind_proxy']}" in props["listeners"]
    assert props["inter.broker.listener.name"] == "PLAINTEXT"  # brokers talk past the proxy
    for key in ("default.replication.factor", "offsets.topic.replication.factor",
                "transaction.state.log.replication.factor"):  # fmt: skip
        assert props[key] == "3"
    assert props["min.insync.replicas"] == props["transaction.state.log.min.isr"] == "2"


def test_the_consumer_is_given_the_proxies_and_the_tests_the_direct_listeners(paths):
    layout.set_size(paths, 3)
    ports = layout.assign_ports(paths, {})
    env = layout.env_lines(paths, ports)
    proxies = {p["listen"]: p["upstream"] for p in layout.proxies(paths, ports)}
    consumer = env["HEIMDALL_KAFKA__BOOTSTRAP_SERVERS"].split(",")
    assert set(consumer) == set(proxies)
    assert not set(consumer) & set(env["HEIMDALL_TEST_KAFKA"].split(","))
    assert env["HEIMDALL_TEST_TOXIPROXY"] == f"http://127.0.0.1:{ports['toxiproxy']}"


def test_without_go_the_proxy_build_names_the_package(paths, monkeypatch):
    monkeypatch.setattr(toxiproxy, "go_binary", lambda: None)
    with pytest.raises(RuntimeError, match="apt-get install golang-go"):
        toxiproxy.ensure_server(paths)
