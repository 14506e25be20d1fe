from mlff_distill.stages.label import run

# Dask starts worker processes that import this file again: run only in the main process.
if __name__ == "__main__":
    run(
        **dict(snakemake.params.items()),
        structures_file=snakemake.input.structures,
        store=snakemake.output.store,
        log_file=snakemake.log.main,
        threads=snakemake.threads,
    )
