"""The FeNNol ensemble teacher against FeNNol's own ASE calculator, numpy statistics over members
evaluated one by one, and finite differences (float64, in a subprocess: jax's x64 is global)."""

import json
import os
import subprocess
import sys

import numpy as np
import pytest
from ase import Atoms
from ase.build import molecule
from ase.stress import voigt_6_to_full_3x3_stress
from ase.units import Hartree

from mlff_distill.teachers.fennol_ensemble import FennolEnsembleTeacher, fennol_inputs, largest_molecules


def ani1x_files(models_dir):
    return [models_dir / "fennol-pmc" / "ANI1X" / f"ani1x_model{i}.fnx" for i in range(8)]


def water_box() -> Atoms:
    """8 water molecules in a 6.2 A cube: smaller than twice ANI-1x's 5.2 A cutoff."""
    rng = np.random.default_rng(0)
    box = Atoms(cell=[6.2] * 3, pbc=True)
    for corner in np.ndindex(2, 2, 2):
        water = molecule("H2O")
        water.rotate(rng.uniform(0, 360), rng.normal(size=3))
        water.translate(3.1 * np.array(corner) + 1.0)
        box += water
    box.rattle(0.05, rng=rng)
    return box


def structures() -> list[Atoms]:
    """A rattled ethanol, the water box, water: a molecule after a cell checks the output order."""
    ethanol = molecule("CH3CH2OH")
    ethanol.rattle(0.05, rng=np.random.default_rng(1))
    return [ethanol, water_box(), molecule("H2O")]


@pytest.fixture(scope="module")
def reference(models_dir):
    """Per-member energy [8, N] (eV), forces [8, M, 3] and stress [8, N, 3, 3] from FeNNol's ASE
    calculator, one member's weights at a time, and model 0's raw energy of ethanol (Hartree)."""
    from fennol.ase import FENNIXCalculator
    from flax.serialization import msgpack_restore

    items = structures()
    calc = FENNIXCalculator(str(ani1x_files(models_dir)[0]), gpu_preprocessing=False)
    ethanol = items[0]
    raw_Ha, _ = calc.model.total_energy(
        species=ethanol.numbers,
        coordinates=ethanol.positions,
        natoms=np.array([len(ethanol)]),
        batch_index=np.zeros(len(ethanol), dtype=int),
    )
    energy, forces, stress = [], [], []
    for path in ani1x_files(models_dir):
        calc.model.variables = msgpack_restore(path.read_bytes())["variables"]
        e, f, s = [], [], []
        for atoms in items:
            periodic = atoms.pbc.all()
            calc.calculate(atoms, ["energy", "forces", "stress" if periodic else "forces"])
            e.append(calc.results["energy"])
            f.append(calc.results["forces"])
            s.append(voigt_6_to_full_3x3_stress(calc.results["stress"]) if periodic else np.full((3, 3), np.nan))
        energy.append(e), forces.append(np.concatenate(f)), stress.append(s)
    return {
        "energy": np.array(energy),
        "forces": np.array(forces),
        "stress": np.array(stress),
        "raw_Ha": float(raw_Ha[0]),
    }


def test_single_model_energy_in_eV(models_dir, reference):
    teacher = FennolEnsembleTeacher(ani1x_files(models_dir)[:1], name="ani1x-model0")
    items = structures()
    out = teacher.compute(items, compute_stress=True)
    assert teacher.identity.members == 1 and teacher.identity.species == (1, 6, 7, 8)
    np.testing.assert_allclose(out.energy_eV, reference["energy"][0], rtol=1e-6)
    np.testing.assert_allclose(out.energy_eV[0], reference["raw_Ha"] * Hartree, rtol=1e-6)
    np.testing.assert_allclose(out.forces_eV_per_A, reference["forces"][0], atol=2e-3)
    np.testing.assert_allclose(out.stress_eV_per_A3, reference["stress"][0], atol=2e-5)
    assert not out.energy_std_eV.any() and not out.forces_std_eV_per_A.any()


def test_ensemble_mean_and_std_over_members(ani1x_teacher, reference):
    out = ani1x_teacher.compute(structures(), compute_stress=True)
    assert ani1x_teacher.identity.extra["stacked"] and ani1x_teacher.identity.members == 8
    np.testing.assert_allclose(out.energy_eV, reference["energy"].mean(0), rtol=1e-6)
    np.testing.assert_allclose(out.energy_std_eV, reference["energy"].std(0), atol=2e-3)
    np.testing.assert_allclose(out.forces_eV_per_A, reference["forces"].mean(0), atol=2e-3)
    np.testing.assert_allclose(out.forces_std_eV_per_A, reference["forces"].std(0), atol=2e-3)
    np.testing.assert_allclose(out.stress_eV_per_A3, reference["stress"].mean(0), atol=2e-5)
    assert np.isnan(out.stress_eV_per_A3[[0, 2]]).all()  # molecules
    assert np.abs(out.stress_eV_per_A3[1]).max() > 1e-3
    assert np.isnan(ani1x_teacher.compute(structures()).stress_eV_per_A3).all()  # not asked


def test_a_member_is_a_teacher_of_its_own(ani1x_teacher, reference):
    member = ani1x_teacher.member(3)
    assert member.identity.members == 1 and member.identity.name.endswith("member 4 of 8")
    assert member.identity.species == ani1x_teacher.identity.species and member.batch_size == ani1x_teacher.batch_size
    out = member.compute(structures(), compute_stress=True)
    np.testing.assert_allclose(out.energy_eV, reference["energy"][3], rtol=1e-6)
    np.testing.assert_allclose(out.forces_eV_per_A, reference["forces"][3], atol=2e-3)
    with pytest.raises(IndexError, match="8 members"):
        ani1x_teacher.member(8)


def test_small_cell_sums_all_periodic_images(ani1x_teacher):
    """A 6.2 A box (under twice the cutoff) and its 2x1x1 supercell agree per cell."""
    box = water_box()
    out = ani1x_teacher.compute([box, box.repeat((2, 1, 1))], compute_stress=True)
    np.testing.assert_allclose(out.energy_eV[1], 2 * out.energy_eV[0], rtol=1e-6)
    forces = out.forces_eV_per_A
    np.testing.assert_allclose(forces[len(box) :], np.tile(forces[: len(box)], (2, 1)), atol=2e-3)
    np.testing.assert_allclose(out.stress_eV_per_A3[1], out.stress_eV_per_A3[0], atol=2e-5)


def test_members_that_cannot_be_stacked_are_evaluated_one_by_one(models_dir, reference, tmp_path):
    """Model 0's weights with a shorter cutoff: another model, which cannot share model 0's
    compiled function."""
    from fennol import FENNIX

    model0 = ani1x_files(models_dir)[0]
    args = FENNIX.load(str(model0)).to_dict()
    args["cutoff"] = 4.6
    short = tmp_path / "short_cutoff.fnx"
    FENNIX(**args).save(str(short))

    items = structures()[:1]  # ethanol (periodic cells are checked above)
    atoms = slice(0, len(items[0]))
    mixed = FennolEnsembleTeacher([model0, short], name="mixed")
    out = mixed.compute(items)
    assert not mixed.identity.extra["stacked"] and mixed.identity.cutoff_A == 5.2
    alone = FennolEnsembleTeacher([short], name="short").compute(items)
    assert abs(alone.energy_eV[0] - reference["energy"][0, 0]) > 1e-3  # truly another model
    energies = np.array([reference["energy"][0, :1], alone.energy_eV])
    np.testing.assert_allclose(out.energy_eV, energies.mean(0), rtol=1e-6)
    np.testing.assert_allclose(out.energy_std_eV, energies.std(0), rtol=1e-4)
    forces = np.array([reference["forces"][0, atoms], alone.forces_eV_per_A])
    np.testing.assert_allclose(out.forces_eV_per_A, forces.mean(0), atol=2e-3)
    np.testing.assert_allclose(out.forces_std_eV_per_A, forces.std(0), atol=2e-3)


FINITE_DIFFERENCES = r"""
import json, sys
from pathlib import Path

import numpy as np
from ase.io import read

from mlff_distill.teachers.fennol_ensemble import FennolEnsembleTeacher, fennol_inputs, largest_molecules

molecule, box = read(sys.argv[1], ":")
teacher = FennolEnsembleTeacher([Path(p) for p in sys.argv[2:]], "fd", batch_size=64, float64=True)
h = 1e-4  # Angstrom
displaced = []
for atom in range(len(molecule)):
    for axis in range(3):
        for sign in (1, -1):
            copy = molecule.copy()
            copy.positions[atom, axis] += sign * h
            displaced.append(copy)
energy = teacher.compute(displaced).energy_eV.reshape(len(molecule), 3, 2)
fd_forces = -(energy[..., 0] - energy[..., 1]) / (2 * h)
forces = teacher.compute([molecule]).forces_eV_per_A

eps = 1e-5  # symmetric strain, as in ase.calculators.fd.calculate_numerical_stress
strained = []
for i, j in [(0, 0), (1, 1), (2, 2), (1, 2), (0, 2), (0, 1)]:
    for sign in (1, -1):
        strain = np.eye(3)
        strain[i, j] += sign * eps / (1 if i == j else 2)
        strain[j, i] = strain[i, j]
        copy = box.copy()
        copy.set_cell(box.cell.array @ strain, scale_atoms=True)
        strained.append(copy)
# with stress: the strained cells' energies come from the function compiled for the stress below
energy = teacher.compute(strained, compute_stress=True).energy_eV.reshape(6, 2)
fd_voigt = (energy[:, 0] - energy[:, 1]) / (2 * eps * box.get_volume())
stress = teacher.compute([box], compute_stress=True).stress_eV_per_A3[0]
print(json.dumps({"forces": forces.tolist(), "fd_forces": fd_forces.tolist(),
                  "stress": stress.tolist(), "fd_voigt": fd_voigt.tolist()}))
"""


def test_forces_and_stress_are_finite_difference_derivatives(models_dir, tmp_path):
    """Float64: forces are minus the energy gradient, stress the strain derivative over volume."""
    from ase.io import write

    items = structures()
    write(tmp_path / "fd.extxyz", items[:2])  # rattled ethanol, water box
    files = [str(p) for p in ani1x_files(models_dir)[:2]]
    done = subprocess.run(
        [sys.executable, "-c", FINITE_DIFFERENCES, str(tmp_path / "fd.extxyz"), *files],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    result = json.loads(done.stdout.strip().splitlines()[-1])
    np.testing.assert_allclose(result["forces"], result["fd_forces"], atol=1e-5)
    stress = np.array(result["stress"])
    np.testing.assert_allclose(stress, stress.T, atol=1e-9)
    voigt = stress.flat[[0, 4, 8, 5, 2, 1]]
    np.testing.assert_allclose(voigt, result["fd_voigt"], atol=1e-7)
    assert np.abs(voigt).max() > 1e-3


def test_reserved_capacity_holds_every_later_batch(models_dir):
    """After reserve_capacity on all the molecules, no batch of them grows FeNNol's padded sizes
    (each growth is a JAX recompilation); without it, batches in this order do."""
    rng = np.random.default_rng(0)
    names = ["H2O", "CH4", "NH3", "CH3OH", "CH3CONH2", "HCOOH", "C6H6", "CH3CH2OH"]
    molecules = []
    for name in names:  # small to large: each batch needs more than the last
        for _ in range(6):
            atoms = molecule(name)
            atoms.positions += rng.normal(scale=0.05, size=atoms.positions.shape)
            molecules.append(atoms)
    assert len(largest_molecules(molecules, 4)) == 1 + 4  # by atoms, and by each of H, C, N, O

    def growths(reserve: bool) -> int:
        teacher = FennolEnsembleTeacher(ani1x_files(models_dir)[:1], name="ani1x-0", batch_size=4)
        if reserve:
            teacher.reserve_capacity(molecules)
        model = teacher.stacks[0].model
        count, state = 0, repr(model.preproc_state)
        for start in range(0, len(molecules), 4):
            model.preprocess(**fennol_inputs(molecules[start : start + 4], np.float32))
            count, state = count + (repr(model.preproc_state) != state), repr(model.preproc_state)
        return count

    assert growths(reserve=False) >= 3
    assert growths(reserve=True) == 0


CACHED_CALL = """
import json, sys
import jax
from ase.build import molecule
from mlff_distill.teachers.fennol_ensemble import FennolEnsembleTeacher
events = []
jax.monitoring.register_event_listener(lambda event, **kwargs: events.append(event))
teacher = FennolEnsembleTeacher(sys.argv[1:], name="ani1x")
energy = float(teacher.compute([molecule("CH3CH2OH")]).energy_eV[0])
print(json.dumps({"energy": energy, "hits": events.count("/jax/compilation_cache/cache_hits")}))
"""


def test_a_second_process_reads_the_compiled_teacher_from_the_user_cache(models_dir, tmp_path):
    """The teacher's compiled programs go to $MLFF_DISTILL_CACHE/jax-cache, and a later process that
    loads the same teacher finds them there instead of compiling them again."""
    env = {**os.environ, "MLFF_DISTILL_CACHE": str(tmp_path)}
    env.pop("JAX_COMPILATION_CACHE_DIR", None)
    runs = []
    for _ in range(2):
        done = subprocess.run(
            [sys.executable, "-c", CACHED_CALL, *map(str, ani1x_files(models_dir)[:2])],
            capture_output=True,
            text=True,
            timeout=300,
            env=env,
        )
        assert done.returncode == 0, done.stderr[-3000:]
        runs.append(json.loads(done.stdout.strip().splitlines()[-1]))
    assert any((tmp_path / "jax-cache").iterdir())
    assert runs[0]["hits"] == 0 and runs[1]["hits"] > 0
    assert runs[1]["energy"] == runs[0]["energy"]
