from mlff_distill.evaluation.summary import check_acceptance

check_acceptance(snakemake.input.metrics, snakemake.params.strict, snakemake.output.verdict, snakemake.log[0])
