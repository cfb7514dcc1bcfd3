# The two set-up commands of the README: `make demo` and `make test`, from a fresh clone.
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
TORCH  ?= torch==2.13.0
LINT_PATHS := src tests $(wildcard benchmarks)

.PHONY: demo test lint typecheck bench clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip

# torch first, pinned to the CPU build, so that nothing that depends on it pulls a CUDA build
$(VENV)/.torch: | $(BIN)/python
	$(BIN)/pip install --quiet "$(TORCH)" numpy
	touch $@

$(VENV)/.base: pyproject.toml $(VENV)/.torch
	$(BIN)/pip install --quiet -e .
	touch $@

$(VENV)/.dev: pyproject.toml $(VENV)/.base
	$(BIN)/pip install --quiet -e '.[dev]'
	touch $@

$(VENV)/.bench: pyproject.toml $(VENV)/.dev
	$(BIN)/pip install --quiet -e '.[dev,bench]'
	touch $@

demo: $(VENV)/.base
	$(BIN)/invguard demo

# lint and type checks first, then the whole suite
test: $(VENV)/.dev
	$(BIN)/ruff check $(LINT_PATHS)
	$(BIN)/ruff format --check $(LINT_PATHS)
	$(BIN)/mypy
	$(BIN)/python -m pytest -q

lint: $(VENV)/.dev
	$(BIN)/ruff check $(LINT_PATHS)
	$(BIN)/ruff format --check $(LINT_PATHS)

typecheck: $(VENV)/.dev
	$(BIN)/mypy

bench: $(VENV)/.bench
	for b in benchmarks/*.py; do $(BIN)/python $$b || exit 1; done

clean:
	rm -rf $(VENV) .invguard reports .pytest_cache .mypy_cache .ruff_cache
