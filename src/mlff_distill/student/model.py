"""The student: a small PaiNN-style equivariant message-passing potential.

Why PaiNN (Schütt et al. 2021) rather than SchNet: the vector features carry directional
information, which gives clearly better forces at the same width and depth, while the cost stays
that of a few ``[E, 3, F]`` elementwise products and scatter-adds per layer (no spherical
harmonics or tensor products). The scalar filters of all layers come from one linear map of the
Bessel-cosine radial basis (`mlff_distill.reference.radial`); since that basis already goes smoothly
to zero at the cutoff and the map has no bias, energies and forces are smooth at the cutoff.

Below the closest contact of each pair of elements in its training labels, a student has learned
nothing, and MD can fall into a hole there that the teacher does not have (two H atoms of two water
molecules held 0.8-1.0 A apart for picoseconds, 1-2 eV below the teacher). The contact wall
closes that region: a fixed pair energy ``k (r0 - r)^3`` for ``r < r0``, with ``r0`` the closest
contact of the two elements in the training labels (`training.contact_wall_radii`), zero and flat at
the distances the labels cover.

Units: positions and cells in Angstrom, energies in eV, forces in eV/Angstrom, stress in
eV/Angstrom^3.
"""

from __future__ import annotations

from typing import Any, Optional, Sequence

import torch
from torch import nn

from mlff_distill.reference.edge_message import edge_messages_from_basis
from mlff_distill.reference.radial import bessel_cosine_basis
from mlff_distill.reference.rows import sum_rows
from mlff_distill.student.angular_moments import AngularMoments
from mlff_distill.student.edge_message import edge_message
from mlff_distill.student.neighbours import edge_vectors


def _mlp(n_in: int, n_hidden: int, n_out: int) -> nn.Sequential:
    return nn.Sequential(nn.Linear(n_in, n_hidden), nn.SiLU(), nn.Linear(n_hidden, n_out))


class _Interaction(nn.Module):
    """One PaiNN message + update block on scalar ``s [N, F]`` and vector ``v [N, 3, F]`` features.

    The edge part is `mlff_distill.student.edge_message.edge_messages_from_basis` (the same
    function the Triton kernels are tested against); the per-atom part is `update_atoms`.
    """

    def __init__(self, n_features: int) -> None:
        super().__init__()
        self.n_features = n_features
        self.message = _mlp(n_features, n_features, 3 * n_features)
        self.vector_u = nn.Linear(n_features, n_features, bias=False)
        self.vector_v = nn.Linear(n_features, n_features, bias=False)
        self.update = _mlp(2 * n_features, n_features, 3 * n_features)

    def forward(
        self,
        s: torch.Tensor,
        v: torch.Tensor,
        basis: torch.Tensor,
        radial_weight: torch.Tensor,
        edge_unit: torch.Tensor,
        edge_src: torch.Tensor,
        edge_dst: torch.Tensor,
        vectors_are_zero: bool,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """``(s, v)`` after this block's messages (`edge_messages_from_basis`) and its per-atom update."""
        v_in: Optional[torch.Tensor] = None if vectors_are_zero else v
        ds, dv = edge_messages_from_basis(
            self.message(s), v_in, basis, radial_weight, edge_unit, edge_src, edge_dst, s.shape[0]
        )
        return self.update_atoms(s, v, ds, dv)

    def update_atoms(
        self, s: torch.Tensor, v: torch.Tensor, ds: torch.Tensor, dv: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """The per-atom part of the block: add the summed messages, then PaiNN's update."""
        s = s + ds
        v = v + dv
        f = self.n_features
        u, w = self.vector_u(v), self.vector_v(v)
        w_norm = torch.sqrt((w * w).sum(dim=1) + 1e-8)
        a_vv, a_sv, a_ss = self.update(torch.cat([s, w_norm], dim=-1)).split(f, dim=-1)
        return s + a_sv * (u * w).sum(dim=1) + a_ss, v + a_vv.unsqueeze(1) * u


class StudentPotential(nn.Module):
    """Conservative potential: ``E = sum_i [energy_scale_eV * readout(s_i) + E_ref(Z_i)] + E_wall`` in eV.

    Args:
        species: atomic numbers the model knows; any other raises ``ValueError``.
        cutoff_A: neighbour cutoff, Angstrom.
        n_features: width of the scalar and vector features.
        n_radial: number of Bessel radial basis functions.
        n_interactions: number of message-passing blocks.
        reference_energies_eV: per-species atomic energies (eV) added to the output; 0 if ``None``
            or missing for a species. Usually from `fitting.fit_reference_energies`.
        energy_scale_eV: scale of the learned per-atom energy (eV), e.g. the RMS of the per-atom
            energy residual or of the force components of the training set.
        radial_backend: ``"torch"`` (eager PyTorch) or ``"triton"`` (the fused edge-message
            kernels of `mlff_distill.kernels.edge_message`, for CUDA GPUs); a runtime choice, also
            settable later as the attribute ``radial_backend``.
        contact_wall_eV_per_A3: stiffness ``k`` of the contact wall ``E_wall = sum over pairs of
            k (r0 - r)^3 for r < r0`` (eV/Angstrom^3); 0 turns it off.
        contact_wall_A: ``r0`` (Angstrom) for each pair of species, a symmetric matrix in the
            order of ``species`` (0: no wall); usually the closest contacts of the training labels
            (`training.contact_wall_radii`). None: no wall.
        angular_order: 1 for PaiNN's vectors alone; 2 or 3 also adds the angular moments of orders
            2..3 of each neighbourhood to the embedding (`mlff_distill.student.angular_moments`).
        angular_channels: radial channels per angular order (with ``angular_order`` above 1).

    Layout: species embedding (+ angular moments) -> ``n_interactions`` PaiNN blocks on scalar ``[N, F]`` and vector
    ``[N, 3, F]`` features -> scalar MLP readout ``F -> F/2 -> 1`` per atom, summed per structure.
    The reference energies are a float64 buffer: ``model.double()`` is fine, but avoid
    ``model.float()`` / ``.half()``, which would round them too. The model compiles with
    ``torch.jit.script`` (see `mlff_distill.student.export`).
    """

    __jit_unused_properties__ = ["hyperparameters"]

    def __init__(
        self,
        species: Sequence[int] = (1, 6, 7, 8),
        cutoff_A: float = 5.0,
        n_features: int = 64,
        n_radial: int = 8,
        n_interactions: int = 2,
        reference_energies_eV: Optional[dict[int, float]] = None,
        energy_scale_eV: float = 1.0,
        radial_backend: str = "torch",
        contact_wall_eV_per_A3: float = 0.0,
        contact_wall_A: Optional[Sequence[Sequence[float]]] = None,
        angular_order: int = 1,
        angular_channels: int = 16,
    ) -> None:
        super().__init__()
        self.species = [int(z) for z in species]
        self.cutoff_A = float(cutoff_A)
        self.n_features = n_features
        self.n_radial = n_radial
        self.n_interactions = n_interactions
        self.angular_order = angular_order
        self.angular_channels = angular_channels
        self.radial_backend = radial_backend

        index = torch.full((max(self.species) + 1,), -1, dtype=torch.long)
        index[torch.tensor(self.species)] = torch.arange(len(self.species))
        self.register_buffer("species_index", index, persistent=False)
        reference = reference_energies_eV or {}
        self.register_buffer(
            "reference_energies_eV",
            torch.tensor([float(reference.get(z, 0.0)) for z in self.species], dtype=torch.float64),
        )
        self.register_buffer("energy_scale_eV", torch.tensor(float(energy_scale_eV)))
        self.contact_wall_eV_per_A3 = float(contact_wall_eV_per_A3)
        radii = torch.zeros(len(self.species), len(self.species))
        if contact_wall_A is not None:
            radii = torch.tensor(contact_wall_A, dtype=torch.float32).reshape(radii.shape)
        # Not in the state_dict: a warm-started round keeps its weights and takes the new data's radii.
        self.register_buffer("contact_wall_A", radii, persistent=False)

        self.embedding = nn.Embedding(len(self.species), n_features)
        # Zero or one module: a ModuleList scripts where an Optional submodule does not.
        self.angular_moments = nn.ModuleList(
            [AngularMoments(n_features, n_radial, angular_order, angular_channels)] if angular_order > 1 else []
        )
        self.radial_filter = nn.Linear(n_radial, n_interactions * 3 * n_features, bias=False)
        self.interactions = nn.ModuleList(_Interaction(n_features) for _ in range(n_interactions))
        self.readout = _mlp(n_features, n_features // 2, 1)

    @property
    def hyperparameters(self) -> dict[str, Any]:
        """Constructor arguments that rebuild this model (weights come from ``state_dict``)."""
        return {
            "species": list(self.species),
            "cutoff_A": self.cutoff_A,
            "n_features": self.n_features,
            "n_radial": self.n_radial,
            "n_interactions": self.n_interactions,
            "reference_energies_eV": dict(zip(self.species, self.reference_energies_eV.tolist())),
            "energy_scale_eV": float(self.energy_scale_eV),
            "contact_wall_eV_per_A3": self.contact_wall_eV_per_A3,
            "contact_wall_A": self.contact_wall_A.tolist(),
            "angular_order": self.angular_order,
            "angular_channels": self.angular_channels,
        }

    def species_indices(self, numbers: torch.Tensor) -> torch.Tensor:
        """Index of each atom's species in ``species`` (long); ``ValueError`` naming unknown atomic numbers."""
        numbers = numbers.to(self.species_index.device, torch.long)
        known = (numbers >= 0) & (numbers < len(self.species_index))
        index = torch.where(known, self.species_index[numbers.clamp(0, len(self.species_index) - 1)], -1)
        if bool((index < 0).any()):
            unknown: list[int] = torch.unique(numbers[index < 0]).tolist()
            raise ValueError("unknown species: atomic number(s) " + str(unknown) + "; model knows " + str(self.species))
        return index

    @torch.jit.unused
    def _triton_features(
        self, species: torch.Tensor, src: torch.Tensor, dst: torch.Tensor, vectors: torch.Tensor
    ) -> torch.Tensor:
        """Scalar features after the interactions, with the fused Triton edge-message kernels
        (`mlff_distill.kernels.edge_message`: distance, basis, filter, product and scatter in one
        pass over the edges, forward and backward)."""
        weights = self.radial_filter.weight.split(3 * self.n_features, dim=0)
        s = self.embedding(species)
        if len(self.angular_moments) > 0:
            distances = torch.linalg.vector_norm(vectors, dim=-1)
            basis = bessel_cosine_basis(distances, self.n_radial, self.cutoff_A)
            s = s + self.angular_moments[0](s, basis, vectors / distances.unsqueeze(-1), src, dst)
        v = s.new_zeros(len(s), 3, self.n_features)
        for layer, interaction in enumerate(self.interactions):
            ds, dv = edge_message(
                interaction.message(s),
                None if layer == 0 else v,
                vectors,
                weights[layer].t(),
                src,
                dst,
                len(s),
                self.cutoff_A,
                self.n_radial,
                backend="triton",
            )
            s, v = interaction.update_atoms(s, v, ds, dv)
        return s

    def contact_wall_energies(
        self, species: torch.Tensor, src: torch.Tensor, dst: torch.Tensor, vectors: torch.Tensor
    ) -> torch.Tensor:
        """Each atom's half of the contact wall energy of its pairs ``[N]`` (eV): ``k (r0 - r)^3`` for
        ``r < r0`` per pair, from the ordered edges (each pair appears twice)."""
        distances = torch.linalg.vector_norm(vectors, dim=-1)
        radii = self.contact_wall_A.to(vectors.dtype)[species[src], species[dst]]
        overlap = torch.clamp(radii - distances, min=0.0)
        return sum_rows((0.5 * self.contact_wall_eV_per_A3) * overlap * overlap * overlap, src, species.shape[0])

    def atom_energies(
        self, species: torch.Tensor, src: torch.Tensor, dst: torch.Tensor, vectors: torch.Tensor
    ) -> torch.Tensor:
        """The atoms' energies ``[N]`` (eV, model dtype): the learned part and the contact wall,
        reference energies not included, from the species indices (`species_indices`), the edges
        and their vectors (Angstrom)."""
        if self.radial_backend == "triton" and not torch.jit.is_scripting():
            s = self._triton_features(species, src, dst, vectors)
        elif self.radial_backend == "torch":
            distances = torch.linalg.vector_norm(vectors, dim=-1)
            units = vectors / distances.unsqueeze(-1)
            basis = bessel_cosine_basis(distances, self.n_radial, self.cutoff_A)
            weights = self.radial_filter.weight.split(3 * self.n_features, dim=0)
            s = self.embedding(species)
            for moments in self.angular_moments:
                s = s + moments(s, basis, units, src, dst)
            v = s.new_zeros(s.shape[0], 3, self.n_features)  # not len(s): export keeps the atom count symbolic
            for layer, interaction in enumerate(self.interactions):
                s, v = interaction(s, v, basis, weights[layer], units, src, dst, vectors_are_zero=layer == 0)
        else:
            raise ValueError(
                "unknown radial_backend '" + self.radial_backend + "'; use 'torch' or 'triton' "
                "(TorchScript: 'torch' only)"
            )
        energies = self.readout(s).squeeze(-1) * self.energy_scale_eV.to(s.dtype)
        if self.contact_wall_eV_per_A3 > 0:
            energies = energies + self.contact_wall_energies(species, src, dst, vectors)
        return energies

    def structure_energies(
        self, atom_energy: torch.Tensor, species: torch.Tensor, batch: torch.Tensor, n_structures: int
    ) -> torch.Tensor:
        """Energies ``[B]`` (eV, float64): ``atom_energy [N]`` (`atom_energies`) plus the reference energies,
        summed per structure in float64 so that float32 models do not lose total-energy precision."""
        atom_energy = atom_energy.double() + self.reference_energies_eV.double()[species]
        return atom_energy.new_zeros(n_structures).index_add_(0, batch, atom_energy)

    def _edge_energy(
        self,
        species: torch.Tensor,
        src: torch.Tensor,
        dst: torch.Tensor,
        vectors: torch.Tensor,
        batch: torch.Tensor,
        n_structures: int,
    ) -> torch.Tensor:
        """Energies ``[B]`` (eV, float64) from the species indices and edge vectors (Angstrom)."""
        return self.structure_energies(self.atom_energies(species, src, dst, vectors), species, batch, n_structures)

    def forward(
        self,
        numbers: torch.Tensor,
        positions_A: torch.Tensor,
        cell_A: torch.Tensor,
        pbc: torch.Tensor,
        atoms_ptr: torch.Tensor,
    ) -> torch.Tensor:
        """Energies ``[B]`` in eV of a batch (inputs as in `neighbours.neighbour_list`, Angstrom).

        Positions and cells are cast to the model's dtype; gradients flow to both. The energy is
        float64: the learned part is computed in the model's dtype, the (large) reference-energy
        sum in float64 so that float32 models do not lose total-energy precision.
        """
        dtype = self.embedding.weight.dtype
        positions, cell = positions_A.to(dtype), cell_A.to(dtype)
        atoms_ptr = atoms_ptr.to(positions.device, torch.long)
        species = self.species_indices(numbers)
        n_structures = len(atoms_ptr) - 1
        batch = torch.repeat_interleave(
            torch.arange(n_structures, device=positions.device), atoms_ptr[1:] - atoms_ptr[:-1]
        )
        src, dst, vectors = edge_vectors(positions, cell, pbc, atoms_ptr, self.cutoff_A)
        return self._edge_energy(species, src, dst, vectors, batch, n_structures)

    @torch.jit.export
    def energy_forces_stress(
        self,
        numbers: torch.Tensor,
        positions_A: torch.Tensor,
        cell_A: torch.Tensor,
        pbc: torch.Tensor,
        atoms_ptr: torch.Tensor,
        compute_stress: bool,
        create_graph: bool = False,
    ) -> tuple[torch.Tensor, torch.Tensor, Optional[torch.Tensor]]:
        """Energy ``[B]`` (eV), forces ``[M, 3]`` (eV/Angstrom) and optionally stress ``[B, 3, 3]``.

        Forces are ``-dE/dpositions``. The stress is ``(1/V) dE/d(eps)`` for a symmetric strain
        ``eps`` applied to positions and cell (``r -> r (1 + eps)``), the convention of ASE's
        ``atoms.get_stress(voigt=False)`` (positive under tension). It is NaN for structures that
        are not periodic in all three directions. The energy is float64, forces and stress are in
        the model's dtype. Use ``create_graph=True`` to train on forces; otherwise all outputs are
        detached.

        The energy depends on positions and cell only through the edge vectors ``d_e = r_dst -
        r_src + shift @ cell``, so one backward pass to ``g_e = dE/dd_e`` gives both: forces
        ``F_i = sum_{src=i} g_e - sum_{dst=i} g_e`` and the strain derivative ``sym(sum_e d_e g_e^T)``
        (a strain maps every ``d_e`` to ``d_e (1 + eps)``).
        """
        dtype = self.embedding.weight.dtype
        device = self.embedding.weight.device
        positions = positions_A.detach().to(device, dtype)
        cell = cell_A.detach().to(device, dtype)
        atoms_ptr = atoms_ptr.to(device, torch.long)
        pbc = pbc.to(device, torch.bool)
        species = self.species_indices(numbers.to(device))
        n_structures = len(atoms_ptr) - 1
        batch = torch.repeat_interleave(torch.arange(n_structures, device=device), atoms_ptr[1:] - atoms_ptr[:-1])
        src, dst, vectors = edge_vectors(positions, cell, pbc, atoms_ptr, self.cutoff_A)
        vectors = vectors.requires_grad_(True)

        energy = self._edge_energy(species, src, dst, vectors, batch, n_structures)
        gradients = torch.autograd.grad([energy.sum()], [vectors], create_graph=create_graph)
        if not create_graph:
            energy = energy.detach()
        edge_gradient = gradients[0]
        assert edge_gradient is not None
        forces, stress = forces_and_stress(
            edge_gradient, vectors.detach(), src, dst, batch, cell, pbc, n_structures, compute_stress
        )
        return energy, forces, stress


def forces_and_stress(
    edge_gradient: torch.Tensor,
    vectors: torch.Tensor,
    src: torch.Tensor,
    dst: torch.Tensor,
    batch: torch.Tensor,
    cell_A: torch.Tensor,
    pbc: torch.Tensor,
    n_structures: int,
    compute_stress: bool,
) -> tuple[torch.Tensor, Optional[torch.Tensor]]:
    """Forces ``[N, 3]`` (eV/Angstrom) and, if asked, stress ``[B, 3, 3]`` (eV/Angstrom^3, ASE's sign;
    NaN where a structure is not periodic in x, y and z) from ``edge_gradient = dE/dvectors [E, 3]``.

    The energy depends on positions and cell only through the edge vectors ``d_e = r_dst - r_src +
    shift @ cell``, so ``F_i = sum_{src=i} g_e - sum_{dst=i} g_e`` and the strain derivative is
    ``sym(sum_e d_e g_e^T)`` (a strain maps every ``d_e`` to ``d_e (1 + eps)``). ``batch [N]`` is the
    structure of each atom.
    """
    forces = sum_rows(edge_gradient, src, batch.shape[0]) - sum_rows(edge_gradient, dst, batch.shape[0])
    stress: Optional[torch.Tensor] = None
    if compute_stress:
        virial = sum_rows(vectors.unsqueeze(-1) * edge_gradient.unsqueeze(1), batch[src], n_structures)
        periodic = pbc.all(dim=1)[:, None, None]
        cell = cell_A.to(edge_gradient.dtype)  # volume as a triple product: a few fused ops, no LU
        volume = (torch.linalg.cross(cell[:, 0], cell[:, 1], dim=-1) * cell[:, 2]).sum(-1).abs()
        volume = torch.where(periodic, volume[:, None, None], 1.0)
        stress = torch.where(periodic, 0.5 * (virial + virial.transpose(1, 2)) / volume, torch.nan)
    return forces, stress


def energy_forces_stress(
    model: StudentPotential,
    numbers: torch.Tensor,
    positions_A: torch.Tensor,
    cell_A: torch.Tensor,
    pbc: torch.Tensor,
    atoms_ptr: torch.Tensor,
    compute_stress: bool,
    create_graph: bool = False,
) -> tuple[torch.Tensor, torch.Tensor, Optional[torch.Tensor]]:
    """`StudentPotential.energy_forces_stress` of ``model`` (eV, eV/Angstrom, eV/Angstrom^3)."""
    return model.energy_forces_stress(numbers, positions_A, cell_A, pbc, atoms_ptr, compute_stress, create_graph)
