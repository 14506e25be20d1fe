"""Training core of the student: reference energies, the training loop and batched prediction.

No file I/O or experiment tracking here; the calling stage logs the metrics passed to ``on_epoch``
and saves the model. Units: energies in eV, forces in eV/Angstrom, stress in eV/Angstrom^3.
"""

from __future__ import annotations

import copy
import math
import statistics
import time
from typing import Any, Callable, Optional, Sequence, Union

import numpy as np
import torch
from ase.data import chemical_symbols
from torch.optim.swa_utils import AveragedModel, get_ema_multi_avg_fn

from mlff_distill.data import LabeledArrays
from mlff_distill.settings import TrainSettings
from mlff_distill.student.dataset import StructureBlocks, batches_in_epoch, shuffled_batches
from mlff_distill.student.loss import BatchLoss, energy_weights_of, stress_mask
from mlff_distill.student.model import StudentPotential, energy_forces_stress
from mlff_distill.student.parallel import agree_on_time, average_gradients, sum_over_processes, world


def fit_reference_energies(data: Union[LabeledArrays, StructureBlocks], species: Sequence[int]) -> dict[int, float]:
    """Per-species atomic energies (eV) from least squares of the energies on species counts
    (`reference_energy_fit` without the undetermined combinations)."""
    return reference_energy_fit(data, species)[0]


def reference_energy_fit(
    data: Union[LabeledArrays, StructureBlocks], species: Sequence[int]
) -> tuple[dict[int, float], list[str]]:
    """Per-species atomic energies (eV) from least squares of the energies on species counts, and
    the combinations of them that the compositions of ``data`` leave undetermined.

    Where the compositions do not determine every present species' energy (water and methanol
    alone fix only two combinations of H, C and O), the minimum-norm solution is taken: the
    student's energy of a structure whose composition is not a combination of the training ones
    is then arbitrary. Each undetermined combination is a string such as ``"-0.5 H +1 C +1 O"``
    (a null vector of the present species' normal matrix, scaled to largest component 1). Species
    absent from ``data`` get 0 and are not listed. ``data`` may be a `StructureBlocks` read block by
    block (the normal equations are accumulated). Raises ``ValueError`` if ``data`` holds a species
    not in ``species``.
    """
    species = [int(z) for z in species]
    gram, moment = np.zeros((len(species), len(species))), np.zeros(len(species))
    for block in as_blocks(data).blocks():
        counts = species_counts(block, species)
        gram += counts.T @ counts
        moment += counts.T @ block.energy_eV
    solution, *_ = np.linalg.lstsq(gram, moment, rcond=None)
    return {z: float(e) for z, e in zip(species, solution)}, _undetermined_combinations(gram, species)


def species_counts(data: LabeledArrays, species: Sequence[int]) -> np.ndarray:
    """Atoms of each of ``species`` in each structure of ``data``, ``[N, S]``; ``ValueError`` if
    ``data`` holds a species not in ``species``."""
    species = [int(z) for z in species]
    unknown = sorted(set(np.unique(data.numbers).tolist()) - set(species))
    if unknown:
        raise ValueError(f"data holds atomic number(s) {unknown} not in species {species}")
    lookup = np.zeros(max(species) + 1, dtype=np.int64)
    lookup[species] = np.arange(len(species))
    counts = np.zeros((data.n_structures, len(species)))
    np.add.at(counts, (np.repeat(np.arange(data.n_structures), data.n_atoms), lookup[data.numbers]), 1.0)
    return counts


def _undetermined_combinations(gram: np.ndarray, species: list[int]) -> list[str]:
    present = [i for i in range(len(species)) if gram[i, i] > 0]
    if not present:
        return []
    values, vectors = np.linalg.eigh(gram[np.ix_(present, present)])
    null = vectors[:, values <= values.max() * len(present) * np.finfo(float).eps * 1e3]
    combinations = []
    for vector in null.T:
        vector = vector / vector[np.argmax(np.abs(vector))]
        terms = [f"{c:+.3g} {chemical_symbols[species[i]]}" for c, i in zip(vector, present) if abs(c) > 1e-6]
        combinations.append(" ".join(terms))
    return combinations


def as_blocks(data: Union[LabeledArrays, StructureBlocks]) -> StructureBlocks:
    """``data`` as `StructureBlocks` (in memory, one block, if it is `LabeledArrays`)."""
    return data if isinstance(data, StructureBlocks) else StructureBlocks.in_memory(data)


def stress_rms(data: Union[LabeledArrays, StructureBlocks]) -> float:
    """RMS stress component (eV/Angstrom^3) over the periodic structures with stress labels; 0 if none."""
    total, count = 0.0, 0
    for block in as_blocks(data).blocks():
        labels = block.stress_eV_per_A3[stress_mask(block)] if block.stress_eV_per_A3 is not None else np.zeros(0)
        total, count = total + float((labels**2).sum()), count + labels.size
    return math.sqrt(total / count) if count else 0.0


def structure_tensors(data: LabeledArrays, device: torch.device) -> dict[str, torch.Tensor]:
    """The model inputs of ``data``: numbers, positions_A, cell_A, pbc, atoms_ptr."""
    return {
        "numbers": torch.as_tensor(data.numbers, dtype=torch.long, device=device),
        "positions_A": torch.as_tensor(data.positions_A, device=device),
        "cell_A": torch.as_tensor(data.cell_A, device=device),
        "pbc": torch.as_tensor(data.pbc, dtype=torch.bool, device=device),
        "atoms_ptr": torch.as_tensor(data.atoms_ptr, dtype=torch.long, device=device),
    }


def predict(
    model: StudentPotential, data: LabeledArrays, batch_size: int = 32, compute_stress: bool = False
) -> dict[str, np.ndarray]:
    """Predictions of ``model`` (in eval mode) on ``data``, as numpy arrays.

    Returns ``energy_eV [N]``, ``forces_eV_per_A [M, 3]`` and, if ``compute_stress``,
    ``stress_eV_per_A3 [N, 3, 3]`` (NaN for structures not periodic in all directions).
    """
    was_training = model.training
    model.eval()
    device = model.embedding.weight.device
    outputs: dict[str, list[np.ndarray]] = {"energy_eV": [], "forces_eV_per_A": [], "stress_eV_per_A3": []}
    with torch.enable_grad():
        for start in range(0, data.n_structures, batch_size):
            batch = structure_tensors(data.subset(range(start, min(start + batch_size, data.n_structures))), device)
            energy, forces, stress = energy_forces_stress(model, **batch, compute_stress=compute_stress)
            outputs["energy_eV"].append(energy.detach().cpu().numpy())
            outputs["forces_eV_per_A"].append(forces.detach().cpu().numpy())
            if compute_stress:
                outputs["stress_eV_per_A3"].append(stress.detach().cpu().numpy())
    model.train(was_training)
    empty = {"energy_eV": (0,), "forces_eV_per_A": (0, 3), "stress_eV_per_A3": (0, 3, 3)}
    return {
        name: np.concatenate(arrays) if arrays else np.zeros(empty[name])
        for name, arrays in outputs.items()
        if compute_stress or name != "stress_eV_per_A3"
    }


def _validation_metrics(
    model: StudentPotential,
    val: StructureBlocks,
    settings: TrainSettings,
    stress_scale_eV_per_A3: float,
    on_policy_samples: Sequence[int] = (),
) -> dict[str, float]:
    """Validation errors accumulated block by block; stress metrics only if ``val`` has stress labels.
    ``val_loss`` weighs the energy errors of ``on_policy_samples`` as the training loss does; the
    other metrics count every structure alike. In a process group each process predicts every
    size-th structure and the sums are shared."""
    sums = dict.fromkeys(
        [
            "n_structures",
            "energy_abs",
            "energy_sq",
            "energy_sq_weighted",
            "n_force",
            "force_abs",
            "force_sq",
            "force_ref_sq",
            "n_stress",
            "stress_sq",
            "stress_ref_sq",
        ],
        0.0,
    )
    rank, size = world()
    for block in val.blocks():
        if size > 1:
            block = block.subset(range(rank, block.n_structures, size))
        mask = stress_mask(block)
        prediction = predict(model, block, batch_size=settings.batch_size, compute_stress=bool(mask.any()))
        energy_error = (prediction["energy_eV"] - block.energy_eV) / block.n_atoms
        force_error = prediction["forces_eV_per_A"] - block.forces_eV_per_A
        sums["n_structures"] += block.n_structures
        sums["energy_abs"] += float(np.abs(energy_error).sum())
        sums["energy_sq"] += float((energy_error**2).sum())
        weights = energy_weights_of(block, on_policy_samples, settings.on_policy_energy_weight)
        sums["energy_sq_weighted"] += float((weights * energy_error**2).sum())
        sums["n_force"] += force_error.size
        sums["force_abs"] += float(np.abs(force_error).sum())
        sums["force_sq"] += float((force_error**2).sum())
        sums["force_ref_sq"] += float((block.forces_eV_per_A**2).sum())
        if mask.any():
            stress_error = prediction["stress_eV_per_A3"][mask] - block.stress_eV_per_A3[mask]
            sums["n_stress"] += stress_error.size
            sums["stress_sq"] += float((stress_error**2).sum())
            sums["stress_ref_sq"] += float((block.stress_eV_per_A3[mask] ** 2).sum())
    if size > 1:
        sums = sum_over_processes(sums)
    energy_mse, force_mse = sums["energy_sq"] / sums["n_structures"], sums["force_sq"] / sums["n_force"]
    force_rmse = math.sqrt(force_mse)
    metrics = {
        "val_loss": settings.energy_weight * sums["energy_sq_weighted"] / sums["n_structures"]
        + settings.force_weight * force_mse,
        "val_energy_mae_per_atom_eV": sums["energy_abs"] / sums["n_structures"],
        "val_energy_rmse_per_atom_eV": math.sqrt(energy_mse),
        "val_force_mae_eV_per_A": sums["force_abs"] / sums["n_force"],
        "val_force_rmse_eV_per_A": force_rmse,
        "val_force_rel_rmse": force_rmse / math.sqrt(sums["force_ref_sq"] / sums["n_force"]),
    }
    if sums["n_stress"]:
        stress_mse = sums["stress_sq"] / sums["n_stress"]
        if stress_scale_eV_per_A3 > 0:
            metrics["val_loss"] += settings.stress_weight * stress_mse / stress_scale_eV_per_A3**2
        metrics["val_stress_rmse_eV_per_A3"] = math.sqrt(stress_mse)
        metrics["val_stress_rel_rmse"] = math.sqrt(stress_mse / max(sums["stress_ref_sq"] / sums["n_stress"], 1e-300))
    return metrics


def capped_horizon(epoch: int, epochs: int, epoch_seconds: Sequence[float], seconds_left: float) -> int:
    """The epoch the learning-rate schedule should end at, after ``epoch`` of ``epochs``, when
    ``seconds_left`` (s) remain and recent epochs took ``epoch_seconds`` (s, the median of the last
    five counts): ``epochs`` if they fit, else as many as fit, at least ``epoch + 1``. Estimated
    afresh each epoch from recent epochs, so a slow start (another job on the machine) does not
    end the schedule early for good."""
    recent = statistics.median(epoch_seconds[-5:])
    affordable = epoch + int(max(seconds_left, 0.0) / recent) if recent > 0 else epochs
    return max(epoch + 1, min(epochs, affordable))


def train_student(
    model: StudentPotential,
    train: Union[LabeledArrays, StructureBlocks],
    val: Union[LabeledArrays, StructureBlocks],
    settings: TrainSettings,
    seed: int,
    on_epoch: Optional[Callable[[int, dict[str, float]], None]] = None,
    resume_from: Optional[dict[str, Any]] = None,
    on_state: Optional[Callable[[dict[str, Any]], None]] = None,
    on_policy_samples: Sequence[int] = (),
) -> dict[str, Any]:
    """Fit ``model`` in place to energies, forces and stresses of ``train``; validate on ``val`` each epoch.

    ``on_policy_samples``: the sample indices of on-policy frames, whose energy errors count
    ``settings.on_policy_energy_weight`` times, in training and validation loss alike.

    ``settings``: the ``train:`` section (config/README.md); its ``threads``, ``processes``,
    ``resume`` and ``in_memory_max_GB`` belong to the caller (`mlff_distill.student.training`).
    The learning rate rises linearly over ``warmup_epochs`` and then follows a cosine down to
    ``final_lr_fraction * learning_rate`` at the last epoch (updated every step). ``ema_decay`` is
    the per-step decay of an exponential moving average of the weights (0 = off); when on,
    validation and the returned model use the averaged weights. ``max_minutes`` caps the
    wall-clock time of training after its first step, which compiles the loss; when the measured
    time per epoch says fewer than ``epochs`` fit, the cosine is shortened to end with the time
    (the run is then no longer reproducible to the bit). ``patience`` is the number of epochs
    without a better validation loss (``None`` = no limit); either stops training after a
    validation. ``compile`` compiles the training loss with ``torch.compile``
    (`mlff_distill.student.loss.BatchLoss`).

    Loss: ``energy_weight * MSE(energy per atom, eV) + force_weight * MSE(force components,
    eV/Angstrom) + stress_weight * MSE(stress components / RMS training stress) + hessian_weight *
    MSE(Hessian-vector product components, eV/Angstrom^2)``, the stress term over structures
    periodic in all directions with stress labels. AdamW on shuffled batches of
    ``batch_size`` structures (`dataset.shuffled_batches`: ``train`` may be a `StructureBlocks`
    read from the store block by block). At the end the model holds the weights (EMA weights if
    ``ema_decay > 0``) of the epoch with the lowest ``val_loss``.

    ``on_epoch(epoch, metrics)`` is called after every epoch (numbered from 1) with
    ``train_loss`` (mean over its steps), ``lr`` (at its end), ``val_loss``, ``val_energy_mae_per_atom_eV``,
    ``val_energy_rmse_per_atom_eV``, ``val_force_mae_eV_per_A``, ``val_force_rmse_eV_per_A``,
    ``val_force_rel_rmse`` (force RMSE over the RMS of the reference forces) and, when ``val``
    holds periodic structures with stress labels, ``val_stress_rmse_eV_per_A3`` and
    ``val_stress_rel_rmse``.

    Resuming: after each epoch ``on_state(state)`` receives the full training state (model, EMA,
    optimiser, scheduler, RNG states, early-stopping state, history; plain tensors and Python
    values, safe for ``torch.save``/``torch.load(weights_only=True)``). Passing such a state as
    ``resume_from`` (same model, data and settings) continues after its epoch and ends with the
    same weights and history as a run never interrupted; a state saved at the end of training
    returns at once. Time spent before the interruption counts toward ``max_minutes``.

    Returns the history: ``{"epochs": [metrics per epoch, each with "epoch"], "best_epoch": int,
    "best_val_loss": float, "stop_reason": "epochs" | "patience" | "max_minutes"}``. With a fixed
    ``seed`` the run is deterministic on a given machine.
    """
    train, val = as_blocks(train), as_blocks(val)
    if train.n_structures == 0 or val.n_structures == 0:
        raise ValueError(
            f"train_student needs structures in both splits; got {train.n_structures} training "
            f"and {val.n_structures} validation structures"
        )
    if settings.hessian_weight > 0 and not train[0].has_hessian:
        raise ValueError(
            "hessian_weight > 0 needs Hessian-vector labels in the training data: label the "
            "structures with label.hessian_step_A set"
        )
    torch.manual_seed(seed)
    generator = torch.Generator().manual_seed(seed)
    # Fused: one kernel for all parameters instead of a loop over them (the optimiser step is a
    # large share of a small student's step); the gradient clipping likewise uses foreach.
    optimizer = torch.optim.AdamW(
        model.parameters(), lr=settings.learning_rate, weight_decay=settings.weight_decay, fused=True
    )
    # In a process group (`mlff_distill.student.parallel`) each process takes every size-th batch,
    # and the last batches that not every process would get are left out of the epoch.
    rank, size = world()
    batches_per_epoch = batches_in_epoch(train.n_structures, settings.batch_size)
    steps_per_epoch = batches_per_epoch if size == 1 else max(1, batches_per_epoch // size)
    keep = None if size == 1 else (lambda number: number % size == rank and number < steps_per_epoch * size)
    warmup_steps = settings.warmup_epochs * steps_per_epoch
    # The cosine decays over `horizon_epochs`: `epochs`, or fewer when `max_minutes` will not allow
    # them (`capped_horizon`, after every epoch), so that a time-capped run still ends at a low rate.
    horizon_epochs = [settings.epochs]

    def lr_factor(step: int) -> float:
        if step < warmup_steps:
            return (step + 1) / warmup_steps
        decay_steps = max(1, horizon_epochs[0] * steps_per_epoch - warmup_steps)
        progress = min(1.0, (step - warmup_steps) / decay_steps)
        return settings.final_lr_fraction + (1 - settings.final_lr_fraction) * 0.5 * (1 + math.cos(math.pi * progress))

    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lr_factor)
    ema = None
    if settings.ema_decay > 0:
        ema = AveragedModel(model, multi_avg_fn=get_ema_multi_avg_fn(settings.ema_decay))
    evaluated = ema.module if ema is not None else model
    stress_scale = stress_rms(train) if settings.stress_weight > 0 else 0.0
    batch_loss = BatchLoss(
        settings.energy_weight,
        settings.force_weight,
        settings.stress_weight,
        stress_scale,
        settings.compile,
        settings.hessian_weight,
        on_policy_samples,
        settings.on_policy_energy_weight,
    )

    history: dict[str, Any] = {"epochs": [], "best_epoch": 0, "best_val_loss": math.inf, "stop_reason": "epochs"}
    best_state, first_epoch, elapsed = None, 1, 0.0
    if resume_from is not None:
        model.load_state_dict(resume_from["model"])
        if ema is not None:
            ema.load_state_dict(resume_from["ema"])
        optimizer.load_state_dict(resume_from["optimizer"])
        scheduler.load_state_dict(resume_from["scheduler"])
        generator.set_state(resume_from["generator"])
        torch.set_rng_state(resume_from["torch_rng"])
        history, best_state = copy.deepcopy(resume_from["history"]), copy.deepcopy(resume_from["best_state"])
        first_epoch = settings.epochs + 1 if resume_from["finished"] else resume_from["epoch"] + 1
        elapsed = resume_from["elapsed_s"]
        horizon_epochs[0] = resume_from.get("horizon_epochs", settings.epochs)

    start_time, first_step_done = time.monotonic() - elapsed, False
    epoch_seconds: list[float] = []
    for epoch in range(first_epoch, settings.epochs + 1):
        epoch_start = time.monotonic()
        model.train()
        losses, out_of_time = [], False
        for batch in shuffled_batches(train, settings.batch_size, generator, settings.shuffle_buffer_blocks, keep):
            loss = batch_loss(model, batch)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            out_of_time = settings.max_minutes is not None and time.monotonic() - start_time > 60 * settings.max_minutes
            if size > 1:
                out_of_time = average_gradients(model.parameters(), out_of_time)
            torch.nn.utils.clip_grad_norm_(model.parameters(), settings.grad_clip, foreach=True)
            optimizer.step()
            scheduler.step()
            if ema is not None:
                ema.update_parameters(model)
            losses.append(loss.item())
            if not first_step_done:  # the compilation of the loss does not count toward max_minutes
                start_time, first_step_done = time.monotonic() - elapsed, True
            if out_of_time:
                break

        metrics = {"epoch": epoch, "train_loss": float(np.mean(losses)), "lr": optimizer.param_groups[0]["lr"]}
        metrics.update(_validation_metrics(evaluated, val, settings, stress_scale, on_policy_samples))
        history["epochs"].append(metrics)
        if on_epoch is not None:
            on_epoch(epoch, metrics)
        if metrics["val_loss"] < history["best_val_loss"]:
            history["best_epoch"], history["best_val_loss"] = epoch, metrics["val_loss"]
            best_state = copy.deepcopy(evaluated.state_dict())
        seconds, seconds_left = (
            time.monotonic() - epoch_start,
            60 * (settings.max_minutes or 0) - (time.monotonic() - start_time),
        )
        if size > 1:
            seconds, seconds_left = agree_on_time(seconds, seconds_left)
        epoch_seconds.append(seconds)
        if settings.max_minutes is not None:
            horizon_epochs[0] = capped_horizon(epoch, settings.epochs, epoch_seconds, seconds_left)
        stop = None
        if out_of_time:
            stop = "max_minutes"
        elif settings.patience is not None and epoch - history["best_epoch"] >= settings.patience:
            stop = "patience"
        if stop is not None:
            history["stop_reason"] = stop
        if on_state is not None:
            on_state(
                copy.deepcopy(
                    {
                        "epoch": epoch,
                        "finished": stop is not None or epoch == settings.epochs,
                        "model": model.state_dict(),
                        "ema": ema.state_dict() if ema is not None else None,
                        "optimizer": optimizer.state_dict(),
                        "scheduler": scheduler.state_dict(),
                        "generator": generator.get_state(),
                        "torch_rng": torch.get_rng_state(),
                        "history": history,
                        "best_state": best_state,
                        "elapsed_s": time.monotonic() - start_time,
                        "horizon_epochs": horizon_epochs[0],
                    }
                )
            )
        if stop is not None:
            break

    if best_state is not None:
        model.load_state_dict(best_state)
    return history
