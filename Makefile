# The README's set-up: `make demo` and `make test` on a fresh machine (CI runs `make test`).
# Both make the same virtual environment with the same install; a rerun reuses it until
# pyproject.toml changes.
VENV ?= .venv
PYTHON ?= python3
BIN := $(abspath $(VENV))/bin
# Tests start the `ray`, `mlflow` and `gendet` commands by name: the venv's come first.
export PATH := $(BIN):$(PATH)
export PIP_DISABLE_PIP_VERSION_CHECK := 1

.PHONY: install demo test test-fast lint clean

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -e ".[test]"
	touch $@

install: $(VENV)/.installed

demo: install  ## the whole system offline (~5 min on 2 cores); writes out/demo/report.md
	$(BIN)/gendet demo

lint: install  ## ruff and the layer contracts (import-linter)
	$(BIN)/ruff check gendet pipelines benchmarks tests
	$(BIN)/lint-imports

test: lint  ## everything CI runs (10-30 min on 2 cores, see the README)
	$(BIN)/python -m pytest --durations=15 $(PYTEST_ARGS)

test-fast: install  ## the daily lane: the library, no Ray job
	$(BIN)/python -m pytest -m "not slow" $(PYTEST_ARGS)

clean:
	rm -rf $(VENV) out .pytest_cache
