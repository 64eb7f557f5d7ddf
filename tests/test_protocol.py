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


def test_protocol_imports_nothing_from_sampling() -> None:
    """The contract sits below the procedures (DESIGN.md contract 8): no import chain from
    ``fractalkit.protocol`` reaches ``fractalkit.sampling``, nor any layer above it."""
    grimp = pytest.importorskip("grimp")
    graph = grimp.build_graph("fractalkit")
    above = (
        "fractalkit.sampling", "fractalkit.levels", "fractalkit.leaves", "fractalkit.conditioners",
        "fractalkit.composer", "fractalkit.fractal", "fractalkit.compat",
    )
    for target in above:
        chain = graph.find_shortest_chain(importer="fractalkit.protocol", imported=target, as_packages=True)
        assert chain is None, f"fractalkit.protocol imports {target}: {' -> '.join(chain)}"


def test_plans_reach_each_level_once_resolved() -> None:
    """The composer resolves one plan per level (order and steps the same way) and each level
    reads its own through ``ctx.down()``."""
    from fractalkit.composer import level_plans
    from fractalkit.protocol import DecodeContext, LevelPlan, SampleOptions, ScoreContext

    model = tiny_fractal()
    levels = model.levels[:-1]
    plans = level_plans(levels, "identity", (3,))
    assert len(plans) == len(levels)
    assert [p.steps for p in plans] == [3] + [None] * (len(levels) - 1)
    assert [p.order for p in plans] == ["identity" if lv.uses_orders else None for lv in levels]
    with pytest.raises(ValueError, match="at most one entry per level"):
        level_plans(levels, None, (1,) * (len(levels) + 1))
    ctx = DecodeContext(SampleOptions(steps=(2, 5)), None, guided=False, scale=1.0)
    assert (ctx.steps(), ctx.down().steps(), ctx.down().down().steps()) == (2, 5, None)
    score = ScoreContext("exact", plans=(LevelPlan(order="identity"),), default_plan=LevelPlan(order="random"))
    assert (score.order(), score.down().order(), score.down().mask()) == ("identity", "random", None)
    with pytest.raises(ValueError, match="mode must be one of"):
        ScoreContext("masks")  # the compat-only replay is the converter's (plans with masks)


def test_moved_names_keep_their_old_import_paths() -> None:
    from fractalkit import sampling
    from fractalkit.sampling import options as old
    from fractalkit.sampling.schedules import guidance_at

    for name in ("SampleOptions", "Progress", "DecodeContext", "ScoreContext", "OrderSpec"):
        assert getattr(old, name) is getattr(protocol, name), name
    for name in ("SampleOptions", "Progress", "DecodeContext", "ScoreContext"):
        assert getattr(sampling, name) is getattr(protocol, name), name
    assert guidance_at is protocol.guidance_at
