# heimdall-stream developer entry points. Everything runs from the project's own .venv.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STACK := deploy/local/stack

.PHONY: venv demo test unit integration reliability cluster-faults lint format stack-up stack-down kafka-lock bench docs clean

venv: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -e '.[dev]'
	touch $@

## demo: the whole job end to end on local Kafka, Redis and MLflow (starts and stops them)
demo: venv
	$(BIN)/heimdall-stream demo

## test: every tier (unit, integration, reliability); starts the local stack if needed
test: venv
	$(BIN)/pytest tests --durations=15

unit: venv
	$(BIN)/pytest tests/unit

integration: venv
	$(BIN)/pytest tests/integration

reliability: venv
	$(BIN)/pytest tests/reliability -m reliability

## cluster-faults: the three-broker fault tests alone (kills, rolling restart, partition, latency, resets)
cluster-faults: venv
	$(BIN)/pytest tests/reliability/test_cluster_kills.py tests/reliability/test_cluster_network.py -m reliability

lint: venv
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy heimdall_stream deploy/local/stack.py deploy/local/stacklib

format: venv
	$(BIN)/ruff format .
	$(BIN)/ruff check --fix .

stack-up: venv
	$(STACK) up

stack-down:
	$(STACK) down

## kafka-lock: rewrite deploy/local/kafka/jars.lock from pom.xml after editing it (needs mvn)
kafka-lock:
	$(PYTHON) deploy/local/stack.py lock

## bench: heimdall-stream against the peers it writes itself (bench/peers), one run, recorded
bench: venv .venv-peers/.installed
	HEIMDALL_BENCH_PEER_PYTHON=$(CURDIR)/.venv-peers/bin/python $(BIN)/python -m bench.run

# The peers get a venv of their own: quixstreams pins confluent-kafka and pydantic lower.
.venv-peers/.installed: pyproject.toml
	test -x .venv-peers/bin/python || $(PYTHON) -m venv .venv-peers
	.venv-peers/bin/pip install -q -e '.[bench]'
	touch $@

## image: the container image heimdall-stream:local, with docker if its engine answers, else with
## buildah on a Debian base assembled locally (deploy/image/image; installs buildah/mmdebstrap as root)
.PHONY: image
image:
	deploy/image/image build

## docs: regenerate docs/architecture.md (the wings and their imports) from the code
docs:
	$(PYTHON) docs/wings.py

clean: stack-down
	rm -rf $(VENV) .local-stack .pytest_cache .mypy_cache .ruff_cache .hypothesis
