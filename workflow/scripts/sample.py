from mlff_distill.sample import run

run(snakemake.config, snakemake.output.structures, snakemake.input.pipeline, snakemake.log[0], snakemake.threads)
