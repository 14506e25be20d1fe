"""Triton Bessel x cosine basis vs the PyTorch reference, run on CPU in Triton's interpreter."""

import os

os.environ["TRITON_INTERPRET"] = "1"  # before triton / the kernel module are imported

import pytest  # noqa: E402
import torch  # noqa: E402
import triton  # noqa: E402

from mlff_distill.kernels import bessel_cosine  # noqa: E402
from mlff_distill.kernels.bessel_cosine import bessel_cosine_basis_triton  # noqa: E402
from mlff_distill.student.radial import bessel_cosine_basis  # noqa: E402

CUTOFF_A = 5.0
SMALL_CONFIG = triton.Config({"BLOCK_E": 4}, num_warps=1, num_stages=1)  # several programs even for E=7

if not bessel_cosine.INTERPRETED:
    raise RuntimeError("mlff_distill.kernels.bessel_cosine was imported before TRITON_INTERPRET=1 was set")


def random_distances(n_edges: int, dtype: torch.dtype, seed: int) -> torch.Tensor:
    """Distances (Angstrom) uniform in (0.3, 1.2 * cutoff): some lie beyond the cutoff."""
    generator = torch.Generator().manual_seed(seed)
    return 0.3 + (1.2 * CUTOFF_A - 0.3) * torch.rand(n_edges, dtype=dtype, generator=generator)


def assert_close_scaled(got: torch.Tensor, want: torch.Tensor, rtol: float) -> None:
    """Max abs difference within ``rtol`` times the scale of ``want`` (at least 1)."""
    assert got.shape == want.shape and got.dtype == want.dtype
    scale = max(1.0, want.abs().max().item()) if want.numel() else 1.0
    error = (got - want).abs().max().item() if want.numel() else 0.0
    assert error <= rtol * scale, f"max abs error {error:.3g} > {rtol:.1g} * {scale:.3g}"


RTOL = {torch.float32: 1e-5, torch.float64: 1e-12}


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("n_radial", [8, 5])
@pytest.mark.parametrize("n_edges", [1, 7, 1003])
def test_forward_and_backward_match_reference(n_edges: int, n_radial: int, dtype: torch.dtype) -> None:
    r = random_distances(n_edges, dtype, seed=n_edges * 10 + n_radial).requires_grad_(True)
    if n_edges == 1003:
        assert (r > CUTOFF_A).any() and (r < CUTOFF_A).any()
    got = bessel_cosine_basis_triton(r, n_radial, CUTOFF_A)
    want = bessel_cosine_basis(r, n_radial, CUTOFF_A)
    assert_close_scaled(got.detach(), want.detach(), RTOL[dtype])
    assert torch.all(got[r.detach() >= CUTOFF_A] == 0)

    grad_out = torch.randn(n_edges, n_radial, dtype=dtype, generator=torch.Generator().manual_seed(1))
    (got_grad,) = torch.autograd.grad(got, r, grad_out)
    (want_grad,) = torch.autograd.grad(want, r, grad_out)
    assert_close_scaled(got_grad, want_grad, RTOL[dtype])


def test_explicit_config_gives_same_result() -> None:
    r = random_distances(7, torch.float32, seed=3)
    default = bessel_cosine_basis_triton(r, 8, CUTOFF_A)
    small = bessel_cosine_basis_triton(r, 8, CUTOFF_A, config=SMALL_CONFIG)
    torch.testing.assert_close(small, default, rtol=0, atol=0)


def test_gradcheck_and_gradgradcheck_float64() -> None:
    r = random_distances(7, torch.float64, seed=4).requires_grad_(True)

    def basis(distances: torch.Tensor) -> torch.Tensor:
        return bessel_cosine_basis_triton(distances, 5, CUTOFF_A, config=SMALL_CONFIG)

    assert torch.autograd.gradcheck(basis, (r,))
    assert torch.autograd.gradgradcheck(basis, (r,))


def test_double_backward_matches_reference_float32() -> None:
    """Training on forces differentiates the basis gradient again (wrt distances and weights)."""
    r = random_distances(1003, torch.float32, seed=5).requires_grad_(True)
    weights = torch.randn(8, generator=torch.Generator().manual_seed(6)).requires_grad_(True)

    def second_order_grads(basis_fn) -> tuple[torch.Tensor, torch.Tensor]:
        energy = (basis_fn(r, 8, CUTOFF_A) @ weights).sum()
        (d_energy_dr,) = torch.autograd.grad(energy, r, create_graph=True)
        return torch.autograd.grad((d_energy_dr**2).sum(), (r, weights))

    got_r, got_w = second_order_grads(bessel_cosine_basis_triton)
    want_r, want_w = second_order_grads(bessel_cosine_basis)
    assert_close_scaled(got_r, want_r, 1e-5)
    assert_close_scaled(got_w, want_w, 1e-5)


def test_empty_input() -> None:
    r = torch.empty(0, requires_grad=True)
    out = bessel_cosine_basis_triton(r, 8, CUTOFF_A)
    assert out.shape == (0, 8) and out.dtype == torch.float32
    (grad,) = torch.autograd.grad(out.sum(), r)
    assert grad.shape == (0,)


def test_rejects_half_precision() -> None:
    with pytest.raises(TypeError, match="float32 or float64"):
        bessel_cosine_basis_triton(torch.ones(3, dtype=torch.float16), 8, CUTOFF_A)
