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

.PHONY: install run test lint dry-run

install: $(STAMP)

$(STAMP): pyproject.toml
	$(PYTHON3) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[test]'
	touch $(STAMP)

run: install
	$(BIN)/snakemake --cores $(CORES)

test: install
	$(BIN)/python -m pytest

lint: install
	$(BIN)/snakemake --lint

dry-run: install
	$(BIN)/snakemake -n
