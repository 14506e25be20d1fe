"""The edge part of one PaiNN interaction layer: filter the neighbours' messages and sum them per atom.

For edges ``e = (src, dst)`` with vectors ``vectors_A [E, 3]`` (Angstrom, ``r_dst - r_src`` up to
a cell shift), distances ``r`` and unit vectors ``u``:

- ``filter = bessel_cosine_basis(r) @ radial_weight``, ``[E, 3F]`` (zero beyond the cutoff);
- ``x = phi[dst] * filter``, split into ``(x_s, x_vv, x_vd)`` of ``F`` features each;
- ``ds[i] = sum_{e: src=i} x_s[e]``, ``[N, F]``;
- ``dv[i] = sum_{e: src=i} (x_vd[e] u[e] + x_vv[e] v[dst[e]])``, ``[N, 3, F]`` (the ``v`` term only
  when ``v`` is given).

`edge_message_torch` is the PyTorch reference (TorchScript-compatible); `edge_message` dispatches
to it or to the fused Triton kernels of `mlff_distill.kernels.edge_message`.
"""

from __future__ import annotations

from typing import Optional

import torch

from mlff_distill.student.radial import bessel_cosine_basis

BACKENDS = ("torch", "triton")


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
    f = phi.shape[1] // 3
    distances = torch.linalg.vector_norm(vectors_A, dim=-1)
    units = vectors_A / distances.unsqueeze(-1)
    edge_filter = bessel_cosine_basis(distances, n_radial, cutoff_A) @ radial_weight
    x = phi.index_select(0, dst) * edge_filter
    x_s, x_vv, x_vd = x.split(f, dim=-1)
    dv = x_vd.unsqueeze(1) * units.unsqueeze(-1)
    if v is not None:
        dv = dv + v.index_select(0, dst) * x_vv.unsqueeze(1)
    ds = phi.new_zeros(n_atoms, f).index_add(0, src, x_s)
    return ds, phi.new_zeros(n_atoms, 3, f).index_add(0, src, dv)


def edge_message(
    phi: torch.Tensor,
    v: Optional[torch.Tensor],
    vectors_A: torch.Tensor,
    radial_weight: torch.Tensor,
    src: torch.Tensor,
    dst: torch.Tensor,
    n_atoms: int,
    cutoff_A: float,
    n_radial: int,
    backend: str = "torch",
) -> tuple[torch.Tensor, torch.Tensor]:
    """`edge_message_torch` (``backend="torch"``) or the fused Triton kernels (``"triton"``): same result.

    The Triton backend needs CUDA tensors, or ``TRITON_INTERPRET=1`` set before Triton is imported.
    """
    if backend == "torch":
        return edge_message_torch(phi, v, vectors_A, radial_weight, src, dst, n_atoms, cutoff_A, n_radial)
    if backend == "triton":
        from mlff_distill.kernels.edge_message import edge_message_triton

        return edge_message_triton(phi, v, vectors_A, radial_weight, src, dst, n_atoms, cutoff_A, n_radial)
    raise ValueError(f"unknown edge-message backend {backend!r}; use one of {BACKENDS}")
