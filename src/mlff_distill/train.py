"""The train stage: fit a student to the teacher's labels and save a checkpoint.

Reads the label store's train and validation splits (in memory, or block by block above
``train.in_memory_max_GB``), fits per-species reference energies (eV), trains with
`mlff_distill.student.fitting.train_student`, logs each epoch to MLflow and writes the checkpoint,
its TorchScript export, the history (JSON) and a learning-curve plot.

Resuming: after every epoch the full training state goes to ``<train dir>/resume/state.pt``
(written atomically; not a Snakemake output, so it survives the deletion of an interrupted job's
outputs). With ``train.resume`` a rerun continues from it if it was made with the same training
config and the same label store (SHA-256 of its files); otherwise training starts afresh and the
log says why.
"""

from __future__ import annotations

import json
import logging
import os
import time
from pathlib import Path
from typing import Any, Callable, Optional

import torch

from mlff_distill.student import StudentPotential


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


# Keys of config["train"] that choose how data is read and resumed and how many threads run, not
# how the model learns.
IO_KEYS = ("resume", "in_memory_max_GB", "threads", "processes")


def state_path_for(checkpoint: Path) -> Path:
    """Where the resumable training state of ``checkpoint`` lives: ``<its dir>/resume/state.pt``."""
    return Path(checkpoint).parent / "resume" / "state.pt"


def training_fingerprint(config: dict, store: Path) -> dict[str, str]:
    """What a saved state must match to be resumed: the hash of the seed, student and training
    config (without ``train.resume``) and the SHA-256 of the label store's files."""
    from mlff_distill.store import store_checksum
    from mlff_distill.tracking import config_hash

    train = {k: v for k, v in config["train"].items() if k != "resume"}
    return {"config_hash": config_hash({"seed": config["seed"], "student": config["student"], "train": train}),
            "store_sha256": store_checksum(Path(store))}


def load_resume_state(path: Path, fingerprint: dict[str, str], logger: logging.Logger) -> Optional[dict]:
    """The state saved at ``path`` if it matches ``fingerprint``; else ``None``, logging why."""
    if not path.exists():
        logger.info("no training state at %s: starting fresh", path)
        return None
    try:
        saved = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:  # a torn or foreign file: any load error means "start fresh"
        logger.warning("training state %s unreadable (%s): starting fresh", path, error)
        return None
    changed = [key for key, value in fingerprint.items() if saved.get("fingerprint", {}).get(key) != value]
    if changed:
        logger.info("training state %s was made with a different %s: starting fresh", path, " and ".join(changed))
        return None
    logger.info("resuming from %s after epoch %d", path, saved["state"]["epoch"])
    return saved["state"]


def save_state_atomic(path: Path, state: dict, fingerprint: dict[str, str]) -> None:
    """``torch.save`` of ``state`` and ``fingerprint`` to a temporary file renamed onto ``path``."""
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_name(f".{path.name}.partial")
    torch.save({"fingerprint": fingerprint, "state": state}, partial)
    os.replace(partial, path)


def fit(config: dict, store: Path, state_path: Path, logger: logging.Logger,
        on_epoch: Optional[Callable[[int, dict], None]] = None) -> tuple[StudentPotential, dict, dict[str, Any]]:
    """Train a student on ``store`` as ``config`` says, saving and resuming state at ``state_path``.

    Returns the model (best weights), the history of `train_student` and facts about the data
    (species, reference energies in eV, structure counts, RMS training stress in eV/Angstrom^3,
    the fingerprint). With ``train.processes`` above 1 (and no GPU), training runs in that many
    worker processes (`mlff_distill.student.parallel`), each of which calls this function.
    """
    from mlff_distill.student.parallel import train_in_processes, world
    from mlff_distill.store import store_species
    from mlff_distill.student.dataset import StructureBlocks
    from mlff_distill.student.fitting import TrainSettings, fit_reference_energies, stress_rms, train_student

    processes = config["train"]["processes"]
    if processes > 1 and world()[1] == 1 and not torch.cuda.is_available():
        weights, history, info = train_in_processes(config, store, state_path, processes, logger, on_epoch)
        model = StudentPotential(species=info["species"], reference_energies_eV=info["reference_energies_eV"],
                                 **config["student"])
        model.load_state_dict(weights)
        return model, history, info
    max_bytes = config["train"]["in_memory_max_GB"] * 1e9
    train = StructureBlocks.from_store(store, "train", max_bytes)
    val = StructureBlocks.from_store(store, "val", max_bytes)
    species = store_species(store)
    references = fit_reference_energies(train, species)
    logger.info("%d training and %d validation structures (%s); species %s; reference energies (eV) %s",
                train.n_structures, val.n_structures,
                "in memory" if train.in_memory_data is not None else f"{len(train)} blocks read from the store",
                species, references)
    torch.manual_seed(config["seed"])
    model = StudentPotential(species=species, reference_energies_eV=references, **config["student"])
    model = model.to("cuda" if torch.cuda.is_available() else "cpu")  # a GPU when the job has one
    settings = TrainSettings(**{k: v for k, v in config["train"].items() if k not in IO_KEYS}, seed=config["seed"])

    fingerprint = training_fingerprint(config, store)
    resume_from = load_resume_state(state_path, fingerprint, logger) if config["train"]["resume"] else None
    if resume_from is not None and on_epoch is not None:
        for metrics in resume_from["history"]["epochs"]:
            on_epoch(metrics["epoch"], metrics)
    save = (lambda state: save_state_atomic(state_path, state, fingerprint)) if world()[0] == 0 else None
    history = train_student(model, train, val, settings, on_epoch=on_epoch, resume_from=resume_from, on_state=save)
    info = {"species": species, "reference_energies_eV": references, "n_train": train.n_structures,
            "n_val": val.n_structures, "train_stress_rms_eV_per_A3": stress_rms(train), **fingerprint}
    return model, history, info


def run(config: dict, store: Path, checkpoint: Path, torchscript: Path, history_file: Path,
        pipeline_file: Path, log_file: Path, threads: int, precompiled: Optional[Path] = None,
        compile_cache_dir: Optional[Path] = None) -> None:
    """The Snakemake job. ``precompiled``: the precompile stage's record; ``compile_cache_dir``:
    the TorchInductor cache it filled (`mlff_distill.precompile`)."""
    from mlff_distill.logs import stage_logger
    from mlff_distill.precompile import use_compile_cache
    from mlff_distill.store import store_attrs
    from mlff_distill.student import save_student
    from mlff_distill.student.export import export_torchscript
    from mlff_distill.tracking import config_hash, stage_run

    logger = stage_logger("train", log_file)
    torch.set_num_threads(threads)
    use_compile_cache(compile_cache_dir, logger)
    with stage_run(pipeline_file, "train", {"student": config["student"],
                                            "train": config["train"]}, log_file) as tracker:
        start = time.perf_counter()

        def on_epoch(epoch: int, metrics: dict) -> None:
            tracker.log_metrics(metrics, step=epoch)
            logger.info("epoch %d %s", epoch,
                        " ".join(f"{k}={v:.4g}" for k, v in metrics.items()))

        model, history, info = fit(config, Path(store), state_path_for(checkpoint), logger, on_epoch)
        model = model.cpu()  # checkpoints and the TorchScript file load on any machine
        n_parameters = sum(p.numel() for p in model.parameters())
        tracker.log_params({"n_parameters": n_parameters})
        best = history["epochs"][history["best_epoch"] - 1] if history["epochs"] else {}
        metadata = {
            "teacher": store_attrs(store)["teacher"], "label_store": str(Path(store).resolve()),
            "label_store_sha256": info["store_sha256"], "config_hash": config_hash(config),
            "n_train": info["n_train"], "n_val": info["n_val"], "best_val": best,
        }
        save_student(checkpoint, model, metadata=metadata)
        export_torchscript(model, torchscript, metadata)
        Path(history_file).write_text(json.dumps(history, indent=2))
        plot = Path(checkpoint).with_name("learning_curve.png")
        learning_curve_plot(history, plot)
        for artifact in (checkpoint, torchscript, history_file, plot, *([precompiled] if precompiled else [])):
            tracker.log_artifact(artifact)
        tracker.log_metrics({"train_seconds": time.perf_counter() - start,
                             "n_parameters": n_parameters})
        logger.info("saved %s and %s (%d parameters) in %.1f s", checkpoint, torchscript, n_parameters,
                    time.perf_counter() - start)
