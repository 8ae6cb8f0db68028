# Parley developer entry points. Only python3 (3.11) is needed: the first `make run` or
# `make test` creates .venv and installs the pinned requirements into it. A stamp file inside
# .venv records each install, so pip runs again only when a requirements file changes.

PYTHON ?= python3
VENV := .venv
VENV_PY := $(VENV)/bin/python
PYTEST_ARGS ?=

export PIP_DISABLE_PIP_VERSION_CHECK := 1

.PHONY: run test lint bench venv audit

## run: install runtime deps if needed, migrate, and start web + worker + beat (Ctrl-C stops)
run: $(VENV)/.installed-run
	$(VENV_PY) scripts/run.py

## test: install dev deps if needed, lint and type-check, then run the whole suite
##       (PYTEST_ARGS="-k foo" to narrow the tests)
test: $(VENV)/.installed-dev
	$(VENV)/bin/ruff check .
	$(VENV)/bin/mypy
	$(VENV_PY) -m pytest $(PYTEST_ARGS)

## lint: ruff and mypy (configured in pyproject.toml)
lint: $(VENV)/.installed-dev
	$(VENV)/bin/ruff check . && $(VENV)/bin/mypy

## audit: check every pinned requirement against the PyPI advisory database (pip-audit).
##        Needs the network (pypi.org's JSON API), so it is not part of `make test`; --strict
##        fails when a package could not be checked, so an offline audit never passes silently.
audit: $(VENV)/.installed-dev
	$(VENV)/bin/pip-audit --requirement requirements-dev.txt --no-deps --disable-pip --strict --progress-spinner off

## bench: run the benchmarks in bench/
bench: $(VENV)/.installed-dev
	$(VENV_PY) -m bench

## venv: create .venv with runtime and dev dependencies
venv: $(VENV)/.installed-dev

$(VENV_PY):
	$(PYTHON) -m venv $(VENV)

$(VENV)/.installed-run: requirements.txt | $(VENV_PY)
	$(VENV_PY) -m pip install -r requirements.txt
	touch $@

# requirements-dev.txt includes requirements.txt, so this stamp also depends on it.
$(VENV)/.installed-dev: requirements-dev.txt requirements.txt | $(VENV_PY)
	$(VENV_PY) -m pip install -r requirements-dev.txt
	touch $@
