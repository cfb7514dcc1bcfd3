# The two set-up commands of the README: `make demo` and `make test`, from a fresh clone.
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
# torch first, from the files on this disk: onnx2torch (ONNX white-box access) needs torchvision, and
# the torchvision release that imports beside it is 0.29.1, with torch 2.14.1
TORCH  ?= torch==2.14.1 torchvision==0.29.1
LINT_PATHS := src tests $(wildcard benchmarks)
# the system programs the tests run, as Debian package=program pairs; `make test` installs the
# missing ones (as root or with passwordless sudo) or stops with the command to run
SYSTEM_PACKAGES := redis-server=redis-server chromium=chromium chromium-driver=chromedriver prometheus=promtool

.PHONY: demo test test-fast system-packages lint typecheck bench clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip

# torch first, pinned, so that nothing that depends on it resolves another build
$(VENV)/.torch: | $(BIN)/python
	$(BIN)/pip install --quiet $(TORCH) numpy
	touch $@

$(VENV)/.base: pyproject.toml $(VENV)/.torch
	$(BIN)/pip install --quiet -e .
	touch $@

# anonymeter (synthetic-data checks) with --no-deps: its numpy<1.27 pin is stale and would downgrade numpy
ANONYMETER ?= anonymeter==1.1.0

$(VENV)/.dev: pyproject.toml $(VENV)/.base
	$(BIN)/pip install --quiet -e '.[dev]'
	$(BIN)/pip install --quiet --no-deps "$(ANONYMETER)"
	touch $@

$(VENV)/.bench: pyproject.toml $(VENV)/.dev
	$(BIN)/pip install --quiet -e '.[dev,bench]'
	touch $@

demo: $(VENV)/.base
	$(BIN)/invguard demo

system-packages:
	@$(SHELL) tools/system-packages.sh $(SYSTEM_PACKAGES)

# system programs first (before the slow install), lint and type checks, then the whole suite
test: system-packages $(VENV)/.dev
	$(BIN)/ruff check $(LINT_PATHS)
	$(BIN)/ruff format --check $(LINT_PATHS)
	$(BIN)/mypy
	$(BIN)/python -m pytest -q

# the suite without the tests marked slow, for a quick local loop (`make test` and CI run them all)
test-fast: system-packages $(VENV)/.dev
	$(BIN)/python -m pytest -q -m "not slow"

lint: $(VENV)/.dev
	$(BIN)/ruff check $(LINT_PATHS)
	$(BIN)/ruff format --check $(LINT_PATHS)

typecheck: $(VENV)/.dev
	$(BIN)/mypy

bench: $(VENV)/.bench
	for b in benchmarks/*.py; do $(BIN)/python $$b || exit 1; done

clean:
	rm -rf $(VENV) .invguard reports .pytest_cache .mypy_cache .ruff_cache
