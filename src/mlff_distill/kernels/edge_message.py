"""Fused Triton kernels for the edge part of one student interaction layer (Angstrom, eV units throughout).

Same operation as `mlff_distill.reference.edge_message.edge_message_torch`: per edge the distance and
unit vector, the Bessel x cosine-cutoff basis, the filter ``basis @ radial_weight``, the product with
``phi[dst]`` (and ``v[dst]``), and the scatter-add into ``src``, all in ONE pass over the edges:

- forward: one kernel; each program takes ``BLOCK_E`` edges x ``BLOCK_F`` features, rebuilds the
  filter in registers and atomically adds ``ds [N, F]`` and ``dv [N, 3, F]``; no ``[E, *]`` tensor
  is written to memory.
- backward: one kernel, the same pass again, giving the gradients with respect to ``phi`` and ``v``
  (atomic adds into ``dst``), ``vectors_A`` (forces and stress; atomic adds per edge, since feature
  blocks each contribute) and ``radial_weight`` (training; summed over the program's edges first).
- double backward (training on forces): PyTorch, by differentiating the reference's gradient.

On CUDA both kernels are autotuned (`triton.autotune`) over BLOCK_E, BLOCK_F, warps and stages,
keyed on a power-of-two edge-count bucket and the feature width; configs found by the ``tune``
stage can be installed with `set_tuned_configs` so inference starts tuned. Under
``TRITON_INTERPRET=1`` (CPU) the interpreter cannot autotune: `DEFAULT_CONFIG` (or ``config``) is used.
"""

from __future__ import annotations

import math
from typing import Optional

import torch
import triton
import triton.language as tl
from triton.runtime import KernelInterface
from triton.runtime.interpreter import InterpretedFunction

from mlff_distill.kernels.bessel_cosine import edge_bucket
from mlff_distill.reference.edge_message import edge_message_torch

DEFAULT_CONFIG = triton.Config({"BLOCK_E": 32, "BLOCK_F": 32}, num_warps=4, num_stages=1)
AUTOTUNE_CONFIGS = [
    triton.Config({"BLOCK_E": block_e, "BLOCK_F": block_f}, num_warps=num_warps, num_stages=num_stages)
    for block_e in (16, 32, 64, 128)
    for block_f in (16, 32, 64)
    for num_warps in (2, 4, 8)
    for num_stages in (1, 2)
]
AUTOTUNE_KEY = ["E_BUCKET", "N_FEATURES"]
KERNELS = ("forward", "backward")

# (kernel, edge bucket, feature width) -> config chosen by the tune stage (see `set_tuned_configs`).
_TUNED: dict[tuple[str, int, int], triton.Config] = {}


@triton.jit
def _basis_and_derivative(r, inv_r, envelope, d_envelope, n: tl.constexpr, FREQ: tl.constexpr, PREFACTOR: tl.constexpr):
    """Basis function ``n`` (0-based) at ``r`` and its derivative d/dr, per edge.

    ``n + 1`` multiplies tensors of r's dtype only, so float64 inputs stay float64 throughout.
    """
    arg = (n + 1) * (FREQ * r)
    bessel = tl.sin(arg) * inv_r
    d_bessel = ((n + 1) * (FREQ * tl.cos(arg)) - bessel) * inv_r
    return PREFACTOR * bessel * envelope, PREFACTOR * (d_bessel * envelope + bessel * d_envelope)


@triton.jit
def _edge_geometry(
    vec_ptr,
    n_edges,
    F: tl.constexpr,
    CUTOFF: tl.constexpr,
    FREQ: tl.constexpr,
    BLOCK_E: tl.constexpr,
    BLOCK_F: tl.constexpr,
):
    """This program's edge and feature offsets and masks; edge vectors, lengths, 1/length, cutoff envelope
    and its derivative. Masked edges read the vector (1, 0, 0), so nothing divides by zero."""
    offs_e = (tl.program_id(0) * BLOCK_E + tl.arange(0, BLOCK_E)).to(tl.int64)
    mask_e = offs_e < n_edges
    offs_f = tl.program_id(1) * BLOCK_F + tl.arange(0, BLOCK_F)
    mask_f = offs_f < F
    vx = tl.load(vec_ptr + 3 * offs_e, mask=mask_e, other=1.0)
    vy = tl.load(vec_ptr + 3 * offs_e + 1, mask=mask_e, other=0.0)
    vz = tl.load(vec_ptr + 3 * offs_e + 2, mask=mask_e, other=0.0)
    r = tl.sqrt(vx * vx + vy * vy + vz * vz)
    inside = r < CUTOFF
    envelope = tl.where(inside, 0.5 * (tl.cos(FREQ * r) + 1.0), 0.0)
    d_envelope = tl.where(inside, -0.5 * FREQ * tl.sin(FREQ * r), 0.0)
    return offs_e, mask_e, offs_f, mask_f, vx, vy, vz, r, 1.0 / r, envelope, d_envelope


@triton.jit
def _filters(
    w_ptr,
    r,
    inv_r,
    envelope,
    d_envelope,
    offs_f,
    mask_f,
    dtype: tl.constexpr,
    F: tl.constexpr,
    N_RADIAL: tl.constexpr,
    FREQ: tl.constexpr,
    PREFACTOR: tl.constexpr,
    BLOCK_E: tl.constexpr,
    BLOCK_F: tl.constexpr,
):
    """The three ``[BLOCK_E, BLOCK_F]`` filter blocks ``basis @ w`` (scalar, vector-vector, vector-direction)."""
    filter_s = tl.zeros([BLOCK_E, BLOCK_F], dtype=dtype)
    filter_vv = tl.zeros([BLOCK_E, BLOCK_F], dtype=dtype)
    filter_vd = tl.zeros([BLOCK_E, BLOCK_F], dtype=dtype)
    for n in tl.static_range(N_RADIAL):
        basis, _ = _basis_and_derivative(r, inv_r, envelope, d_envelope, n, FREQ, PREFACTOR)
        w_row = w_ptr + n * 3 * F + offs_f
        filter_s += basis[:, None] * tl.load(w_row, mask=mask_f, other=0.0)[None, :]
        filter_vv += basis[:, None] * tl.load(w_row + F, mask=mask_f, other=0.0)[None, :]
        filter_vd += basis[:, None] * tl.load(w_row + 2 * F, mask=mask_f, other=0.0)[None, :]
    return filter_s, filter_vv, filter_vd


@triton.jit(do_not_specialize=["n_edges", "E_BUCKET"])
def _edge_message_fwd_kernel(
    vec_ptr,
    phi_ptr,
    v_ptr,
    w_ptr,
    src_ptr,
    dst_ptr,
    ds_ptr,
    dv_ptr,
    n_edges,
    E_BUCKET,  # autotuning key only
    N_FEATURES: tl.constexpr,
    N_RADIAL: tl.constexpr,
    HAS_V: tl.constexpr,
    CUTOFF: tl.constexpr,
    FREQ: tl.constexpr,
    PREFACTOR: tl.constexpr,
    BLOCK_E: tl.constexpr,
    BLOCK_F: tl.constexpr,
):
    F: tl.constexpr = N_FEATURES
    offs_e, mask_e, offs_f, mask_f, vx, vy, vz, r, inv_r, envelope, d_envelope = _edge_geometry(
        vec_ptr, n_edges, F, CUTOFF, FREQ, BLOCK_E, BLOCK_F
    )
    mask = mask_e[:, None] & mask_f[None, :]
    dtype = phi_ptr.dtype.element_ty
    filter_s, filter_vv, filter_vd = _filters(
        w_ptr, r, inv_r, envelope, d_envelope, offs_f, mask_f, dtype, F, N_RADIAL, FREQ, PREFACTOR, BLOCK_E, BLOCK_F
    )

    src = tl.load(src_ptr + offs_e, mask=mask_e, other=0).to(tl.int64)
    dst = tl.load(dst_ptr + offs_e, mask=mask_e, other=0).to(tl.int64)
    phi_row = phi_ptr + dst[:, None] * 3 * F + offs_f[None, :]
    x_s = tl.load(phi_row, mask=mask, other=0.0) * filter_s
    x_vv = tl.load(phi_row + F, mask=mask, other=0.0) * filter_vv
    x_vd = tl.load(phi_row + 2 * F, mask=mask, other=0.0) * filter_vd
    tl.atomic_add(ds_ptr + src[:, None] * F + offs_f[None, :], x_s, mask=mask, sem="relaxed")

    out_row = dv_ptr + src[:, None] * 3 * F + offs_f[None, :]
    v_row = v_ptr + dst[:, None] * 3 * F + offs_f[None, :]
    dv_x = x_vd * (vx * inv_r)[:, None]
    dv_y = x_vd * (vy * inv_r)[:, None]
    dv_z = x_vd * (vz * inv_r)[:, None]
    if HAS_V:
        dv_x += tl.load(v_row, mask=mask, other=0.0) * x_vv
        dv_y += tl.load(v_row + F, mask=mask, other=0.0) * x_vv
        dv_z += tl.load(v_row + 2 * F, mask=mask, other=0.0) * x_vv
    tl.atomic_add(out_row, dv_x, mask=mask, sem="relaxed")
    tl.atomic_add(out_row + F, dv_y, mask=mask, sem="relaxed")
    tl.atomic_add(out_row + 2 * F, dv_z, mask=mask, sem="relaxed")


@triton.jit(do_not_specialize=["n_edges", "E_BUCKET"])
def _edge_message_bwd_kernel(
    vec_ptr,
    phi_ptr,
    v_ptr,
    w_ptr,
    src_ptr,
    dst_ptr,
    g_ds_ptr,
    g_dv_ptr,
    g_vec_ptr,
    g_phi_ptr,
    g_v_ptr,
    g_w_ptr,
    n_edges,
    E_BUCKET,  # autotuning key only
    N_FEATURES: tl.constexpr,
    N_RADIAL: tl.constexpr,
    HAS_V: tl.constexpr,
    CUTOFF: tl.constexpr,
    FREQ: tl.constexpr,
    PREFACTOR: tl.constexpr,
    BLOCK_E: tl.constexpr,
    BLOCK_F: tl.constexpr,
):
    F: tl.constexpr = N_FEATURES
    offs_e, mask_e, offs_f, mask_f, vx, vy, vz, r, inv_r, envelope, d_envelope = _edge_geometry(
        vec_ptr, n_edges, F, CUTOFF, FREQ, BLOCK_E, BLOCK_F
    )
    mask = mask_e[:, None] & mask_f[None, :]
    dtype = phi_ptr.dtype.element_ty
    filter_s, filter_vv, filter_vd = _filters(
        w_ptr, r, inv_r, envelope, d_envelope, offs_f, mask_f, dtype, F, N_RADIAL, FREQ, PREFACTOR, BLOCK_E, BLOCK_F
    )
    ux, uy, uz = vx * inv_r, vy * inv_r, vz * inv_r

    src = tl.load(src_ptr + offs_e, mask=mask_e, other=0).to(tl.int64)
    dst = tl.load(dst_ptr + offs_e, mask=mask_e, other=0).to(tl.int64)
    phi_row = phi_ptr + dst[:, None] * 3 * F + offs_f[None, :]
    phi_s = tl.load(phi_row, mask=mask, other=0.0)
    phi_vv = tl.load(phi_row + F, mask=mask, other=0.0)
    phi_vd = tl.load(phi_row + 2 * F, mask=mask, other=0.0)
    g_s = tl.load(g_ds_ptr + src[:, None] * F + offs_f[None, :], mask=mask, other=0.0)
    g_row = g_dv_ptr + src[:, None] * 3 * F + offs_f[None, :]
    g_x = tl.load(g_row, mask=mask, other=0.0)
    g_y = tl.load(g_row + F, mask=mask, other=0.0)
    g_z = tl.load(g_row + 2 * F, mask=mask, other=0.0)

    # d loss / d x_k for the three parts of x = phi[dst] * filter
    g_x_vd = g_x * ux[:, None] + g_y * uy[:, None] + g_z * uz[:, None]
    x_vd = phi_vd * filter_vd
    g_ux = tl.sum(g_x * x_vd, axis=1)
    g_uy = tl.sum(g_y * x_vd, axis=1)
    g_uz = tl.sum(g_z * x_vd, axis=1)
    if HAS_V:
        v_row = v_ptr + dst[:, None] * 3 * F + offs_f[None, :]
        g_x_vv = (
            g_x * tl.load(v_row, mask=mask, other=0.0)
            + g_y * tl.load(v_row + F, mask=mask, other=0.0)
            + g_z * tl.load(v_row + 2 * F, mask=mask, other=0.0)
        )
        x_vv = phi_vv * filter_vv
        g_v_row = g_v_ptr + dst[:, None] * 3 * F + offs_f[None, :]
        tl.atomic_add(g_v_row, g_x * x_vv, mask=mask, sem="relaxed")
        tl.atomic_add(g_v_row + F, g_y * x_vv, mask=mask, sem="relaxed")
        tl.atomic_add(g_v_row + 2 * F, g_z * x_vv, mask=mask, sem="relaxed")
    else:
        g_x_vv = tl.zeros([BLOCK_E, BLOCK_F], dtype=dtype)

    g_phi_row = g_phi_ptr + dst[:, None] * 3 * F + offs_f[None, :]
    tl.atomic_add(g_phi_row, g_s * filter_s, mask=mask, sem="relaxed")
    tl.atomic_add(g_phi_row + F, g_x_vv * filter_vv, mask=mask, sem="relaxed")
    tl.atomic_add(g_phi_row + 2 * F, g_x_vd * filter_vd, mask=mask, sem="relaxed")

    g_filter_s = g_s * phi_s
    g_filter_vv = g_x_vv * phi_vv
    g_filter_vd = g_x_vd * phi_vd
    g_r = tl.zeros([BLOCK_E], dtype=dtype)
    for n in tl.static_range(N_RADIAL):
        basis, d_basis = _basis_and_derivative(r, inv_r, envelope, d_envelope, n, FREQ, PREFACTOR)
        w_row = w_ptr + n * 3 * F + offs_f
        w_s = tl.load(w_row, mask=mask_f, other=0.0)
        w_vv = tl.load(w_row + F, mask=mask_f, other=0.0)
        w_vd = tl.load(w_row + 2 * F, mask=mask_f, other=0.0)
        g_basis = tl.sum(g_filter_s * w_s[None, :] + g_filter_vv * w_vv[None, :] + g_filter_vd * w_vd[None, :], axis=1)
        g_r += g_basis * d_basis
        g_w_row = g_w_ptr + n * 3 * F + offs_f
        tl.atomic_add(g_w_row, tl.sum(basis[:, None] * g_filter_s, axis=0), mask=mask_f, sem="relaxed")
        tl.atomic_add(g_w_row + F, tl.sum(basis[:, None] * g_filter_vv, axis=0), mask=mask_f, sem="relaxed")
        tl.atomic_add(g_w_row + 2 * F, tl.sum(basis[:, None] * g_filter_vd, axis=0), mask=mask_f, sem="relaxed")

    # r = |vec|, u = vec / r: d/dvec = g_r u + (g_u - (g_u . u) u) / r
    radial_part = g_ux * ux + g_uy * uy + g_uz * uz
    tl.atomic_add(g_vec_ptr + 3 * offs_e, g_r * ux + (g_ux - radial_part * ux) * inv_r, mask=mask_e, sem="relaxed")
    tl.atomic_add(g_vec_ptr + 3 * offs_e + 1, g_r * uy + (g_uy - radial_part * uy) * inv_r, mask=mask_e, sem="relaxed")
    tl.atomic_add(g_vec_ptr + 3 * offs_e + 2, g_r * uz + (g_uz - radial_part * uz) * inv_r, mask=mask_e, sem="relaxed")


edge_message_fwd_autotuned = triton.autotune(
    configs=AUTOTUNE_CONFIGS, key=AUTOTUNE_KEY, reset_to_zero=["ds_ptr", "dv_ptr"]
)(_edge_message_fwd_kernel)
edge_message_bwd_autotuned = triton.autotune(
    configs=AUTOTUNE_CONFIGS, key=AUTOTUNE_KEY, reset_to_zero=["g_vec_ptr", "g_phi_ptr", "g_v_ptr", "g_w_ptr"]
)(_edge_message_bwd_kernel)
AUTOTUNED: dict[str, KernelInterface] = {"forward": edge_message_fwd_autotuned, "backward": edge_message_bwd_autotuned}
INTERPRETED: bool = isinstance(_edge_message_fwd_kernel, InterpretedFunction)


def config_dict(config: triton.Config) -> dict:
    """``{"BLOCK_E", "BLOCK_F", "num_warps", "num_stages"}`` of a kernel config (JSON-friendly)."""
    return {
        "BLOCK_E": config.kwargs["BLOCK_E"],
        "BLOCK_F": config.kwargs["BLOCK_F"],
        "num_warps": config.num_warps,
        "num_stages": config.num_stages,
    }


def config_from_dict(values: dict) -> triton.Config:
    """Inverse of `config_dict`."""
    return triton.Config(
        {"BLOCK_E": int(values["BLOCK_E"]), "BLOCK_F": int(values["BLOCK_F"])},
        num_warps=int(values["num_warps"]),
        num_stages=int(values["num_stages"]),
    )


def set_tuned_configs(configs: dict[tuple[str, int, int], triton.Config]) -> None:
    """Install tuned configs, keyed ``(kernel in KERNELS, edge bucket, feature width)``; replaces earlier ones.

    A launch whose feature width has tuned configs uses the one of the nearest edge bucket instead
    of autotuning.
    """
    for kernel, _, _ in configs:
        if kernel not in KERNELS:
            raise ValueError(f"unknown kernel {kernel!r} in tuned configs; use one of {KERNELS}")
    _TUNED.clear()
    _TUNED.update(configs)


def tuned_config(kernel: str, n_edges: int, n_features: int) -> Optional[triton.Config]:
    """The installed config of ``kernel`` for the edge bucket nearest (in log2) to ``n_edges``, if any."""
    candidates = [bucket for (name, bucket, width) in _TUNED if name == kernel and width == n_features]
    if not candidates:
        return None
    target = math.log2(edge_bucket(n_edges))
    bucket = min(candidates, key=lambda b: (abs(math.log2(b) - target), b))
    return _TUNED[(kernel, bucket, n_features)]


def _launch(
    kernel_name: str,
    kernel: KernelInterface,
    tensors: tuple,
    n_edges: int,
    n_features: int,
    n_radial: int,
    cutoff_A: float,
    has_v: bool,
    config: Optional[triton.Config],
) -> None:
    """Launch ``kernel`` with ``config`` (else a tuned or, interpreted, the default one) or autotune it."""
    meta = {
        "N_FEATURES": n_features,
        "N_RADIAL": n_radial,
        "HAS_V": has_v,
        "CUTOFF": cutoff_A,
        "FREQ": math.pi / cutoff_A,
        "PREFACTOR": math.sqrt(2.0 / cutoff_A),
    }

    def grid(launch_meta: dict) -> tuple[int, int]:
        return triton.cdiv(n_edges, launch_meta["BLOCK_E"]), triton.cdiv(n_features, launch_meta["BLOCK_F"])

    if config is None and not INTERPRETED:
        config = tuned_config(kernel_name, n_edges, n_features)
    if config is None and not INTERPRETED:
        AUTOTUNED[kernel_name][grid](*tensors, n_edges, edge_bucket(n_edges), **meta)
    else:
        kernel[grid](*tensors, n_edges, edge_bucket(n_edges), **meta, **(config or DEFAULT_CONFIG).all_kwargs())


def edge_message_backward_triton(
    g_ds: torch.Tensor,
    g_dv: torch.Tensor,
    phi: torch.Tensor,
    v: Optional[torch.Tensor],
    vectors_A: torch.Tensor,
    radial_weight: torch.Tensor,
    src: torch.Tensor,
    dst: torch.Tensor,
    cutoff_A: float,
    config: Optional[triton.Config] = None,
) -> tuple[torch.Tensor, Optional[torch.Tensor], torch.Tensor, torch.Tensor]:
    """Gradients ``(phi, v or None, vectors_A, radial_weight)`` of ``<g_ds, ds> + <g_dv, dv>`` (one kernel).

    Inputs must be contiguous, checked as in `edge_message_triton`; no autograd here.
    """
    n_radial, n_features = radial_weight.shape[0], phi.shape[1] // 3
    g_phi, g_vec, g_w = torch.zeros_like(phi), torch.zeros_like(vectors_A), torch.zeros_like(radial_weight)
    g_v = torch.zeros_like(v) if v is not None else None
    if src.numel() > 0 and n_features > 0:
        _launch(
            "backward",
            _edge_message_bwd_kernel,
            (
                vectors_A,
                phi,
                v if v is not None else phi,
                radial_weight,
                src,
                dst,
                g_ds.contiguous(),
                g_dv.contiguous(),
                g_vec,
                g_phi,
                g_v if g_v is not None else g_phi,
                g_w,
            ),
            src.numel(),
            n_features,
            n_radial,
            cutoff_A,
            v is not None,
            config,
        )
    return g_phi, g_v, g_vec, g_w


class _EdgeMessageGrad(torch.autograd.Function):
    """First-order gradients in Triton; their own gradients (training on forces) through the PyTorch reference."""

    @staticmethod
    def forward(ctx, g_ds, g_dv, phi, v, vectors_A, radial_weight, src, dst, cutoff_A, config):
        ctx.save_for_backward(g_ds, g_dv, phi, v, vectors_A, radial_weight, src, dst)
        ctx.cutoff_A = cutoff_A
        return edge_message_backward_triton(g_ds, g_dv, phi, v, vectors_A, radial_weight, src, dst, cutoff_A, config)

    @staticmethod
    def backward(ctx, gg_phi, gg_v, gg_vec, gg_w):
        g_ds, g_dv, phi, v, vectors_A, radial_weight, src, dst = ctx.saved_tensors
        with torch.enable_grad():
            leaves = [
                t.detach().requires_grad_(True) if t is not None else None
                for t in (g_ds, g_dv, phi, v, vectors_A, radial_weight)
            ]
            g_ds_, g_dv_, phi_, v_, vectors_, weight_ = leaves
            ds, dv = edge_message_torch(
                phi_, v_, vectors_, weight_, src, dst, phi.shape[0], ctx.cutoff_A, radial_weight.shape[0]
            )
            wrt = [t for t in (phi_, v_, vectors_, weight_) if t is not None]
            first = torch.autograd.grad((ds, dv), wrt, (g_ds_, g_dv_), create_graph=True)
            seeds = [g for g, t in zip((gg_phi, gg_v, gg_vec, gg_w), (phi_, v_, vectors_, weight_)) if t is not None]
            pairs = [(out, seed) for out, seed in zip(first, seeds) if seed is not None]
            inputs = [t for t in leaves if t is not None]
            if not pairs:
                return (None,) * 10
            grads = torch.autograd.grad([p[0] for p in pairs], inputs, [p[1] for p in pairs], allow_unused=True)
        by_input = iter(grads)
        result = [next(by_input) if t is not None else None for t in leaves]
        return (*result, None, None, None, None)


class _EdgeMessage(torch.autograd.Function):
    """``(ds, dv)`` of one layer: forward and backward in fused Triton kernels."""

    @staticmethod
    def forward(ctx, phi, v, vectors_A, radial_weight, src, dst, n_atoms, cutoff_A, config):
        n_radial, n_features = radial_weight.shape[0], phi.shape[1] // 3
        ds = phi.new_zeros(n_atoms, n_features)
        dv = phi.new_zeros(n_atoms, 3, n_features)
        if src.numel() > 0 and n_features > 0:
            _launch(
                "forward",
                _edge_message_fwd_kernel,
                (vectors_A, phi, v if v is not None else phi, radial_weight, src, dst, ds, dv),
                src.numel(),
                n_features,
                n_radial,
                cutoff_A,
                v is not None,
                config,
            )
        ctx.save_for_backward(phi, v, vectors_A, radial_weight, src, dst)
        ctx.cutoff_A, ctx.config = cutoff_A, config
        return ds, dv

    @staticmethod
    def backward(ctx, g_ds, g_dv):
        phi, v, vectors_A, radial_weight, src, dst = ctx.saved_tensors
        g_phi, g_v, g_vec, g_w = _EdgeMessageGrad.apply(
            g_ds.contiguous(), g_dv.contiguous(), phi, v, vectors_A, radial_weight, src, dst, ctx.cutoff_A, ctx.config
        )
        return g_phi, g_v, g_vec, g_w, None, None, None, None, None


def edge_message_triton(
    phi: torch.Tensor,
    v: Optional[torch.Tensor],
    vectors_A: torch.Tensor,
    radial_weight: torch.Tensor,
    src: torch.Tensor,
    dst: torch.Tensor,
    n_atoms: int,
    cutoff_A: float,
    n_radial: int,
    config: Optional[triton.Config] = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """``(ds [N, F], dv [N, 3, F])`` as `mlff_distill.reference.edge_message.edge_message_torch`, fused in Triton.

    Arguments as there (``vectors_A`` in Angstrom, ``cutoff_A`` in Angstrom). Differentiable with
    respect to ``phi``, ``v``, ``vectors_A`` and ``radial_weight``, twice (the second time in
    PyTorch). ``config`` launches one explicit `triton.Config` (BLOCK_E, BLOCK_F, num_warps,
    num_stages) instead of a tuned or autotuned one. Atomic adds make float32 sums order-dependent
    at the level of rounding.
    """
    dtype = phi.dtype
    if dtype not in (torch.float32, torch.float64):
        raise TypeError(f"phi must be float32 or float64, got {dtype}")
    if phi.dim() != 2 or phi.shape[1] % 3 != 0 or phi.shape[0] != n_atoms:
        raise ValueError(f"phi must be [n_atoms={n_atoms}, 3F], got {tuple(phi.shape)}")
    n_features = phi.shape[1] // 3
    if v is not None and tuple(v.shape) != (n_atoms, 3, n_features):
        raise ValueError(f"v must be [{n_atoms}, 3, {n_features}] or None, got {tuple(v.shape)}")
    if vectors_A.dim() != 2 or vectors_A.shape[1] != 3:
        raise ValueError(f"vectors_A must be [E, 3], got {tuple(vectors_A.shape)}")
    if tuple(radial_weight.shape) != (n_radial, 3 * n_features):
        raise ValueError(
            f"radial_weight must be [n_radial={n_radial}, {3 * n_features}], got {tuple(radial_weight.shape)}"
        )
    n_edges = vectors_A.shape[0]
    if src.shape != (n_edges,) or dst.shape != (n_edges,):
        raise ValueError(f"src and dst must be [E={n_edges}], got {tuple(src.shape)} and {tuple(dst.shape)}")
    for name, tensor in (("v", v), ("vectors_A", vectors_A), ("radial_weight", radial_weight)):
        if tensor is not None and tensor.dtype != dtype:
            raise TypeError(f"{name} must have phi's dtype {dtype}, got {tensor.dtype}")
    if not (phi.is_cuda or INTERPRETED):
        raise RuntimeError(
            "Triton kernels need CUDA tensors, or TRITON_INTERPRET=1 set before importing triton "
            "to run them on CPU in the interpreter"
        )
    return _EdgeMessage.apply(
        phi.contiguous(),
        v.contiguous() if v is not None else None,
        vectors_A.contiguous(),
        radial_weight.contiguous(),
        src.to(torch.long).contiguous(),
        dst.to(torch.long).contiguous(),
        int(n_atoms),
        float(cutoff_A),
        config,
    )
