# The README's set-up: `make demo` and `make test` on a fresh machine (CI runs `make test`).
# Both make the same virtual environment with the same install; a rerun reuses it until
# pyproject.toml or constraints.txt changes.
VENV ?= .venv
PYTHON ?= python3
BIN := $(abspath $(VENV))/bin
# Tests start the `ray`, `mlflow` and `gendet` commands by name: the venv's come first.
export PATH := $(BIN):$(PATH)
export PIP_DISABLE_PIP_VERSION_CHECK := 1

.PHONY: install photos demo test test-fast lint clean
MATE := /usr/share/backgrounds/mate/nature

# constraints.txt pins the tested set (pip backtracked through every torch without it: the file says why);
# `make install CONSTRAINTS=` resolves pyproject.toml's ranges freely instead.
CONSTRAINTS ?= constraints.txt

$(VENV)/.installed: pyproject.toml $(CONSTRAINTS)
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	@# torch's CUDA build and its libraries take ~7 GB in the venv; pip's wheel cache would double that
	@avail=$$(df -Pk . | awk 'NR==2 {print int($$4 / 1048576)}'); [ "$$avail" -ge 10 ] || \
	  echo "install: $$avail GB free on this disk; the venv needs about 7 GB (torch's CUDA build): free some if pip runs out"
	$(BIN)/python -m pip install --no-cache-dir $(if $(CONSTRAINTS),-c $(CONSTRAINTS)) -e ".[test]"
	touch $@

install: $(VENV)/.installed photos

# Debian's mate-backgrounds: 12 nature photographs, the photo source the held-out protocol keeps
# out of training (experiments/heldout.py). apt needs root (or password-less sudo); without it the
# install goes on, says so, and the protocol refuses to run in one line.
photos:
	@test -d $(MATE) || { \
	  if [ "$$(id -u)" = 0 ]; then SUDO=; elif sudo -n true 2>/dev/null; then SUDO=sudo; else SUDO=none; fi; \
	  if [ "$$SUDO" = none ]; then echo "mate-backgrounds: not installed and no root; run: sudo apt-get install mate-backgrounds"; \
	  else $$SUDO apt-get install -y -q mate-backgrounds >/dev/null 2>&1 \
	    || { $$SUDO apt-get update -q >/dev/null 2>&1 && $$SUDO apt-get install -y -q mate-backgrounds >/dev/null 2>&1; } \
	    || echo "mate-backgrounds: apt-get install failed; run: sudo apt-get install mate-backgrounds"; fi; }
	@test -d $(MATE) && echo "photos: $$(ls $(MATE) | wc -l) mate-backgrounds photos in $(MATE)" || true

demo: install  ## the whole system offline (10-25 min on 2 cores); writes out/demo/report.md
	$(BIN)/gendet demo

lint: install  ## ruff and the layer contracts (import-linter)
	$(BIN)/ruff check gendet pipelines benchmarks experiments tests
	$(BIN)/lint-imports

test: lint  ## everything CI runs (10-30 min on 2 cores, see the README)
	$(BIN)/python -m pytest --durations=15 $(PYTEST_ARGS)

test-fast: install  ## the daily lane: the library, no Ray job
	$(BIN)/python -m pytest -m "not slow" $(PYTEST_ARGS)

clean:
	rm -rf $(VENV) out .pytest_cache
