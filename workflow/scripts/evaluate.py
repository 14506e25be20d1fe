from mlff_distill.evaluate import run

run(snakemake.config, snakemake.input.store, snakemake.input.checkpoint,
    snakemake.input.inference_path, snakemake.output.metrics, snakemake.input.pipeline,
    snakemake.log[0], snakemake.input.structures, snakemake.params.compile_cache)
