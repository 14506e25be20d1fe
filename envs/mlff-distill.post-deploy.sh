#!/usr/bin/env bash
# Snakemake runs this in the new conda environment (--sdm conda), from its working directory: the
# mlff-distill repository, where the Snakefile is. It installs the project (editable) into the
# environment, then the packages installed without their declared dependencies
# (envs/no-deps-requirements.txt: torchani 2.9, which the speed table times). A path relative to the environment file would resolve against Snakemake's copy of
# it under .snakemake/conda/, not against the repository.
set -euo pipefail
if ! grep -qs '^name = "mlff-distill"' "$PWD/pyproject.toml"; then
    echo "mlff-distill post-deploy: $PWD is not the mlff-distill repository; run snakemake from there" >&2
    exit 1
fi
python -m pip install --no-deps --editable "$PWD"
python -m pip install --no-deps --requirement "$PWD/envs/no-deps-requirements.txt"
