"""The reference energies' calibration on the targets' teacher MD (`mlff_distill.student.calibration`)."""

import numpy as np
import pytest
import torch
from ase.build import molecule

from mlff_distill.data import LabeledArrays, concatenate_structures
from mlff_distill.student import StudentPotential, predict
from mlff_distill.student.calibration import reference_shift, shift_reference_energies, uncalibrated_state

pytestmark = pytest.mark.usefixtures("single_thread")

SPECIES = [1, 6, 8]
# the student's errors on the "target" frames: a constant per atom of each species (eV)
OFFSET = {1: 0.01, 6: 0.0, 8: -0.05}


@pytest.fixture(scope="module")
def student() -> StudentPotential:
    torch.manual_seed(0)
    return StudentPotential(species=SPECIES, cutoff_A=4.0, n_features=8, n_interactions=1).double().eval()


def labeled(structures: list, energies: np.ndarray, sample_index: list[int]) -> LabeledArrays:
    arrays = concatenate_structures(structures)
    return LabeledArrays(
        forces_eV_per_A=np.zeros_like(arrays["positions_A"]),
        energy_eV=energies,
        sample_index=np.array(sample_index),
        **arrays,
    )


def water_frames(n: int, seed: int) -> list:
    rng = np.random.default_rng(seed)
    frames = []
    for _ in range(n):
        atoms = molecule("H2O") + molecule("H2O")
        atoms.positions[3:] += (2.9, 0.0, 0.0)
        atoms.positions += rng.normal(scale=0.05, size=atoms.positions.shape)
        frames.append(atoms)
    return frames


def test_shift_takes_out_the_offset_of_the_calibration_frames_and_moves_the_others(student) -> None:
    targets, others = water_frames(4, seed=0), [molecule("CH3OH"), molecule("H2O")]
    structures = targets + others
    exact = predict(student, labeled(structures, np.zeros(6), list(range(6))))["energy_eV"]
    # the teacher: the student's energies, less the offset on the target frames only
    teacher = exact - np.array([sum(OFFSET[z] for z in a.numbers) if i < 4 else 0.0 for i, a in enumerate(structures)])
    data = labeled(structures, teacher, [10, 11, 12, 13, 20, 21])
    shift, stats = reference_shift(student, data, [10, 11, 12, 13, 99])
    # water alone fixes 2 H + O, nothing else (minimum norm: C untouched)
    assert 2 * shift[1] + shift[8] == pytest.approx(-(2 * OFFSET[1] + OFFSET[8]), abs=1e-9)
    assert shift[6] == pytest.approx(0.0, abs=1e-12)
    assert stats["n_target_md"] == 4 and stats["n_other"] == 2
    assert stats["target_md_energy_mae_per_atom_eV_before"] > 1e-3
    assert stats["target_md_energy_mae_per_atom_eV_after"] == pytest.approx(0.0, abs=1e-9)
    assert stats["other_energy_mae_per_atom_eV_before"] == pytest.approx(0.0, abs=1e-9)
    assert stats["other_energy_mae_per_atom_eV_after"] > 1e-3  # the water molecule moved with the targets
    with pytest.raises(ValueError, match="calibration samples"):
        reference_shift(student, data, [99])


def test_shifted_student_keeps_its_forces_and_the_next_round_starts_unshifted(student) -> None:
    structures = water_frames(2, seed=1) + [molecule("CH3OH")]
    data = labeled(structures, np.zeros(3), [0, 1, 2])
    before = predict(student, data)
    original = {name: value.clone() for name, value in student.state_dict().items()}
    shift = {1: 0.01, 6: -0.2, 8: 0.03}
    shift_reference_energies(student, shift)
    after = predict(student, data)
    counts = [sum(shift[z] for z in a.numbers) for a in structures]
    np.testing.assert_allclose(after["energy_eV"] - before["energy_eV"], counts, atol=1e-9)
    np.testing.assert_array_equal(after["forces_eV_per_A"], before["forces_eV_per_A"])
    restored = uncalibrated_state(student.state_dict(), student.species, shift)
    torch.testing.assert_close(restored["reference_energies_eV"], original["reference_energies_eV"])
    student.load_state_dict(original)
