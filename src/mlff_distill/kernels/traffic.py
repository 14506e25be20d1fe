"""Memory traffic of the fused edge-message kernels, in bytes (the device peak: `triton.testing.get_dram_gbps`).

Counts are the bytes the kernels must move: every per-edge read (edge vector, ``src``/``dst``,
the gathered ``phi[dst]``, ``v[dst]`` and upstream gradients at ``src``) and every per-edge atomic
add (counted once, as a write) is counted once; weights once. Caches can serve repeated gathers of
the same atom, so "achieved" bandwidth from these counts is an effective figure and may approach or
pass the DRAM peak for small graphs.
"""

from __future__ import annotations

INDEX_BYTES = 8  # src and dst are int64


def edge_message_bytes(n_edges: int, n_features: int, n_radial: int, itemsize: int, has_v: bool, backward: bool) -> int:
    """Bytes moved by one forward (``backward=False``) or one backward pass over ``n_edges`` edges."""
    f = n_features
    weights = n_radial * 3 * f * itemsize
    if not backward:
        # vector, src, dst, phi[dst] (3F), v[dst] (3F), atomic ds (F) and dv (3F)
        per_edge = 3 * itemsize + 2 * INDEX_BYTES + (3 * f + (3 * f if has_v else 0) + f + 3 * f) * itemsize
        return n_edges * per_edge + weights
    # + g_ds[src] (F), g_dv[src] (3F); writes g_phi (3F), g_v (3F), g_vectors (3); g_w read-modify-write
    per_edge = (
        3 * itemsize
        + 2 * INDEX_BYTES
        + (3 * f + (3 * f if has_v else 0) + f + 3 * f + 3 * f + (3 * f if has_v else 0) + 3) * itemsize
    )
    return n_edges * per_edge + 2 * weights
