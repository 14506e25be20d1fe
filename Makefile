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
MATERIALS_STAMP := $(VENV)/.installed-materials
export PATH := $(abspath $(BIN)):$(PATH)
export MLFF_DISTILL_MODELS_DIR ?= $(MODELS_DIR)

LINTED := src tests workflow/scripts benchmarks

.PHONY: install install-materials run test lint dry-run

install: $(STAMP)

# The materials teachers (SevenNet-0, CHGNet), which the tests cover and `make run` does not need.
install-materials: $(MATERIALS_STAMP)

define new_venv
	$(PYTHON3) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
endef

# Packages whose declared dependencies conflict with the project's pins (torchani 2.9, timed by the
# speed table, declares zarr<3): installed after the project, without them.
define no_deps
	$(BIN)/python -m pip install --quiet --no-compile --no-deps --requirement envs/no-deps-requirements.txt
endef

# pip byte-compiles what it installs on one core (about a minute here); compileall does it on all
# of them. Its exit status is ignored, as pip ignores the files that do not compile (test data of
# some packages); the jobs then import from the bytecode even where PYTHONDONTWRITEBYTECODE is set.
define byte_compile
	-$(BIN)/python -m compileall -q -j 0 $(VENV)/lib > /dev/null
endef

$(STAMP): pyproject.toml envs/no-deps-requirements.txt
	$(new_venv)
	$(BIN)/python -m pip install --quiet --no-compile -e '.[test]'
	$(no_deps)
	$(byte_compile)
	touch $(STAMP)

# One pip run for the project and the extra (a second would resolve and build the project again).
$(MATERIALS_STAMP): pyproject.toml envs/no-deps-requirements.txt
	$(new_venv)
	$(BIN)/python -m pip install --quiet --no-compile -e '.[test,materials]'
	$(no_deps)
	$(byte_compile)
	touch $(STAMP) $(MATERIALS_STAMP)

run: install
	$(BIN)/snakemake --cores $(CORES)

# Install (with the materials extra), lint (seconds), then the tests in two processes, a test
# module per process at a time.
test: install-materials lint
	$(BIN)/python -m pytest -n 2 --dist loadfile --durations=15

lint: install
	$(BIN)/ruff check $(LINTED)
	$(BIN)/ruff format --check $(LINTED)
	$(BIN)/snakefmt --check Snakefile workflow/rules
	$(BIN)/snakemake --lint

dry-run: install
	$(BIN)/snakemake -n
