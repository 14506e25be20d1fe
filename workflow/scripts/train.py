from mlff_distill.stages.train import run

run(
    **dict(snakemake.params.items()),
    store=snakemake.input.store,
    precompiled=snakemake.input.precompiled,
    initial_checkpoint=(snakemake.input.initial_checkpoint or [None])[0],
    explored=list(snakemake.input.explored),
    sampled_file=snakemake.input.sampled,
    checkpoint=snakemake.output.checkpoint,
    torchscript=snakemake.output.torchscript,
    history_file=snakemake.output.history,
    log_file=snakemake.log[0],
    threads=snakemake.threads,
)
