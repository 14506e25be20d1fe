"""The train stage: fit a student to the teacher's labels and save a checkpoint.

Reads the label store's train and validation splits, fits per-species reference energies (eV),
trains with `mlff_distill.student.fitting.train_student`, logs each epoch to MLflow and writes
the checkpoint, the history (JSON) and a learning-curve plot.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import numpy as np


def learning_curve_plot(history: dict, path: Path) -> None:
    """Validation force MAE (eV/Angstrom) and training loss against epoch, log scale."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    epochs = [row["epoch"] for row in history["epochs"]]
    figure, axes = plt.subplots(1, 2, figsize=(9, 3.5))
    axes[0].semilogy(epochs, [row["train_loss"] for row in history["epochs"]])
    axes[0].set(xlabel="epoch", ylabel="training loss")
    axes[1].semilogy(epochs, [row["val_force_mae_eV_per_A"] for row in history["epochs"]])
    axes[1].set(xlabel="epoch", ylabel="validation force MAE (eV/Å)")
    figure.tight_layout()
    figure.savefig(path, dpi=120)
    plt.close(figure)


def run(config: dict, store: Path, checkpoint: Path, history_file: Path, pipeline_file: Path,
        log_file: Path, threads: int) -> None:
    """The Snakemake job."""
    import torch

    from mlff_distill.logs import stage_logger
    from mlff_distill.store import read_labels, store_attrs
    from mlff_distill.student import StudentPotential, save_student
    from mlff_distill.student.fitting import TrainSettings, fit_reference_energies, train_student
    from mlff_distill.tracking import config_hash, stage_run

    logger = stage_logger("train", log_file)
    torch.set_num_threads(threads)
    with stage_run(pipeline_file, "train", {"student": config["student"],
                                            "train": config["train"]}, log_file) as tracker:
        start = time.perf_counter()
        train, val = read_labels(store, "train"), read_labels(store, "val")
        species = sorted(int(z) for z in np.unique(read_labels(store).numbers))
        references = fit_reference_energies(train, species)
        logger.info("%d training and %d validation structures; species %s; reference energies "
                    "(eV) %s", train.n_structures, val.n_structures, species, references)
        torch.manual_seed(config["seed"])
        model = StudentPotential(species=species, reference_energies_eV=references,
                                 **config["student"])
        n_parameters = sum(p.numel() for p in model.parameters())
        tracker.log_params({"n_parameters": n_parameters})
        settings = TrainSettings(**config["train"], seed=config["seed"])

        def on_epoch(epoch: int, metrics: dict) -> None:
            tracker.log_metrics(metrics, step=epoch)
            logger.info("epoch %d %s", epoch,
                        " ".join(f"{k}={v:.4g}" for k, v in metrics.items()))

        history = train_student(model, train, val, settings, on_epoch=on_epoch)
        teacher = store_attrs(store)["teacher"]
        save_student(checkpoint, model, metadata={
            "teacher": teacher, "label_store": str(Path(store).resolve()),
            "config_hash": config_hash(config), "n_train": train.n_structures,
            "n_val": val.n_structures, "best_val": history.get("best", {}),
        })
        Path(history_file).write_text(json.dumps(history, indent=2))
        plot = Path(checkpoint).with_name("learning_curve.png")
        learning_curve_plot(history, plot)
        for artifact in (checkpoint, history_file, plot):
            tracker.log_artifact(artifact)
        tracker.log_metrics({"train_seconds": time.perf_counter() - start,
                             "n_parameters": n_parameters})
        logger.info("saved %s (%d parameters) in %.1f s", checkpoint, n_parameters,
                    time.perf_counter() - start)
