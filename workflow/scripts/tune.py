from mlff_distill.tune import run

run(snakemake.config, snakemake.input.store, snakemake.input.checkpoint, snakemake.output.record,
    snakemake.input.pipeline, snakemake.log[0], snakemake.params.compile_cache)
