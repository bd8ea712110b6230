# The README's two commands: `make demo` (set up, run the main job) and `make test`.
PYTHON ?= python3.11
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: install test test-fast lint repro bench demo clean stack-up stack-down stack-status

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip setuptools wheel

$(STAMP): pyproject.toml | $(BIN)/python
	$(BIN)/pip install --quiet -e '.[dev,mlops,team]'
	touch $(STAMP)

install: $(STAMP)

test: $(STAMP)
	$(BIN)/python -m pytest

# the inner loop: everything but the real-data, multi-process and team-stack tests
test-fast: $(STAMP)
	$(BIN)/python -m pytest -m "not slow and not stack"

lint: $(STAMP)
	$(BIN)/ruff check .

# dvc.yaml's stages run `python`: the project's venv goes first on PATH
repro: $(STAMP)
	PATH="$(CURDIR)/$(BIN):$$PATH" $(BIN)/dvc repro

bench: $(STAMP)
	$(BIN)/python bench/padim_vs_anomalib.py

# The main job on the embedded defaults: demo lines versioned with DVC (local remote), retrained
# by the Prefect flow (ephemeral API), registered in MLflow (SQLite in this folder).
demo: $(STAMP)
	$(BIN)/padim-mlops demo

# The team stack on loopback, no Docker: Postgres, S3 (moto), MLflow server (basic auth), Prefect
# server + worker + the deployments of prefect.yaml, a Dask scheduler and two workers. State, logs
# and the client environment in $(STACK_STATE)/: `set -a; . .stack/stack.env; set +a`.
STACK_STATE ?= .stack

stack-up: $(STAMP)
	$(BIN)/python stack/stack.py up --state $(STACK_STATE)

# no install step: stopping must work whatever state the venv is in
stack-down:
	$(BIN)/python stack/stack.py down --state $(STACK_STATE)

stack-status:
	$(BIN)/python stack/stack.py status --state $(STACK_STATE)

clean:
	rm -rf $(VENV) .pytest_cache
