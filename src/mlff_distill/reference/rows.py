"""Row gathers and per-row sums over an index, written as ``torch.gather`` and ``scatter_add``.

``x.index_select(0, i)`` and ``zeros.index_add_(0, i, x)`` compute the same, but TorchInductor
compiles ``index_add`` (and the ``index_add`` that autograd makes of ``index_select``'s backward)
into loops of atomic adds when it generates code for more than one CPU thread, which made the
compiled student slower on two threads than on one. A ``scatter_add`` along dimension 0 with an
index expanded over the other dimensions is what Inductor hands back to ATen on several CPU threads
(``torch._inductor.config.cpp.fallback_scatter_reduce_sum``), whose kernel for that layout sorts the
index and sums each segment in parallel; ``gather``'s backward is such a ``scatter_add``. On one
thread Inductor fuses either form into plain loops.
"""

from __future__ import annotations

import torch


def _expanded(index: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """``index [E]`` viewed as ``[E, *like.shape[1:]]`` (stride 0 beyond the first dimension)."""
    shape = [index.shape[0]] + list(like.shape[1:])
    return index.view([index.shape[0]] + [1] * (like.dim() - 1)).expand(shape)


def gather_rows(x: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
    """``x[index]`` for ``x [N, ...]`` and a long ``index [E]``: ``[E, ...]``."""
    return torch.gather(x, 0, _expanded(index, x))


def sum_rows(x: torch.Tensor, index: torch.Tensor, n_rows: int) -> torch.Tensor:
    """``out [n_rows, ...]`` with ``out[k] = sum of x[e] over e with index[e] == k`` (``x [E, ...]``)."""
    out = x.new_zeros([n_rows] + list(x.shape[1:]))
    return out.scatter_add_(0, _expanded(index, x), x)
