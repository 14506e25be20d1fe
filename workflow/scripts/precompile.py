from mlff_distill.precompile import run

run(snakemake.config, snakemake.output.record, snakemake.params.cache_dir, snakemake.log[0], snakemake.threads)
