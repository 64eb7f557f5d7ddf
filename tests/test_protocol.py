"""What ``fractalkit.protocol`` promises a bare generator (a level or a leaf) is there (issue 12:
it promised ``loss`` and ``complete`` on ``AbstractGenerator``, which had neither)."""

from __future__ import annotations

import pytest
import torch

from fractalkit import protocol
from fractalkit.protocol import AbstractGenerator
from fractalkit.testing import random_data, tiny_fractal


def test_the_promised_methods_exist_and_loss_is_not_promised() -> None:
    for name in ("log_prob", "sample", "complete", "score", "decode"):
        assert callable(getattr(AbstractGenerator, name, None)), name
    # Training needs MAR masks and condition dropout: Fractal's loss, not a bare generator's.
    assert not hasattr(AbstractGenerator, "loss")
    assert "``loss``" not in protocol.__doc__.split("Training")[0]


@pytest.mark.parametrize("part", ["root", "leaf"])
def test_bare_complete_keeps_known_elements_and_matches_fractal(part: str) -> None:
    model = tiny_fractal()
    n = 6
    x = random_data(model, n, seed=1)
    y = torch.tensor([0, 1, 0, 1, 1, 0])
    known = torch.rand(x.shape, generator=torch.Generator().manual_seed(2)) < 0.5
    cond = model.top_condition(y, n).detach()
    if part == "root":
        with torch.no_grad():
            got = model.root.complete(x, known, cond, generator=torch.Generator().manual_seed(3))
            want = model.complete(x, known, y, generator=torch.Generator().manual_seed(3))
        assert torch.equal(got, want)  # the same decoding as Fractal.complete
    else:
        leaf = model.leaf
        cond = torch.randn(n, leaf.cond_tokens, leaf.cond_dim, generator=torch.Generator().manual_seed(4))
        x = torch.randint(0, leaf.num_values, (n, *leaf.event_shape))
        known = torch.rand(x.shape, generator=torch.Generator().manual_seed(5)) < 0.5
        with torch.no_grad():
            got = leaf.complete(x, known, cond, generator=torch.Generator().manual_seed(3))
    assert got.dtype == torch.int64 and got.shape == x.shape
    assert torch.equal(got[known], x[known])
    with torch.no_grad():
        everything = getattr(model, part).complete(x, torch.ones_like(known), cond)
    assert torch.equal(everything, x)


def test_bare_complete_refuses_a_bad_mask() -> None:
    model = tiny_fractal()
    x = random_data(model, 2)
    cond = model.top_condition(torch.tensor([0, 1]), 2).detach()
    with pytest.raises(ValueError, match="known must be a bool tensor of x's shape"):
        model.root.complete(x, torch.ones(2, 3, dtype=torch.bool), cond)
