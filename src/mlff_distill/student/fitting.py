"""Training core of the student: reference energies, the training loop and batched prediction.

No file I/O or experiment tracking here; the calling stage logs the metrics passed to ``on_epoch``
and saves the model. Units: energies in eV, forces in eV/Angstrom, stress in eV/Angstrom^3.
"""

from __future__ import annotations

import copy
import math
import time
from dataclasses import dataclass
from typing import Any, Callable, Optional, Sequence

import numpy as np
import torch
from torch.optim.swa_utils import AveragedModel, get_ema_multi_avg_fn

from mlff_distill.data import LabeledArrays
from mlff_distill.student.model import StudentPotential, energy_forces_stress


def fit_reference_energies(data: LabeledArrays, species: Sequence[int]) -> dict[int, float]:
    """Per-species atomic energies (eV) from least squares of the energies on species counts.

    Species absent from ``data`` get 0 (minimum-norm solution). Raises ``ValueError`` if ``data``
    holds a species not in ``species``.
    """
    species = [int(z) for z in species]
    unknown = sorted(set(np.unique(data.numbers).tolist()) - set(species))
    if unknown:
        raise ValueError(f"data holds atomic number(s) {unknown} not in species {species}")
    lookup = np.zeros(max(species) + 1, dtype=np.int64)
    lookup[species] = np.arange(len(species))
    column = lookup[data.numbers]
    counts = np.zeros((data.n_structures, len(species)))
    np.add.at(counts, (np.repeat(np.arange(data.n_structures), data.n_atoms), column), 1.0)
    solution, *_ = np.linalg.lstsq(counts, data.energy_eV, rcond=None)
    return {z: float(e) for z, e in zip(species, solution)}


@dataclass
class TrainSettings:
    """Hyperparameters of `train_student`.

    The learning rate rises linearly over ``warmup_epochs`` and then follows a cosine down to
    ``final_lr_fraction * learning_rate`` at the last epoch (updated every step). ``ema_decay`` is
    the per-step decay of an exponential moving average of the weights (0 = off); when on,
    validation and the returned model use the averaged weights. ``max_minutes`` caps the
    wall-clock time and ``patience`` the number of epochs without a better validation loss
    (``None`` = no limit); either stops training after a validation.
    """

    epochs: int = 100
    batch_size: int = 16
    learning_rate: float = 1e-3
    weight_decay: float = 1e-5
    energy_weight: float = 1.0
    force_weight: float = 10.0
    warmup_epochs: int = 2
    ema_decay: float = 0.99
    grad_clip: float = 10.0
    seed: int = 0
    max_minutes: Optional[float] = None
    patience: Optional[int] = None
    final_lr_fraction: float = 0.01


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


def _validation_metrics(model: StudentPotential, val: LabeledArrays, settings: TrainSettings) -> dict[str, float]:
    prediction = predict(model, val, batch_size=settings.batch_size)
    energy_error = (prediction["energy_eV"] - val.energy_eV) / val.n_atoms
    force_error = prediction["forces_eV_per_A"] - val.forces_eV_per_A
    force_rmse = float(np.sqrt(np.mean(force_error**2)))
    return {
        "val_loss": float(
            settings.energy_weight * np.mean(energy_error**2) + settings.force_weight * np.mean(force_error**2)
        ),
        "val_energy_mae_per_atom_eV": float(np.mean(np.abs(energy_error))),
        "val_energy_rmse_per_atom_eV": float(np.sqrt(np.mean(energy_error**2))),
        "val_force_mae_eV_per_A": float(np.mean(np.abs(force_error))),
        "val_force_rmse_eV_per_A": force_rmse,
        "val_force_rel_rmse": force_rmse / float(np.sqrt(np.mean(val.forces_eV_per_A**2))),
    }


def train_student(
    model: StudentPotential,
    train: LabeledArrays,
    val: LabeledArrays,
    settings: TrainSettings,
    on_epoch: Optional[Callable[[int, dict[str, float]], None]] = None,
) -> dict[str, Any]:
    """Fit ``model`` in place to energies and forces of ``train``; validate on ``val`` each epoch.

    Loss: ``energy_weight * MSE(energy per atom, eV) + force_weight * MSE(force components,
    eV/Angstrom)``, AdamW on shuffled batches of ``batch_size`` structures. At the end the model
    holds the weights (EMA weights if ``ema_decay > 0``) of the epoch with the lowest ``val_loss``.

    ``on_epoch(epoch, metrics)`` is called after every epoch (numbered from 1) with
    ``train_loss`` (mean over its steps), ``lr`` (at its end), ``val_loss``, ``val_energy_mae_per_atom_eV``,
    ``val_energy_rmse_per_atom_eV``, ``val_force_mae_eV_per_A``, ``val_force_rmse_eV_per_A`` and
    ``val_force_rel_rmse`` (force RMSE over the RMS of the reference forces).

    Returns the history: ``{"epochs": [metrics per epoch, each with "epoch"], "best_epoch": int,
    "best_val_loss": float, "stop_reason": "epochs" | "patience" | "max_minutes"}``. With a fixed
    ``seed`` the run is deterministic on a given machine.
    """
    torch.manual_seed(settings.seed)
    generator = torch.Generator().manual_seed(settings.seed)
    device = model.embedding.weight.device
    optimizer = torch.optim.AdamW(model.parameters(), lr=settings.learning_rate, weight_decay=settings.weight_decay)
    steps_per_epoch = math.ceil(train.n_structures / settings.batch_size)
    warmup_steps = settings.warmup_epochs * steps_per_epoch
    decay_steps = max(1, settings.epochs * steps_per_epoch - warmup_steps)

    def lr_factor(step: int) -> float:
        if step < warmup_steps:
            return (step + 1) / warmup_steps
        progress = min(1.0, (step - warmup_steps) / decay_steps)
        return settings.final_lr_fraction + (1 - settings.final_lr_fraction) * 0.5 * (1 + math.cos(math.pi * progress))

    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lr_factor)
    ema = None
    if settings.ema_decay > 0:
        ema = AveragedModel(model, multi_avg_fn=get_ema_multi_avg_fn(settings.ema_decay))
    evaluated = ema.module if ema is not None else model

    start_time = time.monotonic()
    history: dict[str, Any] = {"epochs": [], "best_epoch": 0, "best_val_loss": math.inf, "stop_reason": "epochs"}
    best_state = None
    for epoch in range(1, settings.epochs + 1):
        model.train()
        losses, out_of_time = [], False
        for indices in torch.randperm(train.n_structures, generator=generator).split(settings.batch_size):
            subset = train.subset(indices.tolist())
            batch = structure_tensors(subset, device)
            energy, forces, _ = energy_forces_stress(model, **batch, compute_stress=False, create_graph=True)
            n_atoms = torch.as_tensor(subset.n_atoms, dtype=torch.float64, device=device)
            energy_error = (energy - torch.as_tensor(subset.energy_eV, device=device)) / n_atoms
            force_error = forces - torch.as_tensor(subset.forces_eV_per_A, dtype=forces.dtype, device=device)
            loss = settings.energy_weight * (energy_error**2).mean() + settings.force_weight * (force_error**2).mean()
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), settings.grad_clip)
            optimizer.step()
            scheduler.step()
            if ema is not None:
                ema.update_parameters(model)
            losses.append(loss.item())
            out_of_time = settings.max_minutes is not None and time.monotonic() - start_time > 60 * settings.max_minutes
            if out_of_time:
                break

        metrics = {"epoch": epoch, "train_loss": float(np.mean(losses)), "lr": optimizer.param_groups[0]["lr"]}
        metrics.update(_validation_metrics(evaluated, val, settings))
        history["epochs"].append(metrics)
        if on_epoch is not None:
            on_epoch(epoch, metrics)
        if metrics["val_loss"] < history["best_val_loss"]:
            history["best_epoch"], history["best_val_loss"] = epoch, metrics["val_loss"]
            best_state = copy.deepcopy(evaluated.state_dict())
        if out_of_time:
            history["stop_reason"] = "max_minutes"
            break
        if settings.patience is not None and epoch - history["best_epoch"] >= settings.patience:
            history["stop_reason"] = "patience"
            break

    if best_state is not None:
        model.load_state_dict(best_state)
    return history
