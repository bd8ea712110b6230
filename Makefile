# The README's two commands: `make demo` (set up, run the main job) and `make test`.
PYTHON ?= python3.11
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
# every package pinned by one resolve of pyproject.toml (make lock); uv installs it without resolving
LOCK := requirements.lock
UV_VERSION := 0.13.9
UV := $(BIN)/uv
EXTRAS := --extra dev --extra mlops --extra team

.PHONY: install lock test test-fast lint repro bench demo clean stack-up stack-down stack-status

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet uv==$(UV_VERSION)

# Byte-compiled at install: where PYTHONDONTWRITEBYTECODE is set (CI here), no .pyc is ever written
# and every Python process would compile torch, MLflow, Prefect and anomalib from source again.
$(STAMP): pyproject.toml $(LOCK) | $(BIN)/python
	$(UV) pip install --quiet --compile-bytecode --python $(BIN)/python -r $(LOCK)
	$(UV) pip install --quiet --python $(BIN)/python --no-deps -e .
	touch $(STAMP)

install: $(STAMP)

# a new resolve after pyproject.toml changed: every pin that still fits it is kept
lock: | $(BIN)/python
	$(UV) pip compile pyproject.toml $(EXTRAS) --python-version 3.11 --universal --no-header --quiet -o $(LOCK)

# pytest-xdist workers (TEST_WORKERS; a test file stays on one worker, so its module fixtures are
# built once). On these 2-core machines three fill the cores best: the whole suite took 8:55 on
# three, 10:19 on two and 11:38 on four. Files are handed out in collection order, longest first
# (tests/conftest.py), not in xdist's default order by number of tests.
# pytest-randomly shuffles the order (its seed printed on top); the 25 slowest tests end the report.
TEST_WORKERS ?= 3

# The project's own modules are byte-compiled first for the same reason as the locked packages
# (every worker, server, Dask worker and flow-run process imports them); only changed files are.
test: $(STAMP)
	$(BIN)/python -m compileall -q padim_plugin flows stack tests
	$(BIN)/python -m pytest -n $(TEST_WORKERS) --dist loadfile --no-loadscope-reorder --durations=25

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
