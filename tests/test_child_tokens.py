"""Grid-neighbour condition tokens: each selected child gets its own output, then its top, right,
bottom and left neighbours' (zeros off the grid), values and gradients, for any selection."""

from __future__ import annotations

import pytest
import torch

from fractalkit.levels.tokens import GridNeighbourTokens
from fractalkit.partition import ImagePatches


def _by_definition(h: torch.Tensor, rows, cols, neighbours: torch.Tensor) -> torch.Tensor:
    out = []
    for r, c in zip(rows.tolist(), cols.tolist(), strict=True):
        tokens = [h[r, c]]
        for j in neighbours[c].tolist():
            tokens.append(h[r, j] if j >= 0 else torch.zeros_like(h[r, c]))
        out.append(torch.stack(tokens))
    return torch.stack(out) if out else h.new_zeros(0, 5, h.shape[-1]) + 0 * h.sum()


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize(("size", "child", "n", "fraction"), [
    (4, 1, 3, 0.8), (8, 2, 2, 1.0), (6, 2, 4, 0.3), (4, 2, 2, 0.0), (2, 1, 1, 1.0),
])
def test_grid_neighbour_tokens_match_their_definition(dtype, size, child, n, fraction) -> None:
    part = ImagePatches(size, child, channels=3)
    strategy = GridNeighbourTokens(part)
    k = part.num_children
    g = torch.Generator().manual_seed(size * 10 + n)
    h = torch.randn(n, k, 7, generator=g, dtype=dtype, requires_grad=True)
    chosen = torch.rand(n, k, generator=g) < fraction
    rows, cols = chosen.nonzero(as_tuple=True)
    children = torch.zeros(n, k, child * child * 3, dtype=torch.long)
    got = strategy.select(h, rows, cols, children, ~chosen)
    want = _by_definition(h, rows, cols, part.neighbours())
    assert got.shape == (rows.numel(), 5, 7) and got.dtype == dtype
    assert torch.equal(got, want)
    weight = torch.randn(got.shape, generator=g, dtype=dtype)
    (got_grad,) = torch.autograd.grad((got * weight).sum(), h)
    (want_grad,) = torch.autograd.grad((want * weight).sum(), h)
    tol = 1e-12 if dtype == torch.float64 else 1e-5
    torch.testing.assert_close(got_grad, want_grad, rtol=tol, atol=tol)
