import pytest
import torch

from mlff_distill.reference.rows import gather_rows, sum_rows


@pytest.mark.parametrize("shape", [(7,), (7, 5), (7, 3, 5)])
def test_gather_and_sum_rows_match_index_select_and_index_add(shape):
    generator = torch.Generator().manual_seed(0)
    x = torch.randn(shape, generator=generator, dtype=torch.float64)
    index = torch.randint(0, shape[0], (23,), generator=generator)
    rows = gather_rows(x, index)
    assert torch.equal(rows, x.index_select(0, index))
    summed = sum_rows(rows, index, 9)
    expected = torch.zeros((9,) + shape[1:], dtype=torch.float64).index_add_(0, index, rows)
    assert summed.shape == (9,) + shape[1:]
    assert torch.allclose(summed, expected, atol=1e-12)


def test_gradients_of_gather_rows_are_summed_rows():
    x = torch.randn(6, 4, dtype=torch.float64, requires_grad=True)
    index = torch.tensor([0, 3, 3, 5, 0, 0])
    weights = torch.randn(6, 4, dtype=torch.float64)
    (gradient,) = torch.autograd.grad((gather_rows(x, index) * weights).sum(), x)
    assert torch.allclose(gradient, sum_rows(weights, index, 6))
    assert torch.equal(gradient[1], torch.zeros(4, dtype=torch.float64))
