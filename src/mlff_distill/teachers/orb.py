"""An Orb force field (orb-models 0.5.5) as a teacher.

Weights come from orb-models' pretrained registry by name (downloaded once into cached_path's
cache), from a local checkpoint, or are seeded random weights of the same architecture (an
"untrained teacher", for tests and pipeline runs without downloads). Every model is built by the
registry's own loader, so architecture and neighbour settings always match orb-models.

orb-models sets torch's global default dtype and float32 matmul precision; this teacher sets them
only while it loads or computes and restores them afterwards, so other torch code is unaffected.
"""

from __future__ import annotations

import hashlib
import inspect
import warnings
from contextlib import contextmanager
from pathlib import Path
from typing import Callable, Iterator, Sequence

import numpy as np
import torch
from ase import Atoms
from orb_models.forcefield import pretrained
from orb_models.forcefield.atomic_system import ase_atoms_to_atom_graphs
from orb_models.forcefield.base import batch_graphs
from orb_models.forcefield.forcefield_utils import torch_voigt_6_to_full_3x3_stress
from orb_models.forcefield.nn_util import ChargeSpinConditioner

from mlff_distill.teachers.base import TeacherIdentity, TeacherOutput, labels_in_batches

PRECISIONS = ("float32-high", "float32-highest", "float64")
# orb one-hot encodes atomic numbers into 118 classes (0..117), so Z = 1..117 are covered.
SPECIES = tuple(range(1, 118))


def available_models() -> dict[str, str]:
    """Names in orb-models' pretrained registry that have weights, and each one's weights URL."""
    models = {}
    for name, loader in pretrained.ORB_PRETRAINED_MODELS.items():
        url = inspect.signature(loader).parameters["weights_path"].default
        if url is not None:  # deprecated orb-v1 entries have no weights
            models[name] = url
    return models


class OrbTeacher:
    """Energies (eV), forces (eV/Angstrom) and stress (eV/Angstrom^3) from one Orb model."""

    handles_small_cells = True  # checked: a rattled 8-atom Si cell equals its 2x2x2 supercell
    handles_mixed_pbc = False

    def __init__(
        self,
        model: str,
        weights: str = "pretrained",
        seed: int = 0,
        checkpoint: str | None = None,
        precision: str = "float32-high",
        device: str = "cpu",
        batch_size: int = 8,
    ):
        models = available_models()
        if model not in models:
            raise ValueError(f"Unknown Orb model {model!r}; valid names: {', '.join(models)}")
        if weights not in ("pretrained", "random"):
            raise ValueError(f"weights must be 'pretrained' or 'random', not {weights!r}")
        if weights == "random" and checkpoint is not None:
            raise ValueError("Give either weights='random' or a checkpoint, not both")
        if precision not in PRECISIONS:
            raise ValueError(f"Unknown precision {precision!r}; valid: {', '.join(PRECISIONS)}")
        loader = pretrained.ORB_PRETRAINED_MODELS[model]
        self.batch_size = batch_size
        self._device = torch.device(device)
        self._precision = precision
        self._dtype = torch.float64 if precision == "float64" else torch.float32

        # Building draws from torch's generator: fork it, so the caller's random stream is kept.
        with _torch_precision(precision), torch.random.fork_rng(devices=[]), warnings.catch_warnings():
            warnings.filterwarnings("ignore", module="orb_models.utils")  # "global dtype" notes
            if weights == "random":
                self._model = _random_model(loader, seed, precision, device)
                source, sha256 = f"random(seed={seed})", _state_dict_sha256(self._model)
            else:
                if checkpoint:
                    path = Path(checkpoint).expanduser().resolve()
                    source = str(path)
                else:
                    path, source = _pretrained_weights(model, models[model]), models[model]
                self._model = loader(weights_path=str(path), device=device, precision=precision, compile=False)
                sha256 = _file_sha256(path)

        self._conservative = hasattr(self._model, "grad_forces_name")
        if self._conservative:
            self._keys = (self._model.energy_name, self._model.grad_forces_name, self._model.grad_stress_name)
        else:
            self._keys = ("energy", "forces", "stress" if self._model.has_stress else None)
        self._needs_charge_spin = isinstance(self._model.model.conditioner, ChargeSpinConditioner)
        self.identity = TeacherIdentity(
            name=f"orb/{model}",
            kind="orb",
            source=source,
            weights_sha256=sha256,
            cutoff_A=float(self._model.system_config.radius),
            species=SPECIES,
            conservative=self._conservative,
            trained=weights != "random",
            members=1,
            extra={
                "precision": precision,
                "device": device,
                "n_parameters": sum(p.numel() for p in self._model.parameters()),
            },
        )

    def compute(self, structures: Sequence[Atoms], compute_stress: bool = False) -> TeacherOutput:
        """Energies (eV), forces (eV/Angstrom) and, if asked, stress (eV/Angstrom^3, ASE sign).

        Molecules (pbc all False) and periodic cells may be mixed. Stress is NaN for molecules
        and for models without stress (the omol models). Models trained on OMol25 need
        ``atoms.info["charge"]`` and ``atoms.info["spin"]``.
        """
        with _torch_precision(self._precision):
            return labels_in_batches(
                structures, self.batch_size, lambda batch, _: self._compute_batch(batch), compute_stress
            )

    def _compute_batch(self, structures: Sequence[Atoms]) -> tuple[np.ndarray, ...]:
        """Energy [N] (eV), forces [M, 3] (eV/Angstrom), stress [N, 3, 3] (eV/Angstrom^3)."""
        if self._needs_charge_spin and any("charge" not in a.info or "spin" not in a.info for a in structures):
            raise ValueError(f"{self.identity.name} needs atoms.info['charge'] and ['spin']")
        graphs = [
            ase_atoms_to_atom_graphs(
                atoms,
                self._model.system_config,
                device=self._device,
                output_dtype=self._dtype,
                graph_construction_dtype=self._dtype,
            )
            for atoms in structures
        ]
        out = self._model.predict(batch_graphs(graphs))
        energy_key, forces_key, stress_key = self._keys
        energy = out[energy_key].detach().cpu().double().numpy().reshape(-1)
        forces = out[forces_key].detach().cpu().double().numpy()
        stress = np.full((len(structures), 3, 3), np.nan)  # labels_in_batches keeps periodic cells' only
        if stress_key is not None:
            full = torch_voigt_6_to_full_3x3_stress(out[stress_key].detach().reshape(-1, 6))
            stress = full.cpu().double().numpy()
        return energy, forces, stress


@contextmanager
def _torch_precision(precision: str) -> Iterator[None]:
    """Torch's default dtype and float32 matmul precision for ``precision``, restored on exit."""
    dtype, matmul = torch.get_default_dtype(), torch.get_float32_matmul_precision()
    try:
        torch.set_default_dtype(torch.float64 if precision == "float64" else torch.float32)
        torch.set_float32_matmul_precision("high" if precision == "float32-high" else "highest")
        yield
    finally:
        torch.set_default_dtype(dtype)
        torch.set_float32_matmul_precision(matmul)


def _random_model(loader: Callable, seed: int, precision: str, device: str) -> torch.nn.Module:
    """The loader's architecture with its initial weights drawn in float32 from ``seed``.

    The registry's loaders build the architecture, then call ``pretrained.load_model`` to read the
    weights; while this runs, that step is replaced by one that only sets dtype and device.
    """

    def without_weights(model, weights_path, device, precision, compile, train):
        dtype = torch.float64 if precision == "float64" else torch.float32
        return model.to(dtype=dtype, device=device).train(False).requires_grad_(False)

    load_model = pretrained.load_model
    pretrained.load_model = without_weights
    try:
        torch.manual_seed(seed)
        torch.set_default_dtype(torch.float32)
        return loader(weights_path=None, device=device, precision=precision, compile=False)
    finally:
        pretrained.load_model = load_model


def _pretrained_weights(model: str, url: str) -> Path:
    """Local file of ``url`` in cached_path's cache (orb-models' cache), downloading if absent."""
    # orb-models' own download cache, which it installs: only for pretrained weights
    from cached_path import cached_path, find_latest_cached, get_cache_dir

    cached = find_latest_cached(url)
    if cached is not None:
        return Path(cached)
    try:
        return Path(cached_path(url))
    except OSError as error:
        raise ConnectionError(
            f"Weights of Orb model {model!r} could not be downloaded from {url} ({error}). "
            f"orb-models caches them under {get_cache_dir()} (set CACHED_PATH_CACHE_ROOT to move "
            "it); download them there with network access, or use `weights: random` for an "
            "untrained teacher, or `checkpoint:` for a local checkpoint file."
        ) from error


def _file_sha256(path: Path) -> str:
    """SHA-256 of one file, read in 16 MiB blocks."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 24), b""):
            digest.update(block)
    return digest.hexdigest()


def _state_dict_sha256(model: torch.nn.Module) -> str:
    """SHA-256 of the state_dict tensors' bytes, floats as float32 (the same for any precision)."""
    digest = hashlib.sha256()
    for tensor in model.state_dict().values():
        tensor = tensor.detach().cpu()
        if tensor.is_floating_point():
            tensor = tensor.float()
        digest.update(tensor.contiguous().numpy().tobytes())
    return digest.hexdigest()
