# Master script. Quick start:  make repro   (set up + run the pipeline)   make test   (run the tests)
SHELL := /bin/bash
.DEFAULT_GOAL := help

PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV := .venv
BIN := $(CURDIR)/$(VENV)/bin
KERNEL := microenterprise
export PATH := $(BIN):$(PATH)
export DVC_NO_ANALYTICS := 1
export PYTHONHASHSEED := 0
export MPLBACKEND := Agg
# One BLAS thread: identical floating-point sums on every run and machine size.
export OPENBLAS_NUM_THREADS := 1
export OMP_NUM_THREADS := 1
export MKL_NUM_THREADS := 1

STAMP := $(VENV)/.installed

.PHONY: help setup repro evidence test test-fast lint bench lab clean-outputs chromium

help:  ## list the targets
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  make %-14s %s\n", $$1, $$2}'

$(VENV)/bin/python:
	$(PYTHON) -m venv $(VENV)

# The installer: uv, pinned, into the venv. On a fresh machine `make setup` took 2 min 5 s with pip and
# 40 s with uv (parallel downloads); both install the same versions from requirements.lock and compile
# them to bytecode, which every stage's imports need where PYTHONDONTWRITEBYTECODE is set.
UV_VERSION := 0.13.8

# A stamp per uv version: a venv made before uv (or with another pin) gets it too.
UV_STAMP := $(VENV)/.uv-$(UV_VERSION)

$(UV_STAMP): $(VENV)/bin/python
	$(BIN)/python -m pip install --quiet --disable-pip-version-check uv==$(UV_VERSION)
	touch $@

# Reinstall only when the pins, the package metadata or the installer change.
$(STAMP): $(UV_STAMP) requirements.lock pyproject.toml
	$(BIN)/uv pip install --quiet --compile-bytecode --python $(BIN)/python -c requirements.lock -e .
	$(BIN)/python -m ipykernel install --sys-prefix --name $(KERNEL) --display-name "Python (microenterprise pipeline)" > /dev/null
	touch $(STAMP)

setup: $(STAMP)  ## create .venv, install pinned dependencies, register the Jupyter kernel

repro: $(STAMP)  ## set up, then run the whole pipeline (dvc repro) on the embedded synthetic survey
	$(BIN)/dvc repro
	@echo "Open reports/index.html"

evidence: $(STAMP)  ## run every real study in params.yaml `evidence.studies` (data in ../shared/data), pool them, report
	$(BIN)/dvc repro evidence/dvc.yaml
	@echo "Open reports/evidence/index.html"

test: $(STAMP) chromium  ## run the test suite (same environment)
	$(BIN)/python -m pytest

# Headless Chromium for the report's browser test (tests/test_browser.py): Debian's package, installed
# here when missing and this user may install packages (root, as on CI and fresh machines); otherwise
# the test fails saying what to install. Not pinned: Debian's mirror keeps only the current security release.
chromium:
	@command -v chromium >/dev/null 2>&1 || [ "$$(id -u)" != 0 ] || ! command -v apt-get >/dev/null 2>&1 || \
	  { echo "installing Debian's chromium package for the browser test"; \
	    DEBIAN_FRONTEND=noninteractive apt-get update -qq && \
	    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium > /dev/null; }

test-fast: $(STAMP)  ## unit tests only, without the end-to-end pipeline tests
	$(BIN)/python -m pytest -m "not slow"

lint: $(STAMP)  ## ruff with the committed configuration (pyproject.toml [tool.ruff])
	$(BIN)/ruff check .

# pyfixest, the estimation benchmark's reference, in a venv of its own (pinned by scripts/bench-pyfixest.lock)
BENCH_VENV := .bench/venv
$(BENCH_VENV)/.installed: scripts/bench-pyfixest.lock $(STAMP)
	$(PYTHON) -m venv $(BENCH_VENV)
	$(BIN)/uv pip install --quiet --compile-bytecode --python $(BENCH_VENV)/bin/python -r scripts/bench-pyfixest.lock
	touch $@

bench: $(STAMP) $(BENCH_VENV)/.installed  ## issue 9's figures side by side in one run, as ratios to their targets (.bench/bench.json; options: scripts/bench.py --help)
	$(BIN)/python scripts/bench.py $(BENCH_ARGS)

lab: $(STAMP)  ## open JupyterLab with the project kernel
	$(BIN)/jupyter lab --notebook-dir=$(CURDIR)
