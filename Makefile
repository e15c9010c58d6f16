# Developer entry points. Everything runs from the project's own virtualenv (.venv).
#   make run    the whole system on this machine (embedded Postgres/Redis if none is running)
#   make test   lint, then the whole test suite against real processes
SHELL := /bin/bash
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
# Touched after a successful install: reinstalls only when pyproject.toml is newer.
STAMP := $(VENV)/.install-stamp

.DEFAULT_GOAL := help
.PHONY: help install run test lint bench migrate clean distclean

help:
	@echo "make install   create $(VENV) and install the project with its dev and embedded extras"
	@echo "make run       run gateway, chat and analytics (docs: http://127.0.0.1:8000/docs)"
	@echo "make test      lint, then run the test suite"
	@echo "make lint      ruff and mypy"
	@echo "make migrate   create the database if needed and migrate it (DATABASE_URL)"
	@echo "make bench     run the benchmarks"
	@echo "make clean     remove run state and caches (distclean: the virtualenv too)"

install: $(STAMP)

$(STAMP): pyproject.toml
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --disable-pip-version-check -e '.[dev,embedded]'
	@touch $@

run: install
	$(BIN)/python -m deploy.local.run

lint: install
	$(BIN)/ruff check .
	$(BIN)/mypy shared services deploy

test: lint
	$(BIN)/python -m pytest -q

migrate: install
	$(BIN)/python -m deploy.local.run --migrate-only

bench: install
	$(BIN)/python -m bench

clean:
	rm -rf .run .pytest_cache .mypy_cache .ruff_cache
	find . -path ./$(VENV) -prune -o -name __pycache__ -type d -prune -exec rm -rf {} +

distclean: clean
	rm -rf $(VENV) *.egg-info
