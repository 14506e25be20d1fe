# mlff-distill: distill a teacher force field into a small, fast student.
# Stages: sample -> label -> train -> tune -> evaluate (workflow/rules/*.smk); precompile runs beside
# sample and readies the train stage's compiled loss. Each rule declares the config it reads in
# `params:`, so that editing a key reruns the stages that read it and those downstream.
from snakemake.utils import min_version, validate

from mlff_distill.config_check import config_errors

min_version("9.0")


configfile: "config/config.yaml"


# The schema found beside this file, so that `--directory` may point anywhere.
SCHEMA = f"{workflow.basedir}/workflow/schemas/config.schema.yaml"
problems = config_errors(config, SCHEMA)
if problems:
    raise ValueError("invalid config:\n  " + "\n  ".join(problems))
validate(config, SCHEMA)


include: "workflow/rules/common.smk"
include: "workflow/rules/sample.smk"
include: "workflow/rules/label.smk"
include: "workflow/rules/explore.smk"
include: "workflow/rules/precompile.smk"
include: "workflow/rules/train.smk"
include: "workflow/rules/tune.smk"
include: "workflow/rules/evaluate.smk"


rule all:
    default_target: True
    input:
        stage_path("evaluate", "metrics.json"),
        stage_path("evaluate", "acceptance.json"),


onstart:
    start_tracking()


onsuccess:
    finish_tracking("FINISHED")
    print_summary(stage_path("evaluate", "metrics.json"))


onerror:
    finish_tracking("FAILED")
