from mlff_distill.labeling.cluster import WHERE_KEYS
from mlff_distill.stages.label import run

# Dask starts worker processes that import this file again: run only in the main process.
if __name__ == "__main__":
    run(
        **dict(snakemake.params.items()),
        # where the shards are labeled: read here, not a param, so that changing it reruns nothing
        where={key: snakemake.config["label"][key] for key in WHERE_KEYS if key in snakemake.config["label"]},
        structures_file=snakemake.input.structures,
        store=snakemake.output.store,
        log_file=snakemake.log.main,
        threads=snakemake.threads,
    )
