"""The edge part of one interaction layer, by backend: the PyTorch reference
(`mlff_distill.reference.edge_message`) or the fused Triton kernels (`mlff_distill.kernels.edge_message`)."""

from __future__ import annotations

from typing import Optional

import torch

from mlff_distill.reference.edge_message import edge_message_torch

BACKENDS = ("torch", "triton")


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
        # Imported only when asked for: importing Triton's kernels fixes its interpreter mode.
        from mlff_distill.kernels.edge_message import edge_message_triton

        return edge_message_triton(phi, v, vectors_A, radial_weight, src, dst, n_atoms, cutoff_A, n_radial)
    raise ValueError(f"unknown edge-message backend {backend!r}; use one of {BACKENDS}")
