"""The edge part of one PaiNN interaction layer: filter the neighbours' messages and sum them per atom.

For edges ``e = (src, dst)`` with vectors ``vectors_A [E, 3]`` (Angstrom, ``r_dst - r_src`` up to
a cell shift), distances ``r`` and unit vectors ``u``:

- ``filter = bessel_cosine_basis(r) @ radial_weight``, ``[E, 3F]`` (zero beyond the cutoff);
- ``x = phi[dst] * filter``, split into ``(x_s, x_vv, x_vd)`` of ``F`` features each;
- ``ds[i] = sum_{e: src=i} x_s[e]``, ``[N, F]``;
- ``dv[i] = sum_{e: src=i} (x_vd[e] u[e] + x_vv[e] v[dst[e]])``, ``[N, 3, F]`` (the ``v`` term only
  when ``v`` is given).

This is the pure PyTorch reference, beneath both the student and the Triton kernels:
`edge_messages_from_basis` computes it from the basis and unit vectors (what the student's eager
path calls, every ``[E, F]`` and ``[E, 3, F]`` tensor contiguous, no ``v`` filter when ``v`` is
zero); `edge_message_torch` from the edge vectors (TorchScript-compatible), the reference that
`mlff_distill.kernels.edge_message` matches.
"""

from __future__ import annotations

from typing import Optional

import torch
import torch.nn.functional as F

from mlff_distill.reference.radial import bessel_cosine_basis
from mlff_distill.reference.rows import gather_rows, sum_rows


def edge_message_torch(
    phi: torch.Tensor,
    v: Optional[torch.Tensor],
    vectors_A: torch.Tensor,
    radial_weight: torch.Tensor,
    src: torch.Tensor,
    dst: torch.Tensor,
    n_atoms: int,
    cutoff_A: float,
    n_radial: int,
) -> tuple[torch.Tensor, torch.Tensor]:
    """``(ds [N, F], dv [N, 3, F])`` of one layer in PyTorch (see the module docstring).

    Args:
        phi: ``[N, 3F]`` per-atom message features (the message MLP's output).
        v: ``[N, 3, F]`` vector features, or ``None`` where they are all zero (first layer).
        vectors_A: ``[E, 3]`` edge vectors, Angstrom; lengths must be > 0.
        radial_weight: ``[n_radial, 3F]``, this layer's slice of ``radial_filter.weight.T``.
        src, dst: ``[E]`` atom indices; messages flow from ``dst`` into ``src``.
        n_atoms: ``N``.
        cutoff_A: radial cutoff, Angstrom.
        n_radial: number of Bessel basis functions.
    """
    distances = torch.linalg.vector_norm(vectors_A, dim=-1)
    units = vectors_A / distances.unsqueeze(-1)
    basis = bessel_cosine_basis(distances, n_radial, cutoff_A)
    return edge_messages_from_basis(phi, v, basis, radial_weight.t(), units, src, dst, n_atoms)


def edge_messages_from_basis(
    phi: torch.Tensor,
    v: Optional[torch.Tensor],
    basis: torch.Tensor,
    radial_weight: torch.Tensor,
    edge_unit: torch.Tensor,
    src: torch.Tensor,
    dst: torch.Tensor,
    n_atoms: int,
) -> tuple[torch.Tensor, torch.Tensor]:
    """``(ds [N, F], dv [N, 3, F])`` from the radial ``basis [E, R]``, this layer's rows of
    ``radial_filter.weight`` ``radial_weight [3F, R]`` and the unit edge vectors ``edge_unit
    [E, 3]``; ``phi``, ``v``, ``src``, ``dst`` as in `edge_message_torch`."""
    f = phi.shape[1] // 3
    phi_s, phi_vv, phi_vd = phi.split(f, dim=-1)
    x_s = gather_rows(phi_s, dst) * F.linear(basis, radial_weight[:f])
    x_vd = gather_rows(phi_vd, dst) * F.linear(basis, radial_weight[2 * f :])
    if v is None:
        dv = edge_unit.unsqueeze(-1) * x_vd.unsqueeze(1)
    else:
        filter_vv = F.linear(basis, radial_weight[f : 2 * f])
        v_dst = gather_rows(v * phi_vv.unsqueeze(1), dst) * filter_vv.unsqueeze(1)
        dv = torch.addcmul(v_dst, edge_unit.unsqueeze(-1), x_vd.unsqueeze(1))
    return sum_rows(x_s, src, n_atoms), sum_rows(dv, src, n_atoms)
