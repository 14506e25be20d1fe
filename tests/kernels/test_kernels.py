"""Triton kernels (Bessel x cosine basis, fused edge message) vs the PyTorch references, in Triton's CPU interpreter."""

import os

os.environ["TRITON_INTERPRET"] = "1"  # before triton / the kernel module are imported

import pytest  # noqa: E402
import torch  # noqa: E402
import triton  # noqa: E402

from mlff_distill.kernels import bessel_cosine  # noqa: E402
from mlff_distill.kernels import edge_message as edge_kernels  # noqa: E402
from mlff_distill.kernels.bessel_cosine import bessel_cosine_basis_triton  # noqa: E402
from mlff_distill.kernels.edge_message import edge_message_triton  # noqa: E402
from mlff_distill.reference.edge_message import edge_message_torch  # noqa: E402
from mlff_distill.reference.radial import bessel_cosine_basis  # noqa: E402
from mlff_distill.student.edge_message import edge_message  # noqa: E402

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


# ---- fused edge message (one interaction layer) ----

EDGE_CONFIG = triton.Config({"BLOCK_E": 8, "BLOCK_F": 4}, num_warps=1, num_stages=1)  # several blocks on both axes


def random_layer(
    n_atoms: int,
    n_edges: int,
    n_features: int,
    n_radial: int,
    dtype: torch.dtype,
    seed: int,
    with_v: bool = True,
    neighbour_atoms: int | None = None,
) -> dict:
    """Random inputs of `edge_message_torch`; edges only between the first ``neighbour_atoms`` atoms.

    Edge lengths (Angstrom) lie in (0.5, 1.3 * cutoff): some edges are beyond the cutoff.
    """
    generator = torch.Generator().manual_seed(seed)
    linked = neighbour_atoms if neighbour_atoms is not None else n_atoms
    direction = torch.nn.functional.normalize(torch.randn(n_edges, 3, generator=generator, dtype=dtype), dim=1)
    length = 0.5 + (1.3 * CUTOFF_A - 0.5) * torch.rand(n_edges, 1, generator=generator, dtype=dtype)
    return {
        "phi": torch.randn(n_atoms, 3 * n_features, generator=generator, dtype=dtype).requires_grad_(True),
        "v": torch.randn(n_atoms, 3, n_features, generator=generator, dtype=dtype).requires_grad_(True)
        if with_v
        else None,
        "vectors_A": (direction * length).requires_grad_(True),
        "radial_weight": torch.randn(n_radial, 3 * n_features, generator=generator, dtype=dtype).requires_grad_(True),
        "src": torch.randint(0, max(linked, 1), (n_edges,), generator=generator),
        "dst": torch.randint(0, max(linked, 1), (n_edges,), generator=generator),
        "n_atoms": n_atoms,
        "cutoff_A": CUTOFF_A,
        "n_radial": n_radial,
    }


def differentiable(inputs: dict) -> list[torch.Tensor]:
    return [inputs[k] for k in ("phi", "v", "vectors_A", "radial_weight") if inputs[k] is not None]


def compare_edge_message(inputs: dict, rtol: float, config: triton.Config | None = EDGE_CONFIG) -> None:
    """Forward and first-order gradients of the Triton op against the PyTorch reference."""
    got = edge_message_triton(**inputs, config=config)
    want = edge_message_torch(**inputs)
    for g, w in zip(got, want):
        assert_close_scaled(g.detach(), w.detach(), rtol)
    generator = torch.Generator().manual_seed(99)
    seeds = [torch.randn(w.shape, generator=generator, dtype=w.dtype) for w in want]
    got_grads = torch.autograd.grad(got, differentiable(inputs), seeds)
    want_grads = torch.autograd.grad(want, differentiable(inputs), seeds)
    for g, w in zip(got_grads, want_grads):
        assert_close_scaled(g, w, rtol)


@pytest.mark.parametrize("with_v", [True, False])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_edge_message_matches_reference_odd_sizes(with_v: bool, dtype: torch.dtype) -> None:
    inputs = random_layer(n_atoms=7, n_edges=23, n_features=5, n_radial=6, dtype=dtype, seed=11, with_v=with_v)
    assert (inputs["vectors_A"].norm(dim=1) > CUTOFF_A).any()
    compare_edge_message(inputs, 10 * RTOL[dtype])


def test_edge_message_default_config_larger_graph() -> None:
    inputs = random_layer(n_atoms=29, n_edges=211, n_features=13, n_radial=8, dtype=torch.float32, seed=12)
    compare_edge_message(inputs, 1e-5, config=None)


def test_edge_message_empty_graph() -> None:
    inputs = random_layer(n_atoms=3, n_edges=0, n_features=5, n_radial=4, dtype=torch.float32, seed=13)
    ds, dv = edge_message_triton(**inputs, config=EDGE_CONFIG)
    assert ds.shape == (3, 5) and dv.shape == (3, 3, 5)
    assert torch.all(ds == 0) and torch.all(dv == 0)
    grads = torch.autograd.grad((ds.sum() + dv.sum()), differentiable(inputs))
    assert grads[2].shape == (0, 3)
    assert all(torch.all(g == 0) for g in grads)


def test_edge_message_atoms_without_neighbours() -> None:
    inputs = random_layer(
        n_atoms=9, n_edges=17, n_features=3, n_radial=5, dtype=torch.float32, seed=14, neighbour_atoms=5
    )
    compare_edge_message(inputs, 1e-5)
    ds, dv = edge_message_triton(**inputs, config=EDGE_CONFIG)
    assert torch.all(ds[5:] == 0) and torch.all(dv[5:] == 0)
    assert ds[:5].abs().sum() > 0
    g_phi, g_v = torch.autograd.grad((ds * ds).sum() + (dv * dv).sum(), [inputs["phi"], inputs["v"]])
    assert torch.all(g_phi[5:] == 0) and torch.all(g_v[5:] == 0)


def test_edge_message_gradcheck_float64() -> None:
    inputs = random_layer(n_atoms=4, n_edges=6, n_features=2, n_radial=3, dtype=torch.float64, seed=15)
    fixed = {k: inputs[k] for k in ("src", "dst", "n_atoms", "cutoff_A", "n_radial")}

    def op(phi, v, vectors_A, radial_weight):
        return edge_message_triton(phi, v, vectors_A, radial_weight, **fixed, config=EDGE_CONFIG)

    assert torch.autograd.gradcheck(op, tuple(differentiable(inputs)), fast_mode=True)


def test_edge_message_double_backward_matches_reference() -> None:
    """Training on forces: the gradient of a function of d(output)/d(vectors) with respect to the weights."""
    inputs = random_layer(n_atoms=6, n_edges=19, n_features=3, n_radial=4, dtype=torch.float32, seed=16)

    def second_order(op) -> tuple[torch.Tensor, ...]:
        ds, dv = op(inputs)
        energy = (ds * ds).sum() + (dv * dv).sum()
        (d_energy_d_vectors,) = torch.autograd.grad(energy, inputs["vectors_A"], create_graph=True)
        return torch.autograd.grad((d_energy_d_vectors**2).sum(), [inputs["radial_weight"], inputs["phi"]])

    got = second_order(lambda x: edge_message_triton(**x, config=EDGE_CONFIG))
    want = second_order(lambda x: edge_message_torch(**x))
    for g, w in zip(got, want):
        assert_close_scaled(g, w, 1e-5)


def test_edge_message_dispatcher_and_script() -> None:
    inputs = random_layer(n_atoms=5, n_edges=11, n_features=3, n_radial=4, dtype=torch.float32, seed=17)
    scripted = torch.jit.script(edge_message_torch)
    for got, want in zip(scripted(**inputs), edge_message_torch(**inputs)):
        torch.testing.assert_close(got, want, rtol=0, atol=0)
    for got, want in zip(edge_message(**inputs, backend="triton"), edge_message(**inputs, backend="torch")):
        assert_close_scaled(got.detach(), want.detach(), 1e-5)
    with pytest.raises(ValueError, match="unknown edge-message backend 'cuda'"):
        edge_message(**inputs, backend="cuda")


def test_edge_message_rejects_bad_shapes() -> None:
    inputs = random_layer(n_atoms=5, n_edges=11, n_features=3, n_radial=4, dtype=torch.float32, seed=18)
    with pytest.raises(ValueError, match="radial_weight must be"):
        edge_message_triton(**{**inputs, "n_radial": 5})
    with pytest.raises(ValueError, match="phi must be"):
        edge_message_triton(**{**inputs, "n_atoms": 6})
    with pytest.raises(TypeError, match="vectors_A must have phi's dtype"):
        edge_message_triton(**{**inputs, "vectors_A": inputs["vectors_A"].double()})


def test_tuned_config_nearest_bucket() -> None:
    small = triton.Config({"BLOCK_E": 16, "BLOCK_F": 16}, num_warps=2, num_stages=1)
    large = triton.Config({"BLOCK_E": 128, "BLOCK_F": 64}, num_warps=8, num_stages=2)
    try:
        edge_kernels.set_tuned_configs({("forward", 1024, 64): small, ("forward", 65536, 64): large})
        assert edge_kernels.tuned_config("forward", 900, 64) is small
        assert edge_kernels.tuned_config("forward", 40000, 64) is large
        assert edge_kernels.tuned_config("forward", 900, 32) is None
        assert edge_kernels.tuned_config("backward", 900, 64) is None
        assert edge_kernels.config_dict(
            edge_kernels.config_from_dict(edge_kernels.config_dict(large))
        ) == edge_kernels.config_dict(large)
        with pytest.raises(ValueError, match="unknown kernel 'sideways'"):
            edge_kernels.set_tuned_configs({("sideways", 1024, 64): small})
    finally:
        edge_kernels.set_tuned_configs({})


@pytest.mark.parametrize("angular_order", [1, 3], ids=["painn", "angular-moments"])
def test_student_with_triton_backend_matches_eager(angular_order: int) -> None:
    """The whole student (two layers, energy, forces, stress) on the fused kernels, in the
    interpreter, against the eager path: a molecule and a periodic cell in one batch; with and
    without the angular moments (computed in PyTorch on both paths)."""
    import numpy as np
    from ase.build import bulk, molecule

    from mlff_distill.student.model import StudentPotential, energy_forces_stress

    torch.manual_seed(0)
    model = StudentPotential(
        species=(1, 6, 8, 14),
        cutoff_A=3.0,
        n_features=5,
        n_radial=3,
        n_interactions=2,
        angular_order=angular_order,
        angular_channels=3,
    ).double()
    water, silicon = molecule("H2O"), bulk("Si", "diamond", a=5.43)
    silicon.rattle(0.05, seed=1)
    inputs = dict(
        numbers=torch.tensor(list(water.numbers) + list(silicon.numbers)),
        positions_A=torch.tensor(np.concatenate([water.positions, silicon.positions])),
        cell_A=torch.tensor(np.array([water.cell.array, silicon.cell.array])),
        pbc=torch.tensor([water.pbc, silicon.pbc]),
        atoms_ptr=torch.tensor([0, 3, 5]),
    )
    eager = energy_forces_stress(model, **inputs, compute_stress=True)
    model.radial_backend = "triton"
    fused = energy_forces_stress(model, **inputs, compute_stress=True)
    for want, got in zip(eager[:2], fused[:2]):
        assert_close_scaled(got, want, 1e-10)
    assert_close_scaled(fused[2][1], eager[2][1], 1e-10)  # the periodic cell's stress
