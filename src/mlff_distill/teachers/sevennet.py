"""SevenNet-0 (sevenn 0.13.0) as a teacher: a trained equivariant materials force field.

The weights ship inside the sevenn wheel (``sevenn/pretrained_potentials/SevenNet_0__11Jul2024/``);
nothing is downloaded. Structures are evaluated in batches through sevenn's own graph builder and
model (float32). Energies in eV, forces in eV/Angstrom, stress in eV/Angstrom^3 with ASE's sign
convention. SevenNet's neighbour list includes every periodic image within the cutoff and honours
each direction's periodicity, so small cells, slabs and molecules are handled; stress is NaN unless
periodic in all three directions. The species are the checkpoint's type map (the 89 elements of
MPtrj); sevenn itself raises for any other element.
"""

from __future__ import annotations

import warnings
from pathlib import Path
from types import ModuleType
from typing import Sequence

import numpy as np
import torch
from ase import Atoms

from mlff_distill.teachers.base import TeacherIdentity, TeacherOutput, labels_in_batches, sha256_of_files

INSTALL_HINT = "pip install 'mlff-distill[materials]' (or pip install sevenn==0.13.0)"
# Model names -> checkpoint inside the installed sevenn package (only files the wheel ships).
CHECKPOINTS = {"7net-0": "pretrained_potentials/SevenNet_0__11Jul2024/checkpoint_sevennet_0.pth"}
ALIASES = {"sevennet-0": "7net-0", "7net-0_11jul2024": "7net-0", "sevennet-0_11jul2024": "7net-0"}


def canonical_name(model: str) -> str:
    """sevenn's name of ``model`` ("SevenNet-0" -> "7net-0"); names are case-insensitive."""
    return ALIASES.get(model.lower(), model.lower())


def checkpoint_path(model: str = "7net-0") -> Path:
    """The checkpoint file of ``model`` inside the installed sevenn package (never downloaded)."""
    sevenn = _import_sevenn()
    name = canonical_name(model)
    if name not in CHECKPOINTS:
        raise ValueError(
            f"Unknown SevenNet model {model!r}; valid names: {', '.join(CHECKPOINTS)} (or {', '.join(sorted(ALIASES))})"
        )
    path = Path(sevenn.__file__).resolve().parent / CHECKPOINTS[name]
    if not path.is_file():
        raise FileNotFoundError(
            f"{path}: the sevenn {sevenn.__version__} package lacks the weights of {model!r} "
            "(expected in the wheel; nothing is downloaded)"
        )
    return path


class SevenNetTeacher:
    """Energies (eV), forces (eV/Angstrom) and stress (eV/Angstrom^3) from SevenNet-0."""

    handles_small_cells = True  # the neighbour list includes all periodic images within the cutoff
    handles_mixed_pbc = True  # open directions have no images; stress is NaN there

    def __init__(self, model: str = "7net-0", device: str = "cpu", batch_size: int = 8):
        sevenn = _import_sevenn()
        # sevenn (imported by _import_sevenn): an optional heavy dependency, only for this teacher
        import sevenn._keys as keys
        from sevenn.util import load_checkpoint

        path = checkpoint_path(model)
        checkpoint = load_checkpoint(str(path))
        self._device = torch.device(device)
        self._model = checkpoint.build_model()
        self._model.set_is_batch_data(True)  # several graphs per call
        self._model.to(self._device).eval()
        self._cutoff_A = float(checkpoint.config[keys.CUTOFF])
        self.batch_size = batch_size
        self.identity = TeacherIdentity(
            name=f"sevennet/{canonical_name(model)}",
            kind="sevennet",
            source=str(path),
            weights_sha256=sha256_of_files([path]),
            cutoff_A=self._cutoff_A,
            # the type map: atomic number -> embedding index, one per element of the training set
            species=tuple(sorted(int(z) for z in checkpoint.config[keys.TYPE_MAP])),
            conservative=True,
            trained=True,
            extra={
                "sevenn_version": sevenn.__version__,
                "device": device,
                "precision": "float32",
                "n_parameters": sum(p.numel() for p in self._model.parameters()),
            },
        )

    def compute(self, structures: Sequence[Atoms], compute_stress: bool = False) -> TeacherOutput:
        """Energies (eV), forces (eV/Angstrom) and, if asked, stress (eV/Angstrom^3, ASE sign;
        NaN for structures not periodic in all three directions and when not asked)."""
        return labels_in_batches(
            structures, self.batch_size, lambda batch, _: self._compute_batch(batch), compute_stress
        )

    def _compute_batch(self, structures: Sequence[Atoms]) -> tuple[np.ndarray, ...]:
        """Energy [N] (eV), forces [M, 3] (eV/Angstrom), stress [N, 3, 3] (eV/Angstrom^3)."""
        # sevenn (imported by _import_sevenn) and its torch_geometric: optional heavy dependencies
        import sevenn._keys as keys
        from sevenn.atom_graph_data import AtomGraphData
        from sevenn.train.dataload import unlabeled_atoms_to_graph
        from torch_geometric.loader.dataloader import Collater

        graphs = [
            AtomGraphData.from_numpy_dict(unlabeled_atoms_to_graph(atoms, self._cutoff_A)) for atoms in structures
        ]
        batch = Collater([], follow_batch=None, exclude_keys=None)(graphs).to(self._device)
        out = self._model(batch)
        energy = out[keys.PRED_TOTAL_ENERGY].detach().cpu().double().numpy().reshape(-1)
        forces = out[keys.PRED_FORCE].detach().cpu().double().numpy()
        # SevenNet's stress is minus ASE's, as (xx, yy, zz, xy, yz, zx)
        xx, yy, zz, xy, yz, zx = -out[keys.PRED_STRESS].detach().cpu().double().numpy().reshape(-1, 6).T
        stress = np.stack(
            [np.stack([xx, xy, zx], -1), np.stack([xy, yy, yz], -1), np.stack([zx, yz, zz], -1)],
            axis=1,
        )
        return energy, forces, stress


def _import_sevenn() -> ModuleType:
    """sevenn with the modules this teacher uses, or an ImportError that says how to install it."""
    try:
        with warnings.catch_warnings():  # sevenn's modules use torch.jit.script, which this torch deprecates
            warnings.filterwarnings("ignore", "`torch.jit.script` is deprecated", DeprecationWarning)
            # an optional heavy dependency (e3nn, torch_geometric): imported only when this teacher is used
            import sevenn
            import sevenn.atom_graph_data
            import sevenn.train.dataload
            import sevenn.util
    except ImportError as error:
        raise ImportError(f"The SevenNet teacher needs sevenn: {INSTALL_HINT}") from error
    return sevenn
