"""Batched neighbour list in PyTorch (molecules and periodic cells, mixed in one batch).

Two vectorised methods (no per-structure Python loop), chosen by size:

* all pairs, for batches with no periodic structure and at most ``ALL_PAIRS_MAX_CANDIDATES``
  ordered atom pairs in total (``sum n_b^2``): few tensor operations, the fastest for small
  molecules;
* otherwise a cell list (spatial binning), whose cost is linear in the number of atoms:

  1. atoms of periodic structures are wrapped into their cell (the integer offsets are remembered,
     so the returned shifts refer to the positions as given);
  2. periodic images ("ghosts") lying within ``cutoff`` of the cell are added; the number of
     images per direction is ``ceil(cutoff / h)`` with ``h`` the cell's perpendicular height, so
     cells shorter than the cutoff (an atom seeing its own images) are handled;
  3. all points are binned on a Cartesian grid of bin edge ``cutoff`` with keys
     ``(structure, bin)``; each atom looks up the 27 surrounding bins with ``searchsorted`` and
     the candidate pairs are filtered by distance.

Distances use the dtype of ``positions_A``; a pair is kept when its distance is strictly below the
cutoff (as in ``ase.neighborlist``). A structure with any periodic direction must have a
non-singular cell.
"""

from __future__ import annotations

import math

import numpy as np
import torch
from vesin import NeighborList

ALL_PAIRS_MAX_CANDIDATES = 1 << 16


def _ragged_arange(counts: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """For segment lengths ``counts [K]`` return ``(segment, index_in_segment)``, each ``[sum]``."""
    segment = torch.repeat_interleave(torch.arange(len(counts), device=counts.device), counts)
    starts = torch.cumsum(counts, 0) - counts
    index = torch.arange(len(segment), device=counts.device) - starts[segment]
    return segment, index


def neighbour_list(
    positions_A: torch.Tensor,
    cell_A: torch.Tensor,
    pbc: torch.Tensor,
    atoms_ptr: torch.Tensor,
    cutoff_A: float,
    all_pairs_max_candidates: int = ALL_PAIRS_MAX_CANDIDATES,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """All ordered pairs closer than ``cutoff_A`` (Angstrom) within each structure of a batch.

    Args:
        positions_A: ``[M, 3]`` atom positions, Angstrom (need not be wrapped into the cell).
        cell_A: ``[B, 3, 3]`` cell vectors as rows, Angstrom (zeros for molecules).
        pbc: ``[B, 3]`` bool periodicity per cell direction.
        atoms_ptr: ``[B + 1]`` offsets; atoms ``atoms_ptr[b]:atoms_ptr[b+1]`` form structure ``b``.
        cutoff_A: cutoff radius, Angstrom.
        all_pairs_max_candidates: the all-pairs method's limit on ``sum n_b^2`` (a default
            argument rather than a global read, so that TorchScript compiles it).

    Returns:
        ``(edge_src, edge_dst, cell_shifts)``: long ``[E]``, long ``[E]``, long ``[E, 3]``. The
        vector of an edge is ``positions[dst] + cell_shifts @ cell[b] - positions[src]``. Both
        directions of every pair are listed; an atom is paired with its own periodic images
        (non-zero shift) but never with itself in the home cell.
    """
    with torch.no_grad():
        device = positions_A.device
        atoms_ptr = atoms_ptr.to(device=device, dtype=torch.long)
        pbc = pbc.to(device=device, dtype=torch.bool)
        n_atoms = atoms_ptr[1:] - atoms_ptr[:-1]
        if not pbc.any() and int((n_atoms**2).sum()) <= all_pairs_max_candidates:
            return _all_pairs(positions_A.detach(), atoms_ptr, cutoff_A)
        return _cell_list(positions_A.detach(), cell_A.detach(), pbc, atoms_ptr, cutoff_A)


def _all_pairs(
    positions: torch.Tensor, atoms_ptr: torch.Tensor, cutoff_A: float
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Neighbour list of non-periodic structures by testing every ordered pair."""
    n_atoms = atoms_ptr[1:] - atoms_ptr[:-1]
    structure, index = _ragged_arange(n_atoms**2)
    n, first = n_atoms[structure], atoms_ptr[:-1][structure]
    src, dst = first + torch.div(index, n, rounding_mode="floor"), first + index % n
    vectors = positions.index_select(0, dst) - positions.index_select(0, src)
    keep = ((vectors * vectors).sum(dim=1) < cutoff_A**2) & (src != dst)
    src, dst = src[keep], dst[keep]
    return src, dst, torch.zeros(len(src), 3, dtype=torch.long, device=positions.device)


def _bin_key(structure: torch.Tensor, bins: torch.Tensor, grid: torch.Tensor) -> torch.Tensor:
    """One integer per (structure, bin) on a grid of ``grid [3]`` bins per structure."""
    return ((structure * grid[0] + bins[..., 0]) * grid[1] + bins[..., 1]) * grid[2] + bins[..., 2]


def _cell_list(
    positions: torch.Tensor, cell_A: torch.Tensor, pbc: torch.Tensor, atoms_ptr: torch.Tensor, cutoff_A: float
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Neighbour list of any batch by binning the atoms and their periodic images."""
    device, dtype = positions.device, positions.dtype
    n_structures = len(atoms_ptr) - 1
    n_atoms = atoms_ptr[1:] - atoms_ptr[:-1]
    batch = torch.repeat_interleave(torch.arange(n_structures, device=device), n_atoms)

    # Wrap periodic directions into [0, 1) in fractional coordinates.
    periodic = pbc.any(dim=1)
    eye = torch.eye(3, dtype=dtype, device=device).expand(n_structures, 3, 3)
    cell = torch.where(periodic[:, None, None], cell_A.to(dtype), eye)
    fractional = torch.einsum("mi,mij->mj", positions, torch.linalg.inv(cell)[batch])
    wrap = torch.floor(fractional) * pbc[batch]
    positions = positions - torch.einsum("mi,mij->mj", wrap, cell[batch])
    fractional = fractional - wrap
    wrap = wrap.long()

    # Periodic images per direction from the perpendicular heights h_d = V / |a_e x a_f|.
    cross = torch.linalg.cross(cell.roll(-1, dims=1), cell.roll(-2, dims=1), dim=-1)
    heights = torch.linalg.det(cell).abs()[:, None] / torch.linalg.vector_norm(cross, dim=-1)
    padding = torch.where(pbc, cutoff_A / heights + 1e-5, math.inf)
    n_images = torch.where(pbc, torch.ceil(cutoff_A / heights), 0).long()
    n_shifts = (2 * n_images + 1).prod(dim=1)

    # Candidate points: every atom under every shift of its structure, kept near the cell.
    point_atom, shift_index = _ragged_arange(n_shifts[batch])
    width = 2 * n_images[batch[point_atom]] + 1
    shifts = (
        torch.stack(
            [
                shift_index // (width[:, 1] * width[:, 2]),
                (shift_index // width[:, 2]) % width[:, 1],
                shift_index % width[:, 2],
            ],
            dim=1,
        )
        - n_images[batch[point_atom]]
    )
    point_fractional = fractional[point_atom] + shifts
    point_padding = padding[batch[point_atom]]
    keep = ((point_fractional >= -point_padding) & (point_fractional < 1 + point_padding)).all(1)
    keep |= (shifts == 0).all(1)
    point_atom, shifts = point_atom[keep], shifts[keep]
    point_batch = batch[point_atom]
    point_positions = positions[point_atom] + torch.einsum("pi,pij->pj", shifts.to(dtype), cell[point_batch])

    # Bin points per structure; bins are offset by one so that neighbour bins never wrap.
    origin = torch.full((n_structures, 3), math.inf, dtype=dtype, device=device)
    origin = origin.scatter_reduce(0, point_batch[:, None].expand(-1, 3), point_positions, "amin")
    point_bins = torch.floor((point_positions - origin[point_batch]) / cutoff_A).long() + 1
    grid = point_bins.max(dim=0).values + 2 if len(point_bins) else torch.ones(3, dtype=torch.long, device=device)

    point_keys, order = torch.sort(_bin_key(point_batch, point_bins, grid))
    point_atom, shifts, point_positions = point_atom[order], shifts[order], point_positions[order]

    # Each atom (its zero-shift point) queries the 27 bins around its own.
    atom_bins = torch.floor((positions - origin[batch]) / cutoff_A).long() + 1
    neighbour_bin = torch.arange(27, device=device)
    offsets = torch.stack([neighbour_bin // 9, (neighbour_bin // 3) % 3, neighbour_bin % 3], dim=1) - 1
    query_keys = _bin_key(batch[:, None], atom_bins[:, None, :] + offsets, grid).reshape(-1)
    start = torch.searchsorted(point_keys, query_keys, side="left")
    end = torch.searchsorted(point_keys, query_keys, side="right")
    query, index = _ragged_arange(end - start)
    src = torch.div(query, 27, rounding_mode="floor")
    point = start[query] + index

    vectors = point_positions.index_select(0, point) - positions.index_select(0, src)
    keep = (vectors * vectors).sum(dim=1) < cutoff_A**2
    src, point = src[keep], point[keep]
    dst, shifts = point_atom[point], shifts.index_select(0, point)
    keep = (dst != src) | (shifts != 0).any(dim=1)
    src, dst, shifts = src[keep], dst[keep], shifts[keep]
    return src, dst, shifts + wrap[src] - wrap[dst]


def edge_vectors(
    positions_A: torch.Tensor,
    cell_A: torch.Tensor,
    pbc: torch.Tensor,
    atoms_ptr: torch.Tensor,
    cutoff_A: float,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Pairs within the cutoff and their vectors ``r_dst + shifts @ cell - r_src`` (Angstrom).

    The pairs come from `neighbour_list` (no gradient); the vectors ``[E, 3]`` are differentiable
    with respect to positions and cell, so forces and stress follow by autograd.
    """
    src, dst, shifts = neighbour_list(positions_A, cell_A, pbc, atoms_ptr, cutoff_A)
    if len(atoms_ptr) == 2:  # one structure: one small matrix product instead of E of them
        image = shifts.to(positions_A.dtype) @ cell_A[0]
    else:
        n_atoms = atoms_ptr[1:] - atoms_ptr[:-1]
        batch = torch.repeat_interleave(torch.arange(len(n_atoms), device=positions_A.device), n_atoms)
        image = torch.einsum("ei,eij->ej", shifts.to(positions_A.dtype), cell_A[batch[src]])
    return src, dst, positions_A.index_select(0, dst) - positions_A.index_select(0, src) + image


def pairs_of_one_structure(
    positions_A: np.ndarray, cell_A: np.ndarray, pbc: np.ndarray, cutoff_A: float, threads: int = 1
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """`neighbour_list` of one structure (NumPy inputs, Angstrom) by vesin's C++ cell list.

    Same pairs and conventions as `neighbour_list` (tested against it); one structure only, as in
    an ASE calculator, where it is several times faster than the batched PyTorch code. vesin runs
    on ``threads`` OpenMP threads (left to itself it takes every core, or ``OMP_NUM_THREADS``,
    whatever torch is set to). Returns long tensors ``(edge_src, edge_dst, cell_shifts)``.
    """
    src, dst, shifts = NeighborList(cutoff=float(cutoff_A), full_list=True, n_threads=int(threads)).compute(
        np.asarray(positions_A, dtype=np.float64),
        np.asarray(cell_A, dtype=np.float64),
        np.asarray(pbc, dtype=bool),
        "ijS",
    )
    return (
        torch.from_numpy(src.astype(np.int64)),
        torch.from_numpy(dst.astype(np.int64)),
        torch.from_numpy(shifts.astype(np.int64)),
    )
