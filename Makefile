# `make run`: install if needed, then the pipeline on the embedded default config.
# `make test`: install if needed, then the test suite.
PYTHON3 ?= python3
VENV ?= .venv
CORES ?= 2
# FeNNol-PMC model files for configs with `teacher.source: fennol-pmc` and for the tests that
# compare against them (CI keeps them in ../shared/teachers). The default config needs none.
MODELS_DIR ?= $(abspath ../shared/teachers)

BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
export PATH := $(abspath $(BIN)):$(PATH)
export MLFF_DISTILL_MODELS_DIR ?= $(MODELS_DIR)

LINTED := src tests workflow/scripts benchmarks

.PHONY: install run test lint dry-run

install: $(STAMP)

$(STAMP): pyproject.toml
	$(PYTHON3) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[test]'
	touch $(STAMP)

run: install
	$(BIN)/snakemake --cores $(CORES)

# Lint first (seconds), then the tests in two processes, a test module per process at a time.
test: lint
	$(BIN)/python -m pytest -n 2 --dist loadfile --durations=15

lint: install
	$(BIN)/ruff check $(LINTED)
	$(BIN)/ruff format --check $(LINTED)
	$(BIN)/snakefmt --check Snakefile workflow/rules
	$(BIN)/snakemake --lint

dry-run: install
	$(BIN)/snakemake -n
