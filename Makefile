# The two commands of the README: `make demo` (the main job) and `make test` (the tests).
# Both create .venv when it is missing and (re)install the project when pyproject.toml,
# constraints.txt or the package's folders changed (a new module needs a new link tree: the
# install is setuptools' strict editable mode, so static tools resolve `pkd.*` to real files).
# Idempotent: a second run installs nothing.

PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.pkd-installed
PACKAGE_DIRS := $(shell find core app pipeline train stores -type d -not -name __pycache__)

.PHONY: demo test setup

demo: setup
	$(BIN)/pkd demo --out demo_out

test: setup
	$(BIN)/ruff check .
	$(BIN)/pytest

setup: $(STAMP)

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)

# torch first, CPU build: the constraint keeps pip from pulling a CUDA build later
$(STAMP): $(BIN)/python pyproject.toml constraints.txt $(PACKAGE_DIRS)
	$(BIN)/pip install -q -c constraints.txt torch==2.13.0
	$(BIN)/pip install -q -c constraints.txt -e ".[dev]" --config-settings editable_mode=strict
	touch $(STAMP)
