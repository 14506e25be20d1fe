"""Build the ANI-1x ensemble as FeNNol models from NeuroChem's weight files (a wheel on the package index).

The ``torchani==2.2.4`` wheel ships the 8 ANI-1x networks (H, C, N, O) in NeuroChem's own format
under ``torchani/resources/ani-1x_8x/``:

* ``rHCNO-5.2R_16-3.5A_a4-8.params``: the atomic environment vector (AEV) settings. Distances
  (``Rcr``, ``Rca``, ``ShfR``, ``ShfA``) in Angstrom, ``EtaR`` and ``EtaA`` in 1/Angstrom^2,
  ``ShfZ`` in radians, ``Zeta`` dimensionless.
* ``sae_linfit.dat``: self atomic energies in Hartree, one ``symbol,index=value`` a line.
* ``train{0..7}/networks/ANN-{H,C,N,O}.nnf``: one network per species. The ``.nnf`` file is a
  short size header, ``=``, a newline, then bz2-compressed text naming the layers (``nodes``,
  ``blocksize`` = input size, ``activation`` code, weight and bias file names). Each layer's
  ``-l{k}.wparam`` holds ``nodes * blocksize`` little-endian float32 numbers stored row-major as
  ``[out, in]`` (as torch.nn.Linear.weight), ``-l{k}.bparam`` the ``nodes`` biases.
  Activation codes: 9 = CELU(alpha=0.1), 6 = identity (output layer), 5 = Gaussian.

This module reads those files (that torchani release is never imported: it does not import on
current setuptools; `torchani_resource_dir` finds them) and writes FeNNol ``.fnx`` models whose
description mirrors FeNNol-PMC's ANI-1x files (github.com/thomasple/FeNNol-PMC, ANI/ANI1X): an ``ANI_AEV`` embedding, a
``SPECIES_INDEX_NET`` energy (Hartree) and a ``CHEMICAL_CONSTANT`` self energy (Hartree).
"""

from __future__ import annotations

import bz2
import hashlib
import importlib.metadata
import os
import re
import subprocess
import sys
import tempfile
import zipfile
from collections import OrderedDict
from pathlib import Path

import numpy as np

from mlff_distill.teachers.base import default_cache_dir

TORCHANI_REQUIREMENT = "torchani==2.2.4"
# The PyPI wheel of that release (sha256 as PyPI lists it): the NeuroChem files are read from it.
TORCHANI_WHEEL = "torchani-2.2.4-py3-none-any.whl"
TORCHANI_WHEEL_SHA256 = "de99afb38aeee9bf8553e58c468539ed41baf6b217833c2fc90429ad4261a02d"
RESOURCE_SUBPATH = "torchani/resources/ani-1x_8x"
AEV_PARAMS_FILE = "rHCNO-5.2R_16-3.5A_a4-8.params"
SELF_ENERGIES_FILE = "sae_linfit.dat"
N_MEMBERS = 8
CACHE_SUBDIR = Path("teachers") / "torchani-ani1x"
RESOURCE_CACHE_SUBDIR = Path("teachers") / "torchani-2.2.4" / "ani-1x_8x"

# NeuroChem activation codes -> activation strings (FeNNol names for 9 and 6).
CELU = "partial(celu, alpha=0.1)"
IDENTITY = "identity"
ACTIVATIONS = {9: CELU, 6: IDENTITY, 5: "gaussian"}


def torchani_resource_dir(cache: str | Path | None = None) -> Path:
    """The ``ani-1x_8x`` folder of NeuroChem files: that of an installed ``torchani==2.2.4`` (found
    without importing it), else the copy in ``<cache>/teachers/torchani-2.2.4/`` (``cache`` None:
    `default_cache_dir`), made on first use from the release's wheel, which pip downloads from the
    package index and whose SHA-256 is checked (`extract_wheel_resources`).

    The project installs torchani 2.9 (the ANI runtime the speed table times), which no longer
    ships these files, so the wheel is the usual source."""
    try:
        installed = Path(importlib.metadata.distribution("torchani").locate_file(RESOURCE_SUBPATH))
    except importlib.metadata.PackageNotFoundError:
        installed = None
    if installed is not None and (installed / AEV_PARAMS_FILE).is_file():
        return installed
    target = (Path(cache) if cache is not None else default_cache_dir()) / RESOURCE_CACHE_SUBDIR
    if not (target / AEV_PARAMS_FILE).is_file():
        with tempfile.TemporaryDirectory() as download:
            extract_wheel_resources(_download_wheel(Path(download)), target)
    return target


def _download_wheel(folder: Path) -> Path:
    """``pip download`` the torchani 2.2.4 wheel (no dependencies) into ``folder``."""
    command = [sys.executable, "-m", "pip", "download", "--quiet", "--no-deps", "--only-binary=:all:"]
    done = subprocess.run([*command, "--dest", str(folder), TORCHANI_REQUIREMENT], capture_output=True, text=True)
    wheel = folder / TORCHANI_WHEEL
    if done.returncode != 0 or not wheel.is_file():
        raise FileNotFoundError(
            f"the ANI-1x NeuroChem files are neither installed nor cached, and `pip download "
            f"{TORCHANI_REQUIREMENT}` failed ({done.stderr.strip()[-500:]}). Download {TORCHANI_WHEEL} from "
            f"the package index where there is network and put its {RESOURCE_SUBPATH} folder in the cache."
        )
    return wheel


def extract_wheel_resources(wheel: Path, target: Path, sha256: str = TORCHANI_WHEEL_SHA256) -> Path:
    """Copy the ``ani-1x_8x`` folder out of the torchani 2.2.4 ``wheel`` into ``target``, after
    checking the wheel's SHA-256 against ``sha256``. The folder is written beside ``target`` and
    renamed into place, so ``target`` is either complete or absent; where another process placed
    it first, its copy is kept."""
    digest = hashlib.sha256(Path(wheel).read_bytes()).hexdigest()
    if digest != sha256:
        raise ValueError(f"{wheel}: SHA-256 {digest}, expected {sha256}; not reading weights from it")
    target.parent.mkdir(parents=True, exist_ok=True)
    prefix = RESOURCE_SUBPATH + "/"
    with tempfile.TemporaryDirectory(dir=target.parent, prefix=f".{target.name}.") as partial:
        with zipfile.ZipFile(wheel) as archive:
            members = [name for name in archive.namelist() if name.startswith(prefix) and not name.endswith("/")]
            if not members:
                raise ValueError(f"{wheel} has no {RESOURCE_SUBPATH} folder")
            for name in members:
                path = Path(partial, "files", name[len(prefix) :])
                path.parent.mkdir(parents=True, exist_ok=True)
                path.write_bytes(archive.read(name))
        try:
            os.rename(Path(partial, "files"), target)
        except OSError:
            if not (target / AEV_PARAMS_FILE).is_file():
                raise
    return target


def read_aev_params(path: str | Path) -> dict:
    """NeuroChem's AEV settings.

    Returns ``Rcr``, ``Rca`` (radial / angular cutoffs, Angstrom, float), ``EtaR``, ``EtaA``
    (1/Angstrom^2), ``ShfR``, ``ShfA`` (Angstrom), ``ShfZ`` (radians), ``Zeta`` (float64 arrays),
    ``Atyp`` (species order, list of symbols) and ``TM`` (int), as present in the file.
    """
    params: dict = {}
    for line in Path(path).read_text().splitlines():
        if "=" not in line:
            continue
        name, value = (part.strip() for part in line.split("=", 1))
        if name in ("Rcr", "Rca"):
            params[name] = float(value)
        elif name in ("EtaR", "ShfR", "Zeta", "ShfZ", "EtaA", "ShfA"):
            params[name] = np.array([float(x) for x in value.strip("[]").split(",")])
        elif name == "Atyp":
            params[name] = [x.strip() for x in value.strip("[]").split(",")]
        elif name == "TM":
            params[name] = int(value)
    missing = {"Rcr", "Rca", "EtaR", "ShfR", "Zeta", "ShfZ", "EtaA", "ShfA", "Atyp"} - set(params)
    if missing:
        raise ValueError(f"{path}: missing AEV settings {sorted(missing)}")
    return params


def read_self_energies(path: str | Path) -> dict[str, float]:
    """Self atomic energies in Hartree by chemical symbol, in the file's species-index order."""
    entries = []
    for line in Path(path).read_text().splitlines():
        if not line.strip():
            continue
        key, value = line.split("=", 1)
        symbol, index = key.split(",")
        entries.append((int(index), symbol.strip(), float(value)))
    return {symbol: value for _, symbol, value in sorted(entries)}


def _nnf_text(nnf_path: Path) -> str:
    """The layer description inside a ``.nnf`` file: skip the size header, then bz2-decompress."""
    raw = nnf_path.read_bytes()
    start = raw.index(b"=") + 2  # header "<size>=\n"
    return bz2.decompress(raw[start:]).rstrip(b"\x00").decode("ascii").strip()


def read_network(nnf_path: str | Path) -> list[tuple[np.ndarray, np.ndarray, str]]:
    """One atomic network: ``[(weight [in, out] float32, bias [out] float32, activation), ...]``.

    Activations are FeNNol strings: ``"partial(celu, alpha=0.1)"`` for NeuroChem code 9,
    ``"identity"`` for 6 (the output layer), ``"gaussian"`` for 5. The network maps an AEV
    (dimensionless) to the atom's energy contribution in Hartree.
    """
    nnf_path = Path(nnf_path)
    text = _nnf_text(nnf_path)
    match = re.search(r"inputsize\s*=\s*(\d+)\s*;", text)
    if match is None:
        raise ValueError(f"{nnf_path}: no inputsize")
    in_size = int(match.group(1))
    layers = []
    for chunk in re.split(r"\blayer\s*\[", text)[1:]:
        fields = dict(re.findall(r"(\w+)\s*=\s*([^;]*);", chunk))
        n_in, n_out = int(fields["blocksize"]), int(fields["nodes"])
        if n_in != in_size:
            raise ValueError(
                f"{nnf_path}: layer {len(layers) + 1} takes {n_in} inputs, the previous layer gives {in_size}"
            )
        code = int(fields["activation"])
        if code not in ACTIVATIONS:
            raise NotImplementedError(f"{nnf_path}: NeuroChem activation {code}")
        weight = _read_floats(nnf_path.parent, fields["weights"], n_in * n_out)
        bias = _read_floats(nnf_path.parent, fields["biases"], n_out)
        # stored row-major [out, in]; FeNNol's Dense kernel is [in, out]
        layers.append((np.ascontiguousarray(weight.reshape(n_out, n_in).T), bias, ACTIVATIONS[code]))
        in_size = n_out
    if not layers:
        raise ValueError(f"{nnf_path}: no layers")
    return layers


def _read_floats(folder: Path, spec: str, count: int) -> np.ndarray:
    """The float32 numbers of ``FILE:<name>[<count>]`` in ``folder``, checking the count."""
    match = re.fullmatch(r"\s*FILE:(.+)\[(\d+)\]\s*", spec)
    if match is None or int(match.group(2)) != count:
        raise ValueError(f"unexpected parameter file entry {spec!r} (expected {count} numbers)")
    values = np.fromfile(folder / match.group(1), dtype="<f4")
    if values.size != count:
        raise ValueError(f"{folder / match.group(1)}: {values.size} numbers, expected {count}")
    return values.astype(np.float32)


def ani_aev_options(params: dict) -> dict:
    """FeNNol ``ANI_AEV`` options equivalent to NeuroChem's AEV settings.

    FeNNol spaces the shifts evenly: ``ShfR = linspace(radial_start, Rcr, n + 1)[:-1]``,
    ``ShfA = linspace(angular_start, Rca, n + 1)[:-1]`` and
    ``ShfZ = linspace(0, pi, n + 1)[:-1] + pi / (2 n)``; a single ``EtaR``, ``EtaA`` and ``Zeta``.
    The cutoffs themselves are the model's ``cutoff`` (Rcr) and the angular graph filter (Rca).
    Raises ValueError where the settings do not fit that form.
    """
    for name in ("EtaR", "EtaA", "Zeta"):
        if len(params[name]) != 1:
            raise ValueError(f"FeNNol's ANI_AEV takes one {name}, the file has {params[name]}")
    shf_r, shf_a, shf_z = params["ShfR"], params["ShfA"], params["ShfZ"]
    n_r, n_a, n_z = len(shf_r), len(shf_a), len(shf_z)
    expected = {
        "ShfR": np.linspace(shf_r[0], params["Rcr"], n_r + 1)[:-1],
        "ShfA": np.linspace(shf_a[0], params["Rca"], n_a + 1)[:-1],
        "ShfZ": np.linspace(0.0, np.pi, n_z + 1)[:-1] + np.pi / (2 * n_z),
    }
    for name, values in expected.items():
        # the file stores 8 significant digits
        if not np.allclose(params[name], values, rtol=1e-6, atol=1e-6):
            raise ValueError(f"{name} = {params[name]} is not FeNNol's even spacing {values}")
    return {
        "radial_eta": float(params["EtaR"][0]),
        "angular_eta": float(params["EtaA"][0]),
        "radial_dist_divisions": n_r,
        "angular_dist_divisions": n_a,
        "zeta": float(params["Zeta"][0]),
        "angle_sections": n_z,
        "radial_start": float(shf_r[0]),
        "angular_start": float(shf_a[0]),
    }


def ani1x_description(aev_params: dict, self_energies: dict[str, float], hidden_neurons: dict[str, list[int]]) -> dict:
    """The FENNIX description (cutoff, modules, preprocessing, energy terms) of one ANI member.

    Mirrors FeNNol-PMC's ANI-1x files: energies in Hartree, cutoff Rcr, angular graph Rca.
    """
    species = list(aev_params["Atyp"])
    embedding = {
        "module_name": "ANI_AEV",
        **ani_aev_options(aev_params),
        "embedding_key": "ani_aev",
        "graph_angle_key": "graph_angle",
        "graph_key": "graph",
        "species_order": species,
    }
    energy = {
        "module_name": "SPECIES_INDEX_NET",
        "activation": CELU,
        "hidden_neurons": {s: list(hidden_neurons[s]) for s in species},
        "input_key": "ani_aev",
        "output_dim": 1,
        "species_index_key": "species_index",
        "use_bias": True,
    }
    self_energy = {
        "module_name": "CHEMICAL_CONSTANT",
        "trainable": True,
        "value": {s: float(self_energies[s]) for s in species},
    }
    return {
        "cutoff": float(aev_params["Rcr"]),
        "energy_unit": "Ha",
        "energy_terms": ["energy", "self_energy"],
        "modules": OrderedDict([("embedding", embedding), ("energy", energy), ("self_energy", self_energy)]),
        "preprocessing": OrderedDict(
            [
                (
                    "graph_filter",
                    {"cutoff": float(aev_params["Rca"]), "graph_key": "graph_angle", "parent_graph": "graph"},
                ),
                ("graph_angular_extension", {"graph_key": "graph_angle"}),
                ("species_indexer", {"output_key": "species_index"}),
            ]
        ),
    }


def fennol_ani1x_member(resource_dir: str | Path | None, index: int, use_atom_padding=False):
    """ANI-1x member ``index`` (0..7) as a ``fennol.FENNIX`` model (energies in Hartree).

    ``resource_dir``: the ``ani-1x_8x`` folder; None means `torchani_resource_dir()`.
    Weights keep NeuroChem's float32 values; the self energies are stored as float32 as FeNNol's
    trainable ``CHEMICAL_CONSTANT`` does.
    """
    # FeNNol only when the files are built (heavy: it imports JAX)
    from fennol import FENNIX
    from fennol.utils.periodic_table import PERIODIC_TABLE, PERIODIC_TABLE_REV_IDX

    if not 0 <= index < N_MEMBERS:
        raise ValueError(f"ANI-1x member index {index} is not in 0..{N_MEMBERS - 1}")
    resource_dir = Path(resource_dir) if resource_dir is not None else torchani_resource_dir()
    aev_params = read_aev_params(resource_dir / AEV_PARAMS_FILE)
    self_energies = read_self_energies(resource_dir / SELF_ENERGIES_FILE)
    n_aev = _aev_size(aev_params)

    networks, hidden = {}, {}
    for symbol in aev_params["Atyp"]:
        nnf = resource_dir / f"train{index}" / "networks" / f"ANN-{symbol}.nnf"
        layers = read_network(nnf)
        activations = [act for _, _, act in layers]
        if activations != [CELU] * (len(layers) - 1) + [IDENTITY]:
            raise ValueError(f"{nnf}: activations {activations} differ from ANI-1x's CELU layers with a linear output")
        if layers[0][0].shape[0] != n_aev or layers[-1][0].shape[1] != 1:
            raise ValueError(
                f"{nnf}: maps {layers[0][0].shape[0]} inputs to {layers[-1][0].shape[1]} outputs, expected {n_aev} -> 1"
            )
        hidden[symbol] = [w.shape[1] for w, _, _ in layers[:-1]]
        networks[symbol] = {f"Layer_{k + 1}": {"kernel": w, "bias": b} for k, (w, b, _) in enumerate(layers)}

    constant = np.zeros(len(PERIODIC_TABLE), dtype=np.float32)
    for symbol, value in self_energies.items():
        constant[PERIODIC_TABLE_REV_IDX[symbol]] = value
    variables = {"params": {"energy": networks, "self_energy": {"constant": constant}}}
    description = ani1x_description(aev_params, self_energies, hidden)
    return FENNIX(**description, variables=variables, use_atom_padding=use_atom_padding)


def _aev_size(params: dict) -> int:
    """Length of the AEV: radial (species x ShfR) plus angular (species pairs x ShfA x ShfZ)."""
    n = len(params["Atyp"])
    return n * len(params["ShfR"]) + n * (n + 1) // 2 * len(params["ShfA"]) * len(params["ShfZ"])


def ani1x_cache_dir(cache: str | Path | None = None) -> Path:
    """Where the converted ANI-1x files live: ``<cache>/teachers/torchani-ani1x``."""
    return (Path(cache) if cache is not None else default_cache_dir()) / CACHE_SUBDIR


def ani1x_file_names() -> list[str]:
    """``ani1x_model0.fnx`` .. ``ani1x_model7.fnx``, the names FeNNol-PMC uses."""
    return [f"ani1x_model{i}.fnx" for i in range(N_MEMBERS)]


def build_ani1x_fnx(cache: str | Path | None = None, resource_dir: str | Path | None = None) -> list[Path]:
    """Write ``ani1x_model{0..7}.fnx`` into `ani1x_cache_dir` of ``cache`` (the user cache: None
    means `default_cache_dir`) and return their paths.

    ``resource_dir``: the NeuroChem files; None means `torchani_resource_dir` of the same cache,
    looked up only when a member is missing. Members already present are kept. Each file is
    written to a temporary file in the same folder, then renamed, so a reader never sees a
    partial file.
    """
    cache_dir = ani1x_cache_dir(cache)
    cache_dir.mkdir(parents=True, exist_ok=True)
    paths = []
    for index, name in enumerate(ani1x_file_names()):
        path = cache_dir / name
        if not path.is_file():
            resource_dir = resource_dir if resource_dir is not None else torchani_resource_dir(cache)
            model = fennol_ani1x_member(resource_dir, index)
            fd, tmp = tempfile.mkstemp(dir=cache_dir, prefix=f".{name}.", suffix=".tmp")
            os.close(fd)
            try:
                model.save(tmp)
                os.replace(tmp, path)
            except BaseException:
                Path(tmp).unlink(missing_ok=True)
                raise
        paths.append(path)
    return paths


__all__ = [
    "torchani_resource_dir",
    "read_aev_params",
    "read_self_energies",
    "read_network",
    "ani_aev_options",
    "ani1x_description",
    "fennol_ani1x_member",
    "build_ani1x_fnx",
    "ani1x_cache_dir",
    "ani1x_file_names",
    "TORCHANI_REQUIREMENT",
]
