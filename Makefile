# The two entry points: `make run` (the main job) and `make test` (the suite).
# Each creates .venv with the repository's own Python on first use.

PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
PYTEST_ARGS ?=

.PHONY: run test test-fast bench clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[test]'
	touch $(STAMP)

## The main job: a local cluster (1 coordinator, 2 workers, 1 PS) trains on the digits data.
run: $(STAMP)
	$(BIN)/tfps-ha launch cluster_specs/local.yaml

## The whole test suite, slow chaos tests included.
test: $(STAMP)
	$(BIN)/python -m pytest -v $(PYTEST_ARGS)

## The suite without the tests marked slow.
test-fast: $(STAMP)
	$(BIN)/python -m pytest -v -m 'not slow' $(PYTEST_ARGS)

## The benchmarks against hand-written PSS code; writes benchmarks/RESULTS.md (about 30 minutes on 2 cores).
bench: $(STAMP)
	$(BIN)/python benchmarks/run.py

clean:
	rm -rf $(VENV) .pytest_cache .hypothesis
