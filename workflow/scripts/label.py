from mlff_distill.label import run

run(snakemake.config, snakemake.input.structures, snakemake.output.store,
    snakemake.params.shards_dir, snakemake.input.pipeline, snakemake.log[0], snakemake.threads)
