from mlff_distill.train import run

run(snakemake.config, snakemake.input.store, snakemake.output.checkpoint, snakemake.output.torchscript,
    snakemake.output.history, snakemake.input.pipeline, snakemake.log[0], snakemake.threads,
    snakemake.input.precompiled, snakemake.params.compile_cache)
