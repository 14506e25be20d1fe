"""Fused Triton kernels for the Bessel x cosine-cutoff radial basis (distances in Angstrom).

Forward: ``basis[e, n] = sqrt(2/rc) sin(n pi r_e / rc) / r_e * 0.5 (cos(pi r_e / rc) + 1)``
for ``n = 1..n_radial``, zero for ``r_e >= rc``; same function as
`mlff_distill.reference.radial.bessel_cosine_basis`.
Backward: ``grad_r[e] = sum_n grad_out[e, n] * d basis[e, n] / dr`` with the analytic derivative.
The backward is itself differentiable (second derivative in PyTorch), so forces obtained with
``create_graph=True`` can be trained on.

On CUDA the kernels are autotuned (`triton.autotune`) over edges per program (BLOCK_E), warps and
stages, keyed on a power-of-two edge-count bucket, ``n_radial`` and the dtype. Passing ``config``
launches one explicit `triton.Config` instead; under ``TRITON_INTERPRET=1`` (CPU) `DEFAULT_CONFIG`
is used when no config is given, because the interpreter cannot autotune.
"""

import math

import torch
import triton
import triton.language as tl
from triton.runtime import KernelInterface
from triton.runtime.interpreter import InterpretedFunction

DEFAULT_CONFIG = triton.Config({"BLOCK_E": 128}, num_warps=4, num_stages=1)
AUTOTUNE_CONFIGS = [
    triton.Config({"BLOCK_E": block_e}, num_warps=num_warps, num_stages=num_stages)
    for block_e in (64, 128, 256, 512)
    for num_warps in (2, 4, 8)
    for num_stages in (1, 2)
]
AUTOTUNE_KEY = ["E_BUCKET", "N_RADIAL"]


@triton.jit(do_not_specialize=["n_edges", "E_BUCKET"])
def _bessel_cosine_fwd_kernel(
    r_ptr,
    out_ptr,
    n_edges,
    E_BUCKET,  # autotuning key only
    N_RADIAL: tl.constexpr,
    BLOCK_N: tl.constexpr,
    CUTOFF: tl.constexpr,
    FREQ: tl.constexpr,
    PREFACTOR: tl.constexpr,
    BLOCK_E: tl.constexpr,
):
    offs_e = (tl.program_id(0) * BLOCK_E + tl.arange(0, BLOCK_E)).to(tl.int64)
    mask_e = offs_e < n_edges
    r = tl.load(r_ptr + offs_e, mask=mask_e, other=1.0)
    offs_n = tl.arange(0, BLOCK_N)
    mask_n = offs_n < N_RADIAL
    k = (offs_n + 1).to(r.dtype) * FREQ
    bessel = PREFACTOR * tl.sin(k[None, :] * r[:, None]) / r[:, None]
    envelope = tl.where(r < CUTOFF, 0.5 * (tl.cos(FREQ * r) + 1.0), 0.0)
    out = bessel * envelope[:, None]
    ptrs = out_ptr + offs_e[:, None] * N_RADIAL + offs_n[None, :]
    tl.store(ptrs, out, mask=mask_e[:, None] & mask_n[None, :])


@triton.jit(do_not_specialize=["n_edges", "E_BUCKET"])
def _bessel_cosine_bwd_kernel(
    r_ptr,
    grad_out_ptr,
    grad_r_ptr,
    n_edges,
    E_BUCKET,  # autotuning key only
    N_RADIAL: tl.constexpr,
    BLOCK_N: tl.constexpr,
    CUTOFF: tl.constexpr,
    FREQ: tl.constexpr,
    PREFACTOR: tl.constexpr,
    BLOCK_E: tl.constexpr,
):
    offs_e = (tl.program_id(0) * BLOCK_E + tl.arange(0, BLOCK_E)).to(tl.int64)
    mask_e = offs_e < n_edges
    r = tl.load(r_ptr + offs_e, mask=mask_e, other=1.0)
    offs_n = tl.arange(0, BLOCK_N)
    mask_n = offs_n < N_RADIAL
    ptrs = grad_out_ptr + offs_e[:, None] * N_RADIAL + offs_n[None, :]
    grad_out = tl.load(ptrs, mask=mask_e[:, None] & mask_n[None, :], other=0.0)
    k = (offs_n + 1).to(r.dtype) * FREQ
    arg = k[None, :] * r[:, None]
    inv_r = 1.0 / r[:, None]
    bessel = tl.sin(arg) * inv_r
    d_bessel = (k[None, :] * tl.cos(arg) - bessel) * inv_r
    inside = r < CUTOFF
    envelope = tl.where(inside, 0.5 * (tl.cos(FREQ * r) + 1.0), 0.0)
    d_envelope = tl.where(inside, -0.5 * FREQ * tl.sin(FREQ * r), 0.0)
    d_basis = PREFACTOR * (d_bessel * envelope[:, None] + bessel * d_envelope[:, None])
    tl.store(grad_r_ptr + offs_e, tl.sum(grad_out * d_basis, axis=1), mask=mask_e)


bessel_cosine_fwd_autotuned = triton.autotune(configs=AUTOTUNE_CONFIGS, key=AUTOTUNE_KEY)(_bessel_cosine_fwd_kernel)
bessel_cosine_bwd_autotuned = triton.autotune(configs=AUTOTUNE_CONFIGS, key=AUTOTUNE_KEY)(_bessel_cosine_bwd_kernel)
INTERPRETED: bool = isinstance(_bessel_cosine_fwd_kernel, InterpretedFunction)


def edge_bucket(n_edges: int) -> int:
    """Autotuning bucket of an edge count: the next power of two (>= 1)."""
    return 1 << max(n_edges - 1, 0).bit_length()


def config_dict(config: triton.Config) -> dict:
    """``{"BLOCK_E", "num_warps", "num_stages"}`` of a kernel config."""
    return {"BLOCK_E": config.kwargs["BLOCK_E"], "num_warps": config.num_warps, "num_stages": config.num_stages}


def _launch(
    kernel: KernelInterface,
    autotuned: KernelInterface,
    tensors: tuple,
    n_edges: int,
    n_radial: int,
    cutoff_A: float,
    config: triton.Config | None,
) -> None:
    """Launch ``kernel`` (explicit/default config) or ``autotuned`` over ``n_edges`` edges."""
    meta = {
        "N_RADIAL": n_radial,
        "BLOCK_N": triton.next_power_of_2(n_radial),
        "CUTOFF": cutoff_A,
        "FREQ": math.pi / cutoff_A,
        "PREFACTOR": math.sqrt(2.0 / cutoff_A),
    }

    def grid(launch_meta: dict) -> tuple[int]:
        return (triton.cdiv(n_edges, launch_meta["BLOCK_E"]),)

    if config is None and not INTERPRETED:
        autotuned[grid](*tensors, n_edges, edge_bucket(n_edges), **meta)
    else:
        kernel[grid](*tensors, n_edges, edge_bucket(n_edges), **meta, **(config or DEFAULT_CONFIG).all_kwargs())


def _basis_derivatives_torch(r: torch.Tensor, n_radial: int, cutoff_A: float) -> tuple[torch.Tensor, torch.Tensor]:
    """First and second derivatives of the basis wrt distance, ``[E, n_radial]`` each (PyTorch, differentiable)."""
    rr = r.unsqueeze(-1)
    freq = math.pi / cutoff_A
    k = torch.arange(1, n_radial + 1, dtype=r.dtype, device=r.device) * freq
    sin, cos = torch.sin(k * rr), torch.cos(k * rr)
    bessel = sin / rr
    d_bessel = (k * cos - bessel) / rr
    d2_bessel = -k * k * bessel - 2.0 * d_bessel / rr
    inside = rr < cutoff_A
    zero = torch.zeros_like(rr)
    envelope = torch.where(inside, 0.5 * (torch.cos(freq * rr) + 1.0), zero)
    d_envelope = torch.where(inside, -0.5 * freq * torch.sin(freq * rr), zero)
    d2_envelope = torch.where(inside, -0.5 * freq * freq * torch.cos(freq * rr), zero)
    prefactor = math.sqrt(2.0 / cutoff_A)
    d1 = prefactor * (d_bessel * envelope + bessel * d_envelope)
    d2 = prefactor * (d2_bessel * envelope + 2.0 * d_bessel * d_envelope + bessel * d2_envelope)
    return d1, d2


class _BesselCosineGrad(torch.autograd.Function):
    """``grad_r = sum_n grad_out[:, n] * d basis[:, n] / dr`` (Triton); differentiable via PyTorch."""

    @staticmethod
    def forward(
        ctx, grad_out: torch.Tensor, r: torch.Tensor, n_radial: int, cutoff_A: float, config: triton.Config | None
    ) -> torch.Tensor:
        ctx.save_for_backward(grad_out, r)
        ctx.n_radial, ctx.cutoff_A = n_radial, cutoff_A
        grad_r = torch.empty_like(r)
        if r.numel() > 0:
            _launch(
                _bessel_cosine_bwd_kernel,
                bessel_cosine_bwd_autotuned,
                (r, grad_out, grad_r),
                r.numel(),
                n_radial,
                cutoff_A,
                config,
            )
        return grad_r

    @staticmethod
    def backward(ctx, grad_grad_r: torch.Tensor):
        grad_out, r = ctx.saved_tensors
        d1, d2 = _basis_derivatives_torch(r, ctx.n_radial, ctx.cutoff_A)
        grad_grad_out = grad_grad_r.unsqueeze(-1) * d1 if ctx.needs_input_grad[0] else None
        grad_r = grad_grad_r * (grad_out * d2).sum(-1) if ctx.needs_input_grad[1] else None
        return grad_grad_out, grad_r, None, None, None


class _BesselCosine(torch.autograd.Function):
    """Basis ``[E, n_radial]`` from distances ``[E]`` (Triton forward and backward)."""

    @staticmethod
    def forward(ctx, r: torch.Tensor, n_radial: int, cutoff_A: float, config: triton.Config | None) -> torch.Tensor:
        ctx.save_for_backward(r)
        ctx.n_radial, ctx.cutoff_A, ctx.config = n_radial, cutoff_A, config
        out = r.new_empty((r.numel(), n_radial))
        if r.numel() > 0:
            _launch(
                _bessel_cosine_fwd_kernel, bessel_cosine_fwd_autotuned, (r, out), r.numel(), n_radial, cutoff_A, config
            )
        return out

    @staticmethod
    def backward(ctx, grad_out: torch.Tensor):
        (r,) = ctx.saved_tensors
        grad_r = _BesselCosineGrad.apply(grad_out.contiguous(), r, ctx.n_radial, ctx.cutoff_A, ctx.config)
        return grad_r, None, None, None


def bessel_cosine_basis_triton(
    distances_A: torch.Tensor, n_radial: int, cutoff_A: float, config: triton.Config | None = None
) -> torch.Tensor:
    """Return ``[*distances_A.shape, n_radial]``, the Bessel x cosine-cutoff basis of distances in Angstrom.

    Same semantics as `mlff_distill.reference.radial.bessel_cosine_basis` (zero for ``r >= cutoff_A``;
    distances must be > 0). float32 inputs are computed in float32, float64 in float64. Differentiable
    to any order (first derivative in Triton, higher ones in PyTorch). ``config`` launches one explicit
    `triton.Config` (keys BLOCK_E, num_warps, num_stages) instead of autotuning.
    """
    if distances_A.dtype not in (torch.float32, torch.float64):
        raise TypeError(f"distances_A must be float32 or float64, got {distances_A.dtype}")
    if n_radial < 1:
        raise ValueError(f"n_radial must be >= 1, got {n_radial}")
    if not (distances_A.is_cuda or INTERPRETED):
        raise RuntimeError(
            "Triton kernels need CUDA tensors, or TRITON_INTERPRET=1 set before importing triton "
            "to run them on CPU in the interpreter"
        )
    r = distances_A.reshape(-1).contiguous()
    out = _BesselCosine.apply(r, n_radial, float(cutoff_A), config)
    return out.reshape(*distances_A.shape, n_radial)
