"""CHGNet 0.3.0 (chgnet 0.4.2) as a teacher: a trained materials force field for periodic cells.

The weights ship inside the chgnet wheel (``chgnet/pretrained/0.3.0/``); nothing is downloaded.
CHGNet predicts energy per atom (eV/atom) and stress in GPa; this teacher returns total energy in
eV, forces in eV/Angstrom and stress in eV/Angstrom^3 with ASE's sign convention (CHGNet's stress
is (1/V) dE/d(strain), the same sign as ASE's). Structures are evaluated in batches (float32).

CHGNet treats every structure as a periodic crystal: a molecule without a cell cannot be labeled,
so the teacher says ``periodic_only = True`` (`mlff_distill.teachers.check_structures_for` refuses
such structures before labeling, and `compute` refuses them too). CHGNet also returns energies for
the elements its embedding has rows for but that were absent from its training set (Po, At, Rn,
Fr, Ra for MPtrj): the identity's ``species`` holds only the trained elements, read from the
checkpoint, so that the checks refuse the others.
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

INSTALL_HINT = "pip install 'mlff-distill[materials]' (or pip install chgnet==0.4.2)"
# Model names -> checkpoint inside the installed chgnet package (only files the wheel ships).
CHECKPOINTS = {"0.3.0": "pretrained/0.3.0/chgnet_0.3.0_e29f68s314m37.pth.tar"}
EV_PER_A3_PER_GPA = 1 / 160.21766208  # the inverse of CHGNet's own eV/A^3 -> GPa factor
EMBEDDING = "atom_embedding.embedding.weight"  # row Z - 1 embeds atomic number Z


def checkpoint_path(model: str = "0.3.0") -> Path:
    """The checkpoint file of ``model`` inside the installed chgnet package (never downloaded)."""
    chgnet = _import_chgnet()
    if model not in CHECKPOINTS:
        raise ValueError(f"Unknown CHGNet model {model!r}; valid names: {', '.join(CHECKPOINTS)}")
    path = Path(chgnet.__file__).resolve().parent / CHECKPOINTS[model]
    if not path.is_file():
        raise FileNotFoundError(
            f"{path}: the chgnet {chgnet.__version__} package lacks the weights of CHGNet {model} "
            "(expected in the wheel; nothing is downloaded)"
        )
    return path


def trained_species(saved: dict, parameter_names: Sequence[str]) -> tuple[int, ...]:
    """Atomic numbers whose embedding row the training updated, from a loaded CHGNet checkpoint.

    The checkpoint keeps the Adam optimizer's state; the second moment of an embedding row stays
    exactly zero for an element that never occurred in the training set. ``parameter_names`` are
    the model's parameter names in order (the optimizer's parameter indices follow that order).
    """
    indices = [i for group in saved["optimizer"]["param_groups"] for i in group["params"]]
    if len(indices) != len(parameter_names):
        raise ValueError("the checkpoint's optimizer state does not match the model's parameters")
    second_moment = saved["optimizer"]["state"][indices[list(parameter_names).index(EMBEDDING)]]
    seen = second_moment["exp_avg_sq"].abs().sum(dim=1) > 0
    return tuple(int(row) + 1 for row in torch.nonzero(seen).view(-1))


class CHGNetTeacher:
    """Energies (eV), forces (eV/Angstrom) and stress (eV/Angstrom^3) of periodic cells from CHGNet."""

    handles_small_cells = True  # pymatgen's neighbour list includes all periodic images
    handles_mixed_pbc = False
    periodic_only = True  # every structure must be periodic in all three directions

    def __init__(self, model: str = "0.3.0", device: str = "cpu", batch_size: int = 16):
        chgnet = _import_chgnet()
        # chgnet is an optional heavy dependency (pymatgen): only when this teacher is chosen
        from chgnet.model import CHGNet

        path = checkpoint_path(model)
        saved = torch.load(path, map_location="cpu", weights_only=False)  # the installed wheel's own file
        # built as CHGNet.load(model) builds it from that file (without its device message)
        self._model = CHGNet.from_dict(saved["model"], mlp_out_bias=False, version=model).to(device).eval()
        self._device = torch.device(device)
        self.batch_size = batch_size
        names = [name for name, _ in self._model.named_parameters()]
        self.identity = TeacherIdentity(
            name=f"chgnet/{model}",
            kind="chgnet",
            source=str(path),
            weights_sha256=sha256_of_files([path]),
            cutoff_A=float(self._model.graph_converter.atom_graph_cutoff),
            species=trained_species(saved, names),
            conservative=True,
            trained=True,
            extra={
                "chgnet_version": chgnet.__version__,
                "device": device,
                "precision": "float32",
                "bond_graph_cutoff_A": float(self._model.graph_converter.bond_graph_cutoff),
                "n_parameters": sum(p.numel() for p in self._model.parameters()),
            },
        )

    def compute(self, structures: Sequence[Atoms], compute_stress: bool = False) -> TeacherOutput:
        """Energies (eV), forces (eV/Angstrom) and, if asked, stress (eV/Angstrom^3, ASE sign).

        Raises ValueError, naming the structure, for one not periodic in all three directions or
        with an atom that has no neighbour within the cutoff (CHGNet's graph needs one).
        """
        for index, atoms in enumerate(structures):
            if not atoms.pbc.all():
                raise ValueError(
                    f"structure {index} ({atoms.get_chemical_formula()}): pbc={atoms.pbc.tolist()}, but "
                    f"{self.identity.name} needs a cell periodic in all three directions"
                )
        return labels_in_batches(
            structures,
            self.batch_size,
            lambda batch, first: self._compute_batch(batch, first, compute_stress),
            compute_stress,
        )

    def _compute_batch(
        self, structures: Sequence[Atoms], first_index: int, compute_stress: bool
    ) -> tuple[np.ndarray, ...]:
        """Energy [N] (eV), forces [M, 3] (eV/Angstrom), stress [N, 3, 3] (eV/Angstrom^3)."""
        # pymatgen comes with chgnet, an optional heavy dependency: only for this teacher
        from pymatgen.core import Lattice, Structure

        graphs = []
        for index, atoms in enumerate(structures, start=first_index):
            crystal = Structure(Lattice(atoms.cell.array), atoms.numbers, atoms.positions, coords_are_cartesian=True)
            try:
                graphs.append(self._model.graph_converter(crystal, graph_id=str(index)))
            except ValueError as error:  # e.g. an isolated atom
                raise ValueError(f"structure {index} ({atoms.get_chemical_formula()}): {error}") from error
        with warnings.catch_warnings():  # chgnet 0.4.2 makes a tensor of volumes that need grad
            warnings.filterwarnings("ignore", "Converting a tensor with requires_grad=True", UserWarning)
            out = self._model([g.to(self._device) for g in graphs], task="efs" if compute_stress else "ef")
        n_atoms = np.array([len(a) for a in structures], dtype=np.float64)
        energy = out["e"].detach().cpu().double().numpy().reshape(-1)
        if self._model.is_intensive:  # eV/atom -> eV
            energy = energy * n_atoms
        forces = torch.cat(out["f"]).detach().cpu().double().numpy()
        stress = np.full((len(structures), 3, 3), np.nan)
        if compute_stress:  # GPa -> eV/Angstrom^3
            stress = torch.stack(out["s"]).detach().cpu().double().numpy() * EV_PER_A3_PER_GPA
        return energy, forces, stress


def _import_chgnet() -> ModuleType:
    """chgnet, or an ImportError that says how to install it."""
    try:
        # an optional heavy dependency (pymatgen): imported only when this teacher is used
        import chgnet
    except ImportError as error:
        raise ImportError(f"The CHGNet teacher needs chgnet: {INSTALL_HINT}") from error
    return chgnet
