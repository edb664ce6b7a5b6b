# heimdall-stream developer entry points. Everything runs from the project's own .venv.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STACK := deploy/local/stack

.PHONY: venv demo test unit integration reliability lint format stack-up stack-down bench docs clean

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
	$(BIN)/pytest tests

unit: venv
	$(BIN)/pytest tests/unit

integration: venv
	$(BIN)/pytest tests/integration

reliability: venv
	$(BIN)/pytest tests/reliability -m reliability

lint: venv
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy heimdall_stream deploy/local/stack.py

format: venv
	$(BIN)/ruff format .
	$(BIN)/ruff check --fix .

stack-up: venv
	$(STACK) up

stack-down:
	$(STACK) down

bench: venv
	$(BIN)/python -m bench.run

## docs: regenerate docs/architecture.md (the wings and their imports) from the code
docs:
	$(PYTHON) docs/wings.py

clean: stack-down
	rm -rf $(VENV) .local-stack .pytest_cache .mypy_cache .ruff_cache .hypothesis
