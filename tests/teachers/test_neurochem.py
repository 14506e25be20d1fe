"""The ANI-1x ensemble converted from torchani's NeuroChem files (`mlff_distill.teachers.neurochem`).

* The readers on the real files: shapes and known values.
* The converted ``.fnx`` files against FeNNol-PMC's own ANI-1x files (../shared/teachers or
  ``$MLFF_DISTILL_MODELS_DIR``): same description and weights, and the same energies and forces
  for all 8 members on molecules and on a periodic water box, in float64.
* One member against a plain NumPy evaluation of NeuroChem's AEV and networks, which needs no
  FeNNol-PMC file, so the conversion is checked on a fresh machine too.
"""

from __future__ import annotations

import itertools
from pathlib import Path

import numpy as np
import pytest
from ase import Atoms
from ase.build import molecule
from ase.units import Hartree

from mlff_distill.teachers import neurochem
from mlff_distill.teachers.base import default_cache_dir
from mlff_distill.teachers.fennol_ensemble import fennol_inputs
from mlff_distill.teachers.neurochem import (
    AEV_PARAMS_FILE,
    SELF_ENERGIES_FILE,
    ani1x_cache_dir,
    build_ani1x_fnx,
    read_aev_params,
    read_network,
    read_self_energies,
    torchani_resource_dir,
)

ENERGY_TOL_EV_PER_ATOM = 1e-5
FORCE_TOL_EV_PER_A = 1e-4
MOLECULES = ("CH3CH2OH", "C6H6", "CH3CONH2", "H2O")


@pytest.fixture(scope="module")
def resource_dir() -> Path:
    try:
        return torchani_resource_dir()
    except FileNotFoundError as error:
        pytest.skip(str(error))


@pytest.fixture(scope="module")
def reference_dir(models_dir) -> Path:
    """FeNNol-PMC's ANI1X folder in the models directory (conftest.py)."""
    folder = models_dir / "fennol-pmc" / "ANI1X"
    missing = [name for name in neurochem.ani1x_file_names() if not (folder / name).is_file()]
    if missing:
        pytest.skip(f"FeNNol-PMC's ANI1X files {missing} not found in {folder}")
    return folder


@pytest.fixture(scope="module")
def x64():
    """float64 JAX for this module only; the previous setting is restored afterwards."""
    import jax

    previous = jax.config.jax_enable_x64
    jax.config.update("jax_enable_x64", True)
    yield
    jax.config.update("jax_enable_x64", previous)


@pytest.fixture(scope="module")
def converted_files(x64, resource_dir, tmp_path_factory) -> list[Path]:
    return build_ani1x_fnx(tmp_path_factory.mktemp("cache"), resource_dir)


# ----------------------------------------------------------------------------- structures


def _molecules() -> list[Atoms]:
    structures = []
    for seed, name in enumerate(MOLECULES):
        atoms = molecule(name)
        atoms.rattle(stdev=0.05, seed=seed)
        structures.append(atoms)
    return structures


def _water_box(edge: float = 6.2) -> Atoms:
    """8 randomly oriented, rattled H2O on a 2x2x2 grid in a cubic cell (about 1 g/cm^3)."""
    rng = np.random.default_rng(11)
    box = Atoms(cell=[edge] * 3, pbc=True)
    for corner in itertools.product(range(2), repeat=3):
        water = molecule("H2O")
        water.translate(-water.get_center_of_mass())
        water.euler_rotate(*rng.uniform(0, 360, 3), center=(0, 0, 0))
        water.translate((np.array(corner) + 0.5) * edge / 2)
        box += water
    box.rattle(stdev=0.05, seed=3)
    box.wrap()
    return box


def _ensemble_energy_forces(files: list[Path], structures: list[Atoms]):
    """Energies [member, structure] (eV) and forces [member, atom, 3] (eV/Angstrom), float64.

    The members' weights are stacked and evaluated with one ``jax.vmap``. Structures are either
    all molecules or a single periodic cell.
    """
    import jax
    import jax.numpy as jnp
    from fennol import FENNIX

    models = [FENNIX.load(str(path)) for path in files]
    first = models[0]
    assert first.energy_unit == "Ha"
    variables = jax.tree_util.tree_map(lambda *leaves: jnp.stack(leaves), *[m.variables for m in models])
    inputs = fennol_inputs(structures, np.float64)
    processed = first.preprocess(**inputs)
    energy, forces, _ = jax.jit(jax.vmap(first._energy_and_forces, in_axes=(0, None)))(variables, processed)
    energy, forces = np.asarray(energy), np.asarray(forces)
    assert energy.dtype == np.float64 and forces.dtype == np.float64
    return energy * Hartree, forces * Hartree


@pytest.fixture(scope="module")
def converted_results(converted_files):
    return {
        "molecules": _ensemble_energy_forces(converted_files, _molecules()),
        "water_box": _ensemble_energy_forces(converted_files, [_water_box()]),
    }


# ----------------------------------------------------------------------------- readers


def test_read_aev_params(resource_dir):
    params = read_aev_params(resource_dir / AEV_PARAMS_FILE)
    assert params["Rcr"] == 5.2 and params["Rca"] == 3.5
    assert params["Atyp"] == ["H", "C", "N", "O"]
    assert params["EtaR"].tolist() == [16.0] and params["EtaA"].tolist() == [8.0]
    assert params["Zeta"].tolist() == [32.0]
    assert params["ShfR"].shape == (16,) and params["ShfR"][0] == 0.9
    assert params["ShfA"].tolist() == [0.9, 1.55, 2.2, 2.85]
    np.testing.assert_allclose(params["ShfZ"], (np.arange(8) + 0.5) * np.pi / 8, atol=1e-7)
    assert neurochem.ani_aev_options(params) == {
        "radial_eta": 16.0,
        "angular_eta": 8.0,
        "radial_dist_divisions": 16,
        "angular_dist_divisions": 4,
        "zeta": 32.0,
        "angle_sections": 8,
        "radial_start": 0.9,
        "angular_start": 0.9,
    }


def test_read_self_energies(resource_dir):
    energies = read_self_energies(resource_dir / SELF_ENERGIES_FILE)
    assert list(energies) == ["H", "C", "N", "O"]
    assert energies["H"] == -0.600952980000
    assert energies["C"] == -38.08316124
    assert energies["N"] == -54.7077577
    assert energies["O"] == -75.19446356


def test_read_network(resource_dir):
    sizes = {
        "H": [384, 160, 128, 96, 1],
        "C": [384, 144, 112, 96, 1],
        "N": [384, 128, 112, 96, 1],
        "O": [384, 128, 112, 96, 1],
    }
    for index in (0, 7):
        for symbol, widths in sizes.items():
            layers = read_network(resource_dir / f"train{index}" / "networks" / f"ANN-{symbol}.nnf")
            assert [w.shape for w, _, _ in layers] == list(zip(widths[:-1], widths[1:]))
            assert [b.shape for _, b, _ in layers] == [(n,) for n in widths[1:]]
            assert [act for _, _, act in layers] == ["partial(celu, alpha=0.1)"] * 3 + ["identity"]
            assert all(w.dtype == np.float32 and np.isfinite(w).all() for w, _, _ in layers)
    # wparam is stored [out, in]: the first numbers of the file are the first output's row
    nnf = resource_dir / "train0" / "networks" / "ANN-H.nnf"
    raw = np.fromfile(nnf.parent / "ANN-H.nnf-l1.wparam", dtype="<f4")
    np.testing.assert_array_equal(read_network(nnf)[0][0][:, 0], raw[:384])


def _small_wheel(path: Path) -> tuple[Path, str]:
    """A zip laid out as the torchani 2.2.4 wheel (two NeuroChem files), and its SHA-256."""
    import hashlib
    import zipfile

    with zipfile.ZipFile(path, "w") as archive:
        archive.writestr(f"{neurochem.RESOURCE_SUBPATH}/{AEV_PARAMS_FILE}", "Rcr = 5.2\n")
        archive.writestr(f"{neurochem.RESOURCE_SUBPATH}/train0/networks/ANN-H.nnf", b"net")
        archive.writestr("torchani/__init__.py", "")
    return path, hashlib.sha256(path.read_bytes()).hexdigest()


def test_wheel_resources_are_checked_then_extracted_whole(tmp_path):
    wheel, digest = _small_wheel(tmp_path / "torchani.whl")
    target = tmp_path / "cache" / "ani-1x_8x"
    with pytest.raises(ValueError, match="SHA-256"):
        neurochem.extract_wheel_resources(wheel, target, sha256="0" * 64)
    assert not (tmp_path / "cache").exists()  # checked before anything is written
    assert neurochem.extract_wheel_resources(wheel, target, sha256=digest) == target
    assert (target / AEV_PARAMS_FILE).read_text() == "Rcr = 5.2\n"
    assert (target / "train0" / "networks" / "ANN-H.nnf").read_bytes() == b"net"
    # a second extraction (another process) keeps the copy in place
    assert neurochem.extract_wheel_resources(wheel, target, sha256=digest) == target


def test_resources_come_from_the_cache_when_torchani_does_not_ship_them(monkeypatch, tmp_path):
    import importlib.metadata

    def missing(name):
        raise importlib.metadata.PackageNotFoundError(name)

    monkeypatch.setattr(importlib.metadata, "distribution", missing)
    wheel, digest = _small_wheel(tmp_path / "torchani.whl")
    cached = neurochem.extract_wheel_resources(wheel, tmp_path / neurochem.RESOURCE_CACHE_SUBDIR, sha256=digest)
    assert torchani_resource_dir(tmp_path) == cached  # found there: nothing downloaded


def test_cache_dirs(monkeypatch, tmp_path):
    monkeypatch.setenv("MLFF_DISTILL_CACHE", str(tmp_path))
    assert default_cache_dir() == tmp_path
    assert ani1x_cache_dir() == tmp_path / "teachers" / "torchani-ani1x"
    monkeypatch.delenv("MLFF_DISTILL_CACHE")
    monkeypatch.delenv("XDG_CACHE_HOME", raising=False)
    assert default_cache_dir() == Path.home() / ".cache" / "mlff-distill"


# ----------------------------------------------------------------------------- building


def test_build_writes_eight_members_and_skips_existing(converted_files):
    cache = converted_files[0].parent
    assert cache == ani1x_cache_dir(cache.parent.parent)
    assert [p.name for p in converted_files] == [f"ani1x_model{i}.fnx" for i in range(8)]
    stamps = [p.stat().st_mtime_ns for p in converted_files]
    assert build_ani1x_fnx(cache.parent.parent) == converted_files  # no files needed: none missing
    assert [p.stat().st_mtime_ns for p in converted_files] == stamps
    assert sorted(p.name for p in cache.iterdir()) == sorted(p.name for p in converted_files)


def test_description_and_weights_equal_fennol_pmc(converted_files, reference_dir):
    import jax
    from fennol import FENNIX

    for path in converted_files:
        ours, theirs = FENNIX.load(str(path)), FENNIX.load(str(reference_dir / path.name))
        assert ours._input_args == theirs._input_args
        assert ours.energy_terms == theirs.energy_terms == ["energy", "self_energy"]
        leaves = jax.tree_util.tree_leaves_with_path(ours.variables)
        reference = jax.tree_util.tree_leaves_with_path(theirs.variables)
        assert [p for p, _ in leaves] == [p for p, _ in reference]
        for (name, a), (_, b) in zip(leaves, reference):
            a, b = np.asarray(a), np.asarray(b)
            assert a.dtype == b.dtype and np.array_equal(a, b), jax.tree_util.keystr(name)


# ----------------------------------------------------------------------------- energies, forces


@pytest.mark.parametrize("system", ["molecules", "water_box"])
def test_energies_and_forces_match_fennol_pmc(system, converted_results, reference_dir):
    structures = _molecules() if system == "molecules" else [_water_box()]
    files = [reference_dir / name for name in neurochem.ani1x_file_names()]
    ref_energy, ref_forces = _ensemble_energy_forces(files, structures)
    energy, forces = converted_results[system]
    n_atoms = np.array([len(a) for a in structures])
    assert energy.shape == (8, len(structures)) and forces.shape == (8, n_atoms.sum(), 3)
    energy_error = np.abs(energy - ref_energy) / n_atoms
    force_error = np.abs(forces - ref_forces)
    print(
        f"{system}: max |dE|/atom {energy_error.max():.2e} eV, max |dF| {force_error.max():.2e} "
        f"eV/A (|F| up to {np.abs(ref_forces).max():.2f})"
    )
    assert energy_error.max() < ENERGY_TOL_EV_PER_ATOM
    assert force_error.max() < FORCE_TOL_EV_PER_A
    # the members differ from each other: the comparison is member by member
    assert np.ptp(ref_energy, axis=0).min() > 1e-4


# ----------------------------------------------------------------------------- NumPy NeuroChem


def _celu(x, alpha=0.1):
    return np.maximum(x, 0.0) + np.minimum(0.0, alpha * np.expm1(np.minimum(x, 0.0) / alpha))


def _neurochem_energy(resource_dir: Path, index: int, atoms: Atoms) -> float:
    """ANI energy (Hartree) of member ``index`` from NeuroChem's files, following torchani's AEV.

    Self energies are rounded to float32 as FeNNol's CHEMICAL_CONSTANT stores them (FeNNol-PMC's
    files too): up to 3.8e-6 Ha per O atom from the file's value.
    """
    p = read_aev_params(resource_dir / AEV_PARAMS_FILE)
    self_energies = read_self_energies(resource_dir / SELF_ENERGIES_FILE)
    order = {s: i for i, s in enumerate(p["Atyp"])}
    n_species = len(order)
    pair_of = np.zeros((n_species, n_species), dtype=int)
    for k, (a, b) in enumerate(zip(*np.triu_indices(n_species))):
        pair_of[a, b] = pair_of[b, a] = k
    networks = {s: read_network(resource_dir / f"train{index}" / "networks" / f"ANN-{s}.nnf") for s in order}

    def fc(d, rc):
        return 0.5 * np.cos(np.pi * d / rc) + 0.5

    symbols = atoms.get_chemical_symbols()
    kinds = np.array([order[s] for s in symbols])
    positions = atoms.positions
    if atoms.pbc.all():
        shifts = np.array(list(itertools.product((-1, 0, 1), repeat=3))) @ atoms.cell.array
        assert atoms.cell.array.diagonal().min() > p["Rcr"]  # one image layer is enough
    else:
        shifts = np.zeros((1, 3))
    images = (shifts[:, None, :] + positions[None]).reshape(-1, 3)
    image_kinds = np.tile(kinds, len(shifts))
    energy = 0.0
    for i, symbol in enumerate(symbols):
        vectors = images - positions[i]
        d = np.linalg.norm(vectors, axis=1)
        near = (d > 1e-8) & (d < p["Rcr"])
        radial = np.zeros((n_species, len(p["ShfR"])))
        terms = 0.25 * np.exp(-p["EtaR"] * (d[near, None] - p["ShfR"]) ** 2) * fc(d[near], p["Rcr"])[:, None]
        np.add.at(radial, image_kinds[near], terms)

        ang = (d > 1e-8) & (d < p["Rca"])
        v, r, k = vectors[ang], d[ang], image_kinds[ang]
        j1, j2 = np.triu_indices(len(r), 1)
        cos = np.sum(v[j1] * v[j2], axis=1) / (r[j1] * r[j2])
        theta = np.arccos(0.95 * cos)
        f1 = ((1 + np.cos(theta[:, None] - p["ShfZ"])) / 2) ** p["Zeta"]
        f2 = np.exp(-p["EtaA"] * ((r[j1] + r[j2])[:, None] / 2 - p["ShfA"]) ** 2)
        terms = 2 * f2[:, :, None] * f1[:, None, :] * (fc(r[j1], p["Rca"]) * fc(r[j2], p["Rca"]))[:, None, None]
        angular = np.zeros((n_species * (n_species + 1) // 2, len(p["ShfA"]), len(p["ShfZ"])))
        np.add.at(angular, pair_of[k[j1], k[j2]], terms)

        x = np.concatenate([radial.ravel(), angular.ravel()])
        for weight, bias, activation in networks[symbol]:
            x = x @ weight.astype(np.float64) + bias
            if activation != "identity":
                x = _celu(x)
        energy += float(x[0]) + float(np.float32(self_energies[symbol]))
    return energy


@pytest.mark.parametrize("system", ["molecules", "water_box"])
def test_converted_member_matches_numpy_neurochem(system, converted_results, resource_dir):
    structures = _molecules() if system == "molecules" else [_water_box()]
    energy, _ = converted_results[system]
    for index in (0, 5):
        for k, atoms in enumerate(structures):
            expected = _neurochem_energy(resource_dir, index, atoms) * Hartree
            error = abs(energy[index, k] - expected) / len(atoms)
            print(f"numpy {system} {index} {atoms.get_chemical_formula()}: {error:.2e} eV/atom")
            assert error < ENERGY_TOL_EV_PER_ATOM, (index, atoms.get_chemical_formula(), error)


def test_members_agree_so_the_weight_layout_is_right(converted_results):
    """Needs no FeNNol-PMC file. Read with the wrong [in, out] layout, the 8 members disagree by
    45-1100 mHa on these molecules; read right, by under 1 mHa."""
    energy, _ = converted_results["molecules"]
    spread_mHa = energy.std(axis=0) / Hartree * 1000
    print("ensemble std (mHa):", np.round(spread_mHa, 3))
    assert spread_mHa.max() < 5.0
    water_Ha = energy[:, MOLECULES.index("H2O")].mean() / Hartree
    assert -76.5 < water_Ha < -76.3  # wB97X/6-31G(d) water is about -76.38 Ha
