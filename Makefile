# The README's two commands: `make demo` (set up, run the main job) and `make test`.
PYTHON ?= python3.11
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: install test test-fast lint bench demo clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip setuptools wheel

$(STAMP): pyproject.toml | $(BIN)/python
	$(BIN)/pip install --quiet -e '.[dev,mlops]'
	touch $(STAMP)

install: $(STAMP)

test: $(STAMP)
	$(BIN)/python -m pytest

# the inner loop: everything but the real-data and multi-process tests
test-fast: $(STAMP)
	$(BIN)/python -m pytest -m "not slow"

lint: $(STAMP)
	$(BIN)/ruff check .

bench: $(STAMP)
	$(BIN)/python bench/padim_vs_anomalib.py

# The main job on the embedded defaults: demo lines versioned with DVC (local remote), retrained
# by the Prefect flow (ephemeral API), registered in MLflow (SQLite in this folder).
demo: $(STAMP)
	$(BIN)/padim-mlops demo

clean:
	rm -rf $(VENV) .pytest_cache
