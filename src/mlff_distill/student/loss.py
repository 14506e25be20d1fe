"""The training loss of one batch, as one function of tensors that ``torch.compile`` can trace whole.

`weighted_loss` takes the gradient of the learned energy with respect to the edge vectors with
``torch.func.grad`` (not ``torch.autograd.grad(create_graph=True)``, which ``torch.compile``
cannot trace), so the compiled graph holds the forward pass, the force and stress computation and
the loss; AOTAutograd then differentiates it for the weights' gradients (compiled against eager
step times: `benchmarks/train_step_speed.py`). `BatchLoss` prepares the tensors of a
batch (neighbour list, reference energies) outside the graph and calls the compiled or the eager
function.

With the teacher's Hessian signal (``hessian_weight``), the student's Hessian-vector product along
the stored direction is the gradient, with respect to the edge vectors, of the energy's
derivative along the direction's change of the edge vectors (reverse over reverse, no Hessian
formed). Forward over reverse (``torch.func.jvp``) gives the same numbers eager, but Inductor's
backward of it fails in torch 2.13 ("ZeroTensors are immutable").

Units: energies in eV, forces in eV/Angstrom, stress in eV/Angstrom^3 (ASE's sign convention),
Hessian-vector products in eV/Angstrom^2.
"""

from __future__ import annotations

import logging
import os
import time
from typing import Callable, Optional, Sequence

import numpy as np
import torch
from torch._dynamo.utils import counters

from mlff_distill.data import LabeledArrays
from mlff_distill.student.model import StudentPotential, forces_and_stress
from mlff_distill.student.neighbours import edge_vectors

logger = logging.getLogger(__name__)

# Counters of torch._dynamo.utils.counters that say whether a compilation came from the cache.
CACHE_COUNTERS = (
    ("aot_autograd", "autograd_cache_hit"),
    ("aot_autograd", "autograd_cache_miss"),
    ("inductor", "fxgraph_cache_hit"),
    ("inductor", "fxgraph_cache_miss"),
)


def stress_mask(data: LabeledArrays) -> np.ndarray:
    """Structures periodic in all directions with finite stress labels, ``[N]`` bool."""
    if data.stress_eV_per_A3 is None:
        return np.zeros(data.n_structures, dtype=bool)
    return data.pbc.all(axis=1) & np.isfinite(data.stress_eV_per_A3).all(axis=(1, 2))


def energy_weights_of(data: LabeledArrays, reduced_samples: Sequence[int], reduced_weight: float) -> np.ndarray:
    """Each structure's factor on the energy term, ``[N]``: ``reduced_weight`` for those whose
    ``sample_index`` is in ``reduced_samples`` (the on-policy frames), 1 for the others and for
    data without sample indices."""
    weights = np.ones(data.n_structures)
    if len(reduced_samples) and data.sample_index is not None:
        weights[np.isin(data.sample_index, reduced_samples)] = reduced_weight
    return weights


def loss_inputs(
    model: StudentPotential, batch: LabeledArrays, with_stress: bool, with_hessian: bool = False
) -> dict[str, torch.Tensor]:
    """The tensors `weighted_loss` needs for ``batch``, on the model's device and in its dtype
    (with ``with_hessian``, the batch's Hessian directions as changes of the edge vectors and the
    teacher's products as the target).

    The edge vectors (Angstrom) are formed in float64 and then cast; the energy target is the
    teacher's energy minus the student's reference energies, summed in float64, so that only the
    learned part (eV, small) goes through the model's dtype.
    """
    device, dtype = model.embedding.weight.device, model.embedding.weight.dtype
    positions = torch.as_tensor(batch.positions_A, dtype=torch.float64, device=device)
    cell = torch.as_tensor(batch.cell_A, dtype=torch.float64, device=device)
    pbc = torch.as_tensor(batch.pbc, dtype=torch.bool, device=device)
    atoms_ptr = torch.as_tensor(batch.atoms_ptr, dtype=torch.long, device=device)
    n_atoms = atoms_ptr[1:] - atoms_ptr[:-1]
    atom_batch = torch.repeat_interleave(torch.arange(len(n_atoms), device=device), n_atoms)
    src, dst, vectors = edge_vectors(positions, cell, pbc, atoms_ptr, model.cutoff_A)
    species = model.species_indices(torch.as_tensor(batch.numbers, device=device))
    reference = torch.zeros(len(n_atoms), dtype=torch.float64, device=device).index_add_(
        0, atom_batch, model.reference_energies_eV.double()[species]
    )
    inputs = {
        "species": species,
        "vectors": vectors.to(dtype),
        "src": src,
        "dst": dst,
        "atom_batch": atom_batch,
        "n_atoms": n_atoms.to(dtype),
        "learned_energy_target": (torch.as_tensor(batch.energy_eV, device=device) - reference).to(dtype),
        "energy_weights": torch.ones(len(n_atoms), dtype=dtype, device=device),
        "forces_target": torch.as_tensor(batch.forces_eV_per_A, dtype=dtype, device=device),
    }
    if with_stress:
        mask = stress_mask(batch)
        stress = np.where(mask[:, None, None], np.nan_to_num(batch.stress_eV_per_A3), 0.0)
        inputs.update(
            cell=cell.to(dtype),
            pbc=pbc,
            stress_target=torch.as_tensor(stress, dtype=dtype, device=device),
            stress_mask=torch.as_tensor(mask, device=device),
        )
    if with_hessian:
        if not batch.has_hessian:
            raise ValueError("the Hessian loss needs Hessian-vector labels (label.hessian_step_A)")
        direction = torch.as_tensor(batch.hessian_direction, dtype=dtype, device=device)
        inputs.update(
            hessian_tangent=direction[dst] - direction[src],
            hessian_product_target=torch.as_tensor(batch.hessian_product_eV_per_A2, dtype=dtype, device=device),
        )
    return inputs


def weighted_loss(
    model: StudentPotential,
    species: torch.Tensor,
    vectors: torch.Tensor,
    src: torch.Tensor,
    dst: torch.Tensor,
    atom_batch: torch.Tensor,
    n_atoms: torch.Tensor,
    learned_energy_target: torch.Tensor,
    energy_weights: torch.Tensor,
    forces_target: torch.Tensor,
    energy_weight: float,
    force_weight: float,
    stress_weight: float | torch.Tensor = 0.0,
    cell: Optional[torch.Tensor] = None,
    pbc: Optional[torch.Tensor] = None,
    stress_target: Optional[torch.Tensor] = None,
    stress_mask: Optional[torch.Tensor] = None,
    hessian_weight: float = 0.0,
    hessian_tangent: Optional[torch.Tensor] = None,
    hessian_product_target: Optional[torch.Tensor] = None,
) -> torch.Tensor:
    """``energy_weight * MSE(energy per atom, each structure's square error times its
    ``energy_weights`` entry) + force_weight * MSE(force components) + stress_weight
    * MSE(stress components over stress_mask) + hessian_weight * MSE(Hessian-vector product
    components)`` of one batch (inputs as from `loss_inputs`; the stress term only when
    ``stress_target`` is given, ``stress_weight`` already divided by the square of the stress
    scale; the Hessian term only when ``hessian_tangent`` is given). Differentiable with respect to
    the model's weights."""

    def learned_energy(edge_vectors: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        atom_energy = model.atom_energies(species, src, dst, edge_vectors)
        return atom_energy.sum(), atom_energy

    edge_gradient_of = torch.func.grad(learned_energy, has_aux=True)
    if hessian_tangent is None:
        edge_gradient, atom_energy = edge_gradient_of(vectors)
    else:

        def directional_derivative(
            edge_vectors: torch.Tensor,
        ) -> tuple[torch.Tensor, tuple[torch.Tensor, torch.Tensor]]:
            edge_gradient, atom_energy = edge_gradient_of(edge_vectors)
            return (edge_gradient * hessian_tangent).sum(), (edge_gradient, atom_energy)

        # The gradient of the energy's directional derivative is the Hessian times the direction.
        edge_hessian_product, (edge_gradient, atom_energy) = torch.func.grad(directional_derivative, has_aux=True)(
            vectors
        )
    n_structures = learned_energy_target.shape[0]
    forces, stress = forces_and_stress(
        edge_gradient, vectors, src, dst, atom_batch, cell, pbc, n_structures, stress_target is not None
    )
    energy = torch.zeros_like(learned_energy_target).index_add(0, atom_batch, atom_energy)
    loss = (
        energy_weight * (energy_weights * ((energy - learned_energy_target) / n_atoms) ** 2).mean()
        + force_weight * ((forces - forces_target) ** 2).mean()
    )
    if stress is not None and stress_target is not None and stress_mask is not None:
        squared = torch.where(stress_mask[:, None, None], stress - stress_target, 0.0) ** 2
        loss = loss + stress_weight * squared.sum() / (9 * stress_mask.sum())
    if hessian_tangent is not None and hessian_product_target is not None:
        # Forces are linear in the edge gradient, so the same map of its directional derivative
        # gives the derivative of the forces along the direction: minus the Hessian-vector product.
        force_derivative, _ = forces_and_stress(
            edge_hessian_product, vectors, src, dst, atom_batch, cell, pbc, n_structures, False
        )
        loss = loss + hessian_weight * ((force_derivative + hessian_product_target) ** 2).mean()
    return loss


def loss_with_stress(model: StudentPotential, **inputs: torch.Tensor | float) -> torch.Tensor:
    """`weighted_loss` of a batch with stress labels. Dynamo keeps compiled graphs per code object
    and compiles the second kind of batch that one function meets as a recompilation, which misses
    the on-disk cache that a first compilation filled; a function per kind makes every compilation
    a first one, the same in the precompile job and in each training process."""
    return weighted_loss(model, **inputs)


def loss_without_stress(model: StudentPotential, **inputs: torch.Tensor | float) -> torch.Tensor:
    """`weighted_loss` of a batch without stress labels (see `loss_with_stress`)."""
    return weighted_loss(model, **inputs)


class BatchLoss:
    """The weighted loss of a batch of `LabeledArrays`: `loss_inputs`, then `weighted_loss`,
    compiled with ``torch.compile(dynamic=True)`` if ``compile``, once for batches with stress labels
    and once for batches without (each for all batch sizes; about half a minute the first time,
    seconds from a warm cache). Where compiling fails (no C++ compiler, an unsupported device) it
    says so in the log and goes on eager.

    ``stress_scale_eV_per_A3`` divides the stress errors; the stress term is used for batches with
    periodic stress labels when ``stress_weight`` and the scale are positive. The Hessian term is
    used when ``hessian_weight`` is positive (every batch must then hold Hessian labels).

    ``reduced_energy_samples``: sample indices (the store's ``sample_index``) whose energy error
    counts ``reduced_energy_weight`` times (the on-policy frames, see `mlff_distill.student.training.fit`);
    a batch's structures are matched by their ``sample_index``. Every other structure counts once.
    """

    def __init__(
        self,
        energy_weight: float,
        force_weight: float,
        stress_weight: float,
        stress_scale_eV_per_A3: float,
        compile: bool,
        hessian_weight: float = 0.0,
        reduced_energy_samples: Sequence[int] = (),
        reduced_energy_weight: float = 1.0,
    ) -> None:
        self.weights = {"energy_weight": energy_weight, "force_weight": force_weight}
        self.reduced_energy_samples = np.asarray(reduced_energy_samples, dtype=np.int64)
        self.reduced_energy_weight = float(reduced_energy_weight)
        if hessian_weight > 0:
            self.weights["hessian_weight"] = hessian_weight
        self.scaled_stress_weight = (
            stress_weight / stress_scale_eV_per_A3**2 if stress_weight > 0 and stress_scale_eV_per_A3 > 0 else 0.0
        )
        self._functions: dict[bool, Callable[..., torch.Tensor]] = {
            True: torch.compile(loss_with_stress, dynamic=True) if compile else weighted_loss,
            False: torch.compile(loss_without_stress, dynamic=True) if compile else weighted_loss,
        }
        self.compiled = compile
        self._compiled_kinds: set[bool] = set() if compile else {True, False}

    def _first_call(self, model: StudentPotential, inputs: dict[str, torch.Tensor], with_stress: bool) -> torch.Tensor:
        """The call that compiles a kind of batch: logs its time and TorchInductor's cache hits and
        misses (a warm cache, see `mlff_distill.student.compilation`, takes seconds instead of about
        half a minute)."""
        before = {name: counters[group][name] for group, name in CACHE_COUNTERS}
        start = time.perf_counter()
        loss = self._functions[with_stress](model, **inputs, **self.weights)
        self._compiled_kinds.add(with_stress)
        logger.info(
            "compiled the training loss for batches %s stress labels in %.1f s (TorchInductor cache %s: %s)",
            "with" if with_stress else "without",
            time.perf_counter() - start,
            os.environ.get("TORCHINDUCTOR_CACHE_DIR", "default directory"),
            ", ".join(f"{name} {counters[group][name] - before[name]}" for group, name in CACHE_COUNTERS),
        )
        return loss

    def __call__(self, model: StudentPotential, batch: LabeledArrays) -> torch.Tensor:
        with_stress = self.scaled_stress_weight > 0 and bool(stress_mask(batch).any())
        inputs = loss_inputs(model, batch, with_stress, "hessian_weight" in self.weights)
        if len(self.reduced_energy_samples):
            weights = energy_weights_of(batch, self.reduced_energy_samples, self.reduced_energy_weight)
            inputs["energy_weights"] = torch.as_tensor(weights).to(inputs["energy_weights"])
        if with_stress:  # a tensor, not a float that the compiled graph would be specialised on
            target = inputs["stress_target"]
            inputs["stress_weight"] = torch.tensor(self.scaled_stress_weight, dtype=target.dtype, device=target.device)
        try:
            if with_stress not in self._compiled_kinds:
                return self._first_call(model, inputs, with_stress)
            return self._functions[with_stress](model, **inputs, **self.weights)
        except Exception as error:  # compiler missing or failing: train eager instead
            if not self.compiled:
                raise
            logger.warning(
                "torch.compile of the training loss failed (%s: %s); training eager",
                type(error).__name__,
                str(error).splitlines()[0] if str(error) else "",
            )
            self._functions = {True: weighted_loss, False: weighted_loss}
            self.compiled, self._compiled_kinds = False, {True, False}
            return weighted_loss(model, **inputs, **self.weights)
