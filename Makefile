# fleetstream: the commands a developer needs. `make run` and `make test` work on a fresh clone.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
ARGS ?=

.PHONY: run test check format bench clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip

$(STAMP): pyproject.toml | $(BIN)/python
	$(BIN)/python -m pip install --quiet -e '.[dev]'
	touch $(STAMP)

## run: create .venv, install fleetstream and start `fleetstream up` (ARGS="--devices 500" to pass flags)
run: $(STAMP)
	$(BIN)/fleetstream up $(ARGS)

## test: install the test dependencies and run the whole suite
test: $(STAMP)
	$(BIN)/python -m pytest $(ARGS)

## check: lint and type-check (ruff + mypy --strict)
check: $(STAMP)
	$(BIN)/ruff check src tests benchmarks
	$(BIN)/ruff format --check src tests benchmarks
	$(BIN)/mypy

format: $(STAMP)
	$(BIN)/ruff format src tests benchmarks
	$(BIN)/ruff check --fix src tests benchmarks

## bench: run the benchmarks (tables in docs/benchmarks.md)
bench: $(STAMP)
	$(BIN)/python benchmarks/ingest.py
	$(BIN)/python benchmarks/query.py
	$(BIN)/python benchmarks/processors.py

clean:
	rm -rf $(VENV) data .pytest_cache .mypy_cache .ruff_cache
