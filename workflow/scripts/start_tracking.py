from pathlib import Path

from mlff_distill.tracking import start_pipeline_run

pipeline = start_pipeline_run(snakemake.config)
pipeline.save(snakemake.output[0])
Path(snakemake.log[0]).write_text(f"MLflow parent run {pipeline.run_id} in {pipeline.tracking_uri}\n")
