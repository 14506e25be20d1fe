"""The Orb teacher with seeded random weights: gradients, stress, reproducibility, batching."""

import hashlib
import socket
from urllib.parse import urlparse

import numpy as np
import pytest
import torch
from ase import Atoms
from ase.build import bulk, molecule

from mlff_distill.teachers.orb import OrbTeacher, available_models

MODEL = "orb-v3-conservative-inf-omat"


@pytest.fixture(scope="module")
def teacher64() -> OrbTeacher:
    return OrbTeacher(MODEL, weights="random", seed=0, precision="float64", batch_size=2)


def rattled(atoms: Atoms, seed: int) -> Atoms:
    atoms.rattle(0.05, seed=seed)
    return atoms


def silicon() -> Atoms:
    return rattled(bulk("Si", cubic=True), seed=1)  # 8 atoms


def copper() -> Atoms:
    return rattled(bulk("Cu", cubic=True), seed=2)  # 4 atoms


def water() -> Atoms:
    return rattled(molecule("H2O"), seed=3)


def test_forces_are_minus_energy_gradient(teacher64):
    """Central differences along random directions d: dE/dh = -F . d."""
    h = 1e-4
    rng = np.random.default_rng(0)
    structures = [silicon(), water()]
    forces = np.split(teacher64.compute(structures).forces_eV_per_A, [len(structures[0])])
    analytic, displaced = [], []
    for atoms, force, n_directions in zip(structures, forces, (1, 2)):
        for _ in range(n_directions):
            direction = rng.normal(size=force.shape)
            analytic.append(-(force * direction).sum())
            for sign in (1, -1):
                copy = atoms.copy()
                copy.positions += sign * h * direction
                displaced.append(copy)
    energies = teacher64.compute(displaced).energy_eV.reshape(-1, 2)
    numerical = (energies[:, 0] - energies[:, 1]) / (2 * h)
    np.testing.assert_allclose(analytic, numerical, rtol=1e-6, atol=1e-8)
    assert np.abs(analytic).min() > 1e-2


def test_stress_is_strain_derivative_over_volume(teacher64):
    """ASE convention: sigma_ij = (1/V) dE/d eps_ij for r -> r (1 + eps), eps symmetric."""
    h = 1e-4
    rng = np.random.default_rng(1)
    atoms = copper()
    out = teacher64.compute([atoms, water()], compute_stress=True)
    stress = out.stress_eV_per_A3
    analytic, strained = [], []
    for _ in range(2):
        direction = rng.normal(size=(3, 3))
        direction = (direction + direction.T) / 2
        analytic.append(atoms.get_volume() * (stress[0] * direction).sum())
        for sign in (1, -1):
            copy = atoms.copy()
            copy.set_cell(atoms.cell.array @ (np.eye(3) + sign * h * direction), scale_atoms=True)
            strained.append(copy)
    energies = teacher64.compute(strained).energy_eV.reshape(-1, 2)
    numerical = (energies[:, 0] - energies[:, 1]) / (2 * h)
    np.testing.assert_allclose(analytic, numerical, rtol=1e-6, atol=1e-8)
    assert np.abs(analytic).min() > 1e-2
    np.testing.assert_array_equal(stress[0], stress[0].T)
    assert np.isnan(stress[1]).all()
    assert np.isnan(teacher64.compute([atoms]).stress_eV_per_A3).all()


def test_untrained_teacher_is_reproducible_from_seed(teacher64):
    structures = [water(), bulk("Cu")]
    again = OrbTeacher(MODEL, weights="random", seed=0, precision="float64")
    other = OrbTeacher(MODEL, weights="random", seed=1, precision="float64")
    first = teacher64.compute(structures)
    second = again.compute(structures)
    # The same seed gives the same weights to the bit (the checksum below). The outputs agree to
    # float64 rounding only: the first call in a process differs from every later one by up to
    # 7e-17 eV/A in a few force components, on one thread too (pytest-xdist may run this test first).
    np.testing.assert_allclose(first.energy_eV, second.energy_eV, rtol=1e-13, atol=0)
    np.testing.assert_allclose(first.forces_eV_per_A, second.forces_eV_per_A, rtol=0, atol=1e-14)
    assert again.identity.weights_sha256 == teacher64.identity.weights_sha256
    assert other.identity.weights_sha256 != teacher64.identity.weights_sha256
    assert not np.allclose(other.compute(structures).energy_eV, first.energy_eV)
    identity = teacher64.identity
    assert "untrained teacher" in identity.label and not identity.trained
    assert (identity.name, identity.kind, identity.source) == (f"orb/{MODEL}", "orb", "random(seed=0)")
    assert identity.conservative and identity.cutoff_A == 6.0 and identity.members == 1


def test_batched_equals_one_at_a_time(teacher64):
    """batch_size=2: molecules and cells share batches; output order is input order."""
    structures = [
        rattled(bulk("Si"), seed=4),
        water(),
        bulk("Cu"),
        molecule("CH4"),
        rattled(bulk("Cu", orthorhombic=True), seed=5),
    ]
    together = teacher64.compute(structures, compute_stress=True)
    alone = [teacher64.compute([atoms], compute_stress=True) for atoms in structures]
    np.testing.assert_allclose(together.energy_eV, [a.energy_eV[0] for a in alone], rtol=1e-10)
    np.testing.assert_allclose(
        together.forces_eV_per_A, np.concatenate([a.forces_eV_per_A for a in alone]), rtol=1e-8, atol=1e-12
    )
    np.testing.assert_allclose(
        together.stress_eV_per_A3, np.concatenate([a.stress_eV_per_A3 for a in alone]), rtol=1e-8, atol=1e-12
    )
    assert together.forces_eV_per_A.shape == (sum(len(a) for a in structures), 3)
    np.testing.assert_array_equal(together.energy_std_eV, 0.0)


@pytest.mark.parametrize("model", [MODEL, "orb-v3-direct-20-omat"])
def test_matches_orb_calculator(model):
    """Same energy, forces and 3x3 stress (order and sign) as orb-models' own ASE calculator."""
    from orb_models.forcefield.calculator import ORBCalculator

    teacher = OrbTeacher(model, weights="random", seed=0)
    atoms = rattled(bulk("Si"), seed=5)  # 2 atoms, non-orthogonal cell
    out = teacher.compute([atoms], compute_stress=True)
    atoms.calc = ORBCalculator(teacher._model, device="cpu")
    np.testing.assert_allclose(out.energy_eV[0], atoms.get_potential_energy(), rtol=1e-5)
    np.testing.assert_allclose(out.forces_eV_per_A, atoms.get_forces(), rtol=1e-4, atol=1e-6)
    np.testing.assert_allclose(out.stress_eV_per_A3[0], atoms.get_stress(voigt=False), rtol=1e-4, atol=1e-7)
    assert np.abs(out.stress_eV_per_A3[0] - np.diag(np.diag(out.stress_eV_per_A3[0]))).max() > 0
    assert teacher.identity.conservative == (model == MODEL)


def test_local_checkpoint_loads_through_orb_loader(tmp_path):
    model = "orb-d3-xs-v2"  # the smallest registry model: a 38 MB checkpoint
    random = OrbTeacher(model, weights="random", seed=2)
    path = tmp_path / "weights.ckpt"
    torch.save(random._model.state_dict(), path)
    teacher = OrbTeacher(model, checkpoint=str(path))
    structures = [copper(), water()]
    np.testing.assert_array_equal(teacher.compute(structures).energy_eV, random.compute(structures).energy_eV)
    identity = teacher.identity
    assert identity.trained and identity.source == str(path) and identity.label == f"orb/{model}"
    assert not identity.conservative
    assert identity.weights_sha256 == hashlib.sha256(path.read_bytes()).hexdigest()


def test_torch_global_state_is_kept(teacher64):
    torch.manual_seed(7)
    expected = torch.rand(3)
    torch.manual_seed(7)
    dtype, matmul = torch.get_default_dtype(), torch.get_float32_matmul_precision()
    teacher = OrbTeacher(MODEL, weights="random", seed=3, precision="float32-high")
    teacher.compute([water()])
    teacher64.compute([water()])
    assert (torch.get_default_dtype(), torch.get_float32_matmul_precision()) == (dtype, matmul)
    torch.testing.assert_close(torch.rand(3), expected, rtol=0, atol=0)


def test_unknown_model_names_valid_ones():
    with pytest.raises(ValueError, match="orb-v3-conservative-inf-omat"):
        OrbTeacher("orb-v9-imaginary", weights="random")
    assert {
        "orb-v3-conservative-20-omat",
        "orb-v3-direct-inf-mpa",
        "orb-v3-conservative-omol",
        "orb-v2",
        "orb-d3-v2",
    } <= set(available_models())
    assert "orb-v1" not in available_models()  # deprecated, no weights


def test_pretrained_offline_fails_with_clear_message(monkeypatch):
    from cached_path import find_latest_cached
    from cached_path.schemes import http
    from urllib3.util.retry import Retry

    url = available_models()[MODEL]
    if find_latest_cached(url) is not None:
        pytest.skip("weights are cached; nothing to download")
    try:
        socket.getaddrinfo(urlparse(url).hostname, 443)
        pytest.skip("weights host reachable; the test would download the weights")
    except OSError:
        pass

    class RetryWithoutBackoff(Retry):
        """cached_path's retries (5, each request), without the 2 + 4 + 8 + 16 s of sleep between them."""

        def get_backoff_time(self) -> float:
            return 0.0

    monkeypatch.setattr(http, "Retry", RetryWithoutBackoff)
    with pytest.raises(ConnectionError, match="could not be downloaded.*weights: random"):
        OrbTeacher(MODEL)
