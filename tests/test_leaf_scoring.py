"""Teacher-forced leaf scoring: the fused log-softmax-at-index and the RGB leaf's channel-major
logits give the values and gradients of the plain autograd computation they replace."""

from __future__ import annotations

import pytest
import torch

from fractalkit.leaves.base import Leaf, observed_log_softmax
from fractalkit.leaves.rgb import RGBLeaf
from fractalkit.protocol import accumulation_dtype


def _reference(logits: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
    return logits.log_softmax(-1).gather(-1, index[..., None]).squeeze(-1)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("shape", [(0, 3, 7), (1, 1, 2), (5, 3, 256), (4, 2, 3, 11)])
def test_observed_log_softmax_matches_log_softmax_then_gather(dtype, shape) -> None:
    g = torch.Generator().manual_seed(sum(shape))
    logits = (3 * torch.randn(shape, generator=g, dtype=dtype)).requires_grad_()
    index = torch.randint(0, shape[-1], shape[:-1], generator=g)
    weight = torch.randn(shape[:-1], generator=g, dtype=dtype)
    got = observed_log_softmax(logits, index)
    want = _reference(logits, index)
    assert got.dtype == dtype and got.shape == want.shape
    assert torch.equal(got, want)
    (got_grad,) = torch.autograd.grad((got * weight).sum(), logits)
    (want_grad,) = torch.autograd.grad((want * weight).sum(), logits)
    tol = 1e-12 if dtype == torch.float64 else 1e-5
    torch.testing.assert_close(got_grad, want_grad, rtol=tol, atol=tol)
    with torch.no_grad():  # no graph: the plain ops
        assert torch.equal(observed_log_softmax(logits, index), want)


def test_observed_log_softmax_gradcheck() -> None:
    g = torch.Generator().manual_seed(0)
    logits = torch.randn(3, 2, 5, generator=g, dtype=torch.float64, requires_grad=True)
    index = torch.randint(0, 5, (3, 2), generator=g)
    assert torch.autograd.gradcheck(lambda t: observed_log_softmax(t, index), (logits,))


def _generic(leaf: RGBLeaf, x: torch.Tensor, cond: torch.Tensor) -> torch.Tensor:
    """What ``Leaf.observed_log_probs`` computed before the fused paths: autograd throughout."""
    logits = leaf.element_logits(x, cond)
    return _reference(logits.to(accumulation_dtype(logits.dtype)), x)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize(("rows", "channels", "depth"), [(0, 3, 1), (1, 3, 1), (37, 3, 2), (20, 1, 1), (9, 4, 1)])
def test_rgb_leaf_channel_major_scoring_matches_generic(dtype, rows, channels, depth) -> None:
    torch.manual_seed(rows + channels)
    leaf = RGBLeaf((channels,), 24, 5, num_values=64, width=16, depth=depth, heads=2).to(dtype)
    with torch.no_grad():
        leaf.out_bias.normal_()  # zeros at initialisation: make the bias count
    x = torch.randint(0, 64, (rows, channels))
    cond = torch.randn(rows, 5, 24, dtype=dtype, requires_grad=True)
    got = leaf.observed_log_probs(x, cond)
    want = _generic(leaf, x, cond)
    assert got.shape == (rows, channels) and got.dtype == dtype
    tol = 1e-12 if dtype == torch.float64 else 1e-5
    torch.testing.assert_close(got, want, rtol=tol, atol=tol)
    inputs = [cond, *leaf.parameters()]
    got_grads = torch.autograd.grad(got.square().sum(), inputs, allow_unused=True)
    want_grads = torch.autograd.grad(want.square().sum(), inputs, allow_unused=True)
    for a, b in zip(got_grads, want_grads, strict=True):
        assert (a is None) == (b is None)
        if a is not None:
            torch.testing.assert_close(a, b, rtol=tol, atol=tol)


def test_rgb_leaf_scoring_under_autocast_takes_the_generic_path() -> None:
    torch.manual_seed(0)
    leaf = RGBLeaf((3,), 24, 5, num_values=64, width=16, depth=1, heads=2)
    x = torch.randint(0, 64, (11, 3))
    cond = torch.randn(11, 5, 24)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        got = leaf.observed_log_probs(x, cond)
        want = Leaf.observed_log_probs(leaf, x, cond)
    assert got.dtype == torch.float32
    assert torch.equal(got, want)


def test_observed_log_softmax_refuses_a_second_derivative_loudly() -> None:
    logits = torch.randn(4, 6, dtype=torch.float64, requires_grad=True)
    index = torch.randint(0, 6, (4,))
    (grad,) = torch.autograd.grad(observed_log_softmax(logits, index).sum(), logits, create_graph=True)
    with pytest.raises(RuntimeError, match=r"once_differentiable|differentiate|does not require grad"):
        grad.sum().backward()


def test_rgb_leaf_subclass_with_its_own_logits_is_scored_by_them() -> None:
    class Shifted(RGBLeaf):
        def element_logits(self, x, cond):
            return super().element_logits(x, cond) + torch.arange(64, dtype=cond.dtype)

    torch.manual_seed(0)
    leaf = Shifted((3,), 24, 5, num_values=64, width=16, depth=1, heads=2)
    x = torch.randint(0, 64, (6, 3))
    cond = torch.randn(6, 5, 24)
    torch.testing.assert_close(leaf.observed_log_probs(x, cond), _generic(leaf, x, cond))
