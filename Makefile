# Two commands for a new user: `make run` and `make test`. Both set everything up.
PYTHON ?= python3.11
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
DURATION ?= 0
RATE ?= 1000

.PHONY: run test lint typecheck unit integration ops bench mutation clean

$(STAMP): pyproject.toml
	@command -v $(PYTHON) >/dev/null || { echo "need $(PYTHON) on PATH (or make PYTHON=python3.x)"; exit 1; }
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[dev]'
	touch $(STAMP)

# The main job: embedded broker, topics, worker and a replay of real data.
run: $(STAMP)
	$(BIN)/feedback-stream run --duration $(DURATION) --rate $(RATE)

test: $(STAMP)
	bash ops/install-prometheus.sh
	$(BIN)/ruff check .
	$(BIN)/mypy
	$(BIN)/python -m pytest

# Everything that needs no broker: models, the stream layer without Kafka, tools, doctests.
unit: $(STAMP)
	$(BIN)/python -m pytest tests/models tests/stream tests/tools models stream tools

integration: $(STAMP)
	bash ops/install-prometheus.sh
	$(BIN)/python -m pytest tests/integration

ops: $(STAMP)
	bash ops/install-prometheus.sh
	$(BIN)/python -m pytest tests/ops

# Benchmarks are commands, not timed tests: their figures are ratios measured in one run.
bench: $(STAMP)
	$(BIN)/feedback-stream bench

# Mutation testing of the modules behind the README's promises (tools/mutation.py);
# MODULES="stream.contract ..." runs some. Its last line is the JSON summary.
mutation: $(STAMP)
	$(BIN)/python -m tools.mutation $(MODULES)

lint: $(STAMP)
	$(BIN)/ruff check .

typecheck: $(STAMP)
	$(BIN)/mypy

clean:
	rm -rf $(VENV) var build *.egg-info .pytest_cache .mypy_cache .ruff_cache
