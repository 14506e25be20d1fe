"""The student's Hessian term in the training loss, eager and compiled (the teacher's Hessian-vector
products: tests/teachers/test_hessian.py)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from ase.build import molecule

from mlff_distill.data import LabeledArrays, concatenate_structures
from mlff_distill.settings import TrainSettings, section_settings
from mlff_distill.student import StudentPotential, train_student
from mlff_distill.student.fitting import structure_tensors
from mlff_distill.student.loss import BatchLoss
from mlff_distill.student.model import energy_forces_stress
from mlff_distill.teachers.hessian import hessian_directions

pytestmark = pytest.mark.usefixtures("single_thread")


def rattled(names: list[str]) -> list:
    structures = []
    for index, name in enumerate(names):
        atoms = molecule(name)
        atoms.rattle(0.03, seed=index)
        atoms.info.update(split=["train", "val"][index % 2], group=index, sample_index=index)
        structures.append(atoms)
    return structures


def batch_with_hessian(model: StudentPotential, step_A: float = 1e-4) -> LabeledArrays:
    """Rattled molecules whose Hessian labels are the student's own central differences (float64)."""
    structures = rattled(["CH4", "H2O", "C6H6", "CH3CH2OH"])
    arrays = concatenate_structures(structures)
    directions = np.concatenate(hessian_directions(structures))

    def forces_at(positions: np.ndarray) -> np.ndarray:
        batch = LabeledArrays(
            forces_eV_per_A=np.zeros_like(positions),
            energy_eV=np.zeros(len(structures)),
            **{**arrays, "positions_A": positions},
        )
        _, forces, _ = energy_forces_stress(
            model, **structure_tensors(batch, torch.device("cpu")), compute_stress=False
        )
        return forces.detach().numpy()

    products = -(
        forces_at(arrays["positions_A"] + step_A * directions) - forces_at(arrays["positions_A"] - step_A * directions)
    ) / (2 * step_A)
    return LabeledArrays(
        forces_eV_per_A=forces_at(arrays["positions_A"]),
        energy_eV=np.zeros(len(structures)),
        hessian_direction=directions,
        hessian_product_eV_per_A2=products,
        **arrays,
    )


def test_student_hessian_term_matches_finite_differences() -> None:
    torch.manual_seed(0)
    model = StudentPotential(species=[1, 6, 8], cutoff_A=4.0, n_features=16).double()
    batch = batch_with_hessian(model)
    without = BatchLoss(1.0, 1.0, 0.0, 0.0, compile=False)(model, batch)
    matched = BatchLoss(1.0, 1.0, 0.0, 0.0, compile=False, hessian_weight=2.0)(model, batch)
    assert abs((matched - without).item()) < 1e-12  # its own products: the Hessian term vanishes
    expected = 2.0 * np.mean(batch.hessian_product_eV_per_A2**2)
    batch.hessian_product_eV_per_A2 = np.zeros_like(batch.hessian_product_eV_per_A2)
    zero_target = BatchLoss(1.0, 1.0, 0.0, 0.0, compile=False, hessian_weight=2.0)(model, batch)
    assert expected > 1e-4 and (zero_target - without).item() == pytest.approx(expected, rel=1e-5)


@pytest.mark.slow  # compiles the Hessian loss, a graph of its own: 20-50 s on 2 cores with a cold cache
def test_compiled_hessian_loss_gives_the_weights_the_eager_gradient() -> None:
    """On a student of one interaction layer: the graph to compile is about half that of two."""
    torch.manual_seed(0)
    model = StudentPotential(species=[1, 6, 8], cutoff_A=4.0, n_features=8, n_interactions=1).double()
    batch = batch_with_hessian(model)
    batch.hessian_product_eV_per_A2 *= 0.5
    model = model.float()
    compiled = BatchLoss(1.0, 1.0, 0.0, 0.0, compile=True, hessian_weight=1.0)
    gradients = [
        torch.autograd.grad(loss(model, batch), list(model.parameters()))
        for loss in (BatchLoss(1.0, 1.0, 0.0, 0.0, compile=False, hessian_weight=1.0), compiled)
    ]
    assert compiled.compiled, "torch.compile fell back to eager"
    for expected, got in zip(*gradients):
        scale = expected.abs().max().item()
        assert scale > 0 and (got - expected).abs().max().item() <= 1e-4 * scale


def test_hessian_weight_without_hessian_labels_is_refused() -> None:
    torch.manual_seed(0)
    model = StudentPotential(species=[1, 6, 8], cutoff_A=4.0, n_features=8).double()
    batch = batch_with_hessian(model)
    batch.hessian_direction = batch.hessian_product_eV_per_A2 = None
    settings = section_settings(TrainSettings, "train", {"epochs": 1, "hessian_weight": 1.0, "compile": False})
    with pytest.raises(ValueError, match="label.hessian_step_A"):
        train_student(model, batch, batch, settings, seed=0)
