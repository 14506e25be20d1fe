"""Angular moments of each atom's neighbourhood: three-body invariants beyond PaiNN's vectors.

A PaiNN block sees the directions to the neighbours through vector features, sums of ``w(r) u``:
the first angular order only. Their norms carry ``cos(theta)`` between pairs of neighbours, not
``cos^2`` or ``cos^3``, which is what tells a tetrahedral or hydrogen-bonded neighbourhood from
another with the same distances. This module adds the orders 2 and 3: for each atom ``i``, order
``l`` and channel ``c``,

    M_i[l, m, c] = sum over neighbours j of  w_c(r_ij, Z_j) Y_lm(u_ij)
    q_i[l, c]    = sum over m of M_i[l, m, c]^2 = sum over pairs (j, k) of w_c w_c P_l(u_ij . u_ik)

with ``Y_lm`` the real spherical harmonics in Schmidt's semi-normalisation (so that the sum over
``m`` is the Legendre polynomial ``P_l`` of the angle between two directions: rotation-invariant)
and ``w`` a radial filter of the Bessel basis times a per-species factor of the neighbour. The
invariants ``q`` go through a small MLP into the scalar features before the message passing.
This is the "power spectrum" of ACE or SOAP at orders 2 and 3, one channel set per order.

Units: the unit vectors are dimensionless; the filters act on the radial basis of distances in
Angstrom (`mlff_distill.reference.radial`).
"""

from __future__ import annotations

import math

import torch
from torch import nn

from mlff_distill.reference.rows import gather_rows, sum_rows

# The orders of moments this module adds (order l has 2 l + 1 components).
ORDERS = (2, 3)


def semi_normalised_harmonics(units: torch.Tensor, order: int) -> torch.Tensor:
    """``[E, 5]`` (orders 2) or ``[E, 12]`` (orders 2 and 3) real spherical harmonics of the unit
    vectors ``units [E, 3]``, Schmidt semi-normalised: ``sum_m Y_lm(a) Y_lm(b) = P_l(a . b)``."""
    # local constants: TorchScript cannot read module-level floats
    s3, s15, s3_8, s5_8 = math.sqrt(3.0), math.sqrt(15.0), math.sqrt(3.0 / 8.0), math.sqrt(5.0 / 8.0)
    x, y, z = units[:, 0], units[:, 1], units[:, 2]
    xx, yy, zz = x * x, y * y, z * z
    columns = [
        s3 * x * y,
        s3 * y * z,
        1.5 * zz - 0.5,
        s3 * x * z,
        0.5 * s3 * (xx - yy),
    ]
    if order >= 3:
        columns += [
            z * (2.5 * zz - 1.5),
            s3_8 * x * (5.0 * zz - 1.0),
            s3_8 * y * (5.0 * zz - 1.0),
            0.5 * s15 * z * (xx - yy),
            s15 * x * y * z,
            s5_8 * x * (xx - 3.0 * yy),
            s5_8 * y * (3.0 * xx - yy),
        ]
    return torch.stack(columns, dim=1)


class AngularMoments(nn.Module):
    """Scalar features ``[N, n_features]`` to add to each atom's: an MLP of the angular invariants
    ``q`` (module docstring) of orders ``2..order``, ``n_channels`` per order.

    Args:
        n_features: width of the student's scalar features (input and output).
        n_radial: size of the radial basis the filters read.
        order: highest angular order, 2 or 3.
        n_channels: radial channels per order.
    """

    def __init__(self, n_features: int, n_radial: int, order: int, n_channels: int) -> None:
        super().__init__()
        if order not in ORDERS:
            raise ValueError(f"angular order must be 2 or 3 (1: PaiNN's vectors only, no moments), got {order}")
        self.order = order
        self.n_channels = n_channels
        n_orders = order - 1
        self.neighbour_weight = nn.Linear(n_features, n_orders * n_channels)
        self.radial_filter = nn.Linear(n_radial, n_orders * n_channels, bias=False)
        self.mix = nn.Sequential(
            nn.Linear(n_orders * n_channels, n_features), nn.SiLU(), nn.Linear(n_features, n_features)
        )

    def forward(
        self, s: torch.Tensor, basis: torch.Tensor, edge_unit: torch.Tensor, src: torch.Tensor, dst: torch.Tensor
    ) -> torch.Tensor:
        """The scalar update ``[N, F]`` from the atoms' features ``s [N, F]``, the edges' radial
        ``basis [E, R]`` and unit vectors ``edge_unit [E, 3]`` (from ``src`` to ``dst``)."""
        harmonics = semi_normalised_harmonics(edge_unit, self.order)  # [E, M]
        weights = gather_rows(self.neighbour_weight(s), dst) * self.radial_filter(basis)  # [E, L * C]
        invariants = []
        start = 0
        for index in range(self.order - 1):
            n_m = 5 + 2 * index  # 2 l + 1 for l = index + 2
            w = weights[:, index * self.n_channels : (index + 1) * self.n_channels]
            y = harmonics[:, start : start + n_m]
            moments = sum_rows(y.unsqueeze(-1) * w.unsqueeze(1), src, s.shape[0])  # [N, M_l, C]
            invariants.append((moments * moments).sum(dim=1))
            start += n_m
        return self.mix(torch.cat(invariants, dim=-1))
