from mlff_distill.label import run

# Dask starts worker processes that import this file again: run only in the main process.
if __name__ == "__main__":
    run(snakemake.config, snakemake.input.structures, snakemake.output.store,
        snakemake.params.shards_dir, snakemake.input.pipeline, snakemake.log[0],
        snakemake.threads)
