"""Radial basis of the student: Bessel functions times a cosine cutoff.

Distances are in Angstrom. This is the PyTorch reference; the Triton kernels in
`mlff_distill.kernels` compute the same function and are tested against it.
"""

import math

import torch


def bessel_cosine_basis(distances_A: torch.Tensor, n_radial: int, cutoff_A: float) -> torch.Tensor:
    """Return ``[E, n_radial]``: ``sqrt(2/rc) sin(n pi r / rc) / r * 0.5 (cos(pi r / rc) + 1)``.

    ``n`` runs from 1 to ``n_radial``; the value is zero for ``r >= rc``. Distances must be > 0.
    """
    r = distances_A.unsqueeze(-1)
    n = torch.arange(1, n_radial + 1, dtype=r.dtype, device=r.device)
    bessel = math.sqrt(2.0 / cutoff_A) * torch.sin(n * (math.pi / cutoff_A) * r) / r
    envelope = 0.5 * (torch.cos((math.pi / cutoff_A) * r) + 1.0)
    envelope = torch.where(r < cutoff_A, envelope, torch.zeros_like(envelope))
    return bessel * envelope
