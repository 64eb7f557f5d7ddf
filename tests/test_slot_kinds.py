"""Slot kinds (a leaf normalised over each element's allowed values) and sampling constraints.

Shape letters: N instances, D elements per instance, V values, E leaf elements.
"""

from __future__ import annotations

import dataclasses
import math

import pytest
import torch

from fractalkit import (
    ARLevelConfig,
    CategoricalLeafConfig,
    Fractal,
    LeafConfig,
    MARLevelConfig,
    RGBLeaf,
    SampleOptions,
    register,
)
from fractalkit.config import BuildContext, config_from_dict
from fractalkit.graphs import GraphEncoding
from fractalkit.leaves import SlotCategoricalLeafConfig, SlotKinds, SlotKindsLeaf
from fractalkit.partition import SequenceChunks
from fractalkit.testing import (
    check_config_round_trip,
    check_decomposition,
    check_normalisation,
    check_sampler,
    check_save_load,
    roughen,
    support,
)


def graph_fractal(enc: GraphEncoding, top: str = "ar", *, slots: bool = True, seed: int = 0) -> Fractal:
    """A roughened two-level graph fractal (all nodes -> single nodes -> elements)."""
    leaf = SlotCategoricalLeafConfig(**enc.slot_kinds_config()) if slots else (
        CategoricalLeafConfig(num_values=enc.num_values))
    config = ARLevelConfig if top == "ar" else MARLevelConfig
    levels = [config(width=16, depth=1, heads=2, embed="table"),
              ARLevelConfig(width=16, depth=1, heads=2, embed="table")]
    torch.manual_seed(seed)
    model = Fractal(list(zip(enc.partitioners((enc.max_nodes,)), levels, strict=True)), leaf=leaf)
    return roughen(model, seed=seed, scale=0.4).eval()


def in_support(model: Fractal) -> torch.Tensor:
    xs = support(model)
    return xs[model.leaf.slot_kinds.support_mask(xs)]


@pytest.mark.parametrize("top", ["ar", "mar"])
@pytest.mark.parametrize("sizes", [(2, 2, 1), (2, 3, 2)])
def test_normalised_over_the_restricted_support(sizes, top):
    enc = GraphEncoding(*sizes)
    model = graph_fractal(enc, top)
    check_normalisation(model)
    xs = support(model)
    with torch.no_grad():
        lp = model.log_prob(xs, orders="identity").value
    inside = model.leaf.slot_kinds.support_mask(xs)
    assert bool(torch.isneginf(lp[~inside]).all())  # no mass off the support
    assert bool(torch.isfinite(lp[inside]).all())
    assert math.isclose(float(lp[inside].exp().sum()), 1.0, abs_tol=1e-5)
    check_decomposition(model, x=xs[inside][:12])


def test_structural_zeros_cost_nothing():
    enc = GraphEncoding(2, 2, 1)
    model = graph_fractal(enc)
    x = in_support(model)[:5]
    with model.leaf.recording() as records:
        model.log_prob(x)
    per_element = model.root.merge(torch.cat(records).view(x.shape[0], 2, 2))  # [N, D]
    zero = torch.tensor(enc.element_kinds()) == enc.STRUCTURAL_ZERO
    assert bool((per_element[:, zero] == 0).all())
    assert bool((per_element[:, ~zero] < 0).all())


@pytest.mark.parametrize("temperature", [1.0, 0.7])
def test_sampler_follows_the_restricted_law(temperature):
    model = graph_fractal(GraphEncoding(2, 3, 2))
    check_sampler(model, temperature=temperature, num_samples=3000)
    x = model.sample(200, generator=torch.Generator().manual_seed(1))
    assert bool(model.leaf.slot_kinds.support_mask(x).all())


def test_save_load_and_config_round_trip(tmp_path):
    model = graph_fractal(GraphEncoding(2, 2, 1))
    check_config_round_trip(model)
    check_save_load(model, x=in_support(model)[:4], directory=tmp_path)
    leaf = model.config.to_dict()["leaf"]
    assert leaf["kind"] == "slot_categorical" and config_from_dict(leaf) == model.config.leaf


def test_default_leaf_unchanged():
    """Without slot kinds no position is tracked and the leaf has no extra parameters."""
    plain = graph_fractal(GraphEncoding(2, 2, 1), slots=False)
    assert not isinstance(plain.leaf, SlotKindsLeaf) and not plain.leaf.needs_positions
    assert not any("slot" in name for name, _ in plain.named_parameters())
    assert plain._canvas(torch.zeros(2, 4, dtype=torch.long)) is None


@pytest.mark.parametrize(
    ("kinds", "allowed", "match"),
    [
        ((), ((0,),), "empty"),
        ((0, 1), ((0, 1),), "no allowed_values entry"),
        ((0,), ((),), "non-empty"),
        ((0,), ((1, 1),), "distinct"),
        ((0,), ((-1, 0),), ">= 0"),
    ],
)
def test_bad_slot_kinds(kinds, allowed, match):
    with pytest.raises(ValueError, match=match):
        SlotKinds(kinds, allowed)


def test_bad_slot_kind_configs():
    with pytest.raises(ValueError, match="outside the leaf"):
        SlotCategoricalLeafConfig(num_values=2, element_kinds=(0,), allowed_values=((0, 2),))
    leaf = SlotCategoricalLeafConfig(num_values=3, element_kinds=(0, 0, 0), allowed_values=((0, 1),))
    with pytest.raises(ValueError, match="describe 3 elements but an instance has 4"):
        Fractal([(SequenceChunks(4, 1), ARLevelConfig(width=8, depth=1, heads=2))], leaf=leaf)


def test_slot_leaf_needs_positions():
    model = graph_fractal(GraphEncoding(2, 2, 1))
    from fractalkit.protocol import ScoreContext

    with pytest.raises(ValueError, match="needs each element's position"):
        model.leaf.score(torch.zeros(3, 1, dtype=torch.long), torch.zeros(3, 1, 16), ScoreContext("exact"))


@register("slot_rgb_tests")
@dataclasses.dataclass(frozen=True)
class _SlotRGBConfig(LeafConfig):
    """Slot kinds around an autoregressive RGB leaf: the wrapper takes any leaf."""

    num_values: int = 3
    element_kinds: tuple[int, ...] = ()
    allowed_values: tuple[tuple[int, ...], ...] = ()

    def build(self, ctx: BuildContext):
        rgb = RGBLeaf(tuple(ctx.event_shape), ctx.cond_dim, ctx.cond_tokens, self.num_values,
                      width=8, depth=1, heads=2)
        return SlotKindsLeaf(rgb, SlotKinds(self.element_kinds, self.allowed_values))


def test_slot_kinds_wrap_any_leaf():
    """An autoregressive RGB leaf over 2 elements per leaf instance, wrapped: still normalised
    over the restricted support, and only the wrapper knows about slot kinds."""
    enc = GraphEncoding(2, 2, 1)
    cfg = enc.slot_kinds_config()
    leaf = _SlotRGBConfig(num_values=cfg["num_values"], element_kinds=tuple(cfg["element_kinds"]),
                          allowed_values=tuple(tuple(v) for v in cfg["allowed_values"]))
    torch.manual_seed(0)
    model = Fractal([(SequenceChunks(4, 2), ARLevelConfig(width=16, depth=1, heads=4, embed="table"))], leaf=leaf)
    model = roughen(model, seed=0, scale=0.4).eval()
    assert isinstance(model.leaf, SlotKindsLeaf) and isinstance(model.leaf.leaf, RGBLeaf)
    assert model.leaf.autoregressive and not hasattr(model.leaf.leaf, "slot_embed")
    check_normalisation(model)
    with torch.no_grad():
        lp = model.log_prob(support(model)).value
    inside = model.leaf.slot_kinds.support_mask(support(model))
    assert bool(torch.isneginf(lp[~inside]).all()) and math.isclose(float(lp[inside].exp().sum()), 1.0, abs_tol=1e-5)


def test_canvas_only_when_something_needs_it():
    """Positions are tracked for a slot-kinds leaf or a constraint, never otherwise."""
    plain = graph_fractal(GraphEncoding(2, 2, 1), slots=False)
    x = torch.zeros(2, 4, dtype=torch.long)
    assert plain._canvas(x) is None and plain._canvas(x, needed=True) is not None
    slots = graph_fractal(GraphEncoding(2, 2, 1))
    canvas = slots._canvas(x, torch.zeros_like(x, dtype=torch.bool))
    assert canvas.positions.tolist() == [[0, 1, 2, 3], [4, 5, 6, 7]] and canvas.num_elements == 4
    view = canvas.at(canvas.positions[:, 2:])
    view.record(view.flat_positions(2), torch.tensor([[1, 2], [2, 1]]))  # shared by every view
    calls = []

    def constraint(values, decided, positions):  # what a constraint sees: the shared canvas
        calls.append((values.tolist(), decided.tolist(), positions.tolist()))
        return torch.ones(*positions.shape, 3, dtype=torch.bool)

    assert canvas.allowed(constraint, torch.tensor([[0], [4]]), 3).shape == (2, 1, 3)
    assert calls == [([[0, 0, 1, 2], [0, 0, 2, 1]], [[False, False, True, True]] * 2, [[0], [0]])]


# ---- sampling constraints ----------------------------------------------------------------------


def no_value(v: int):
    """A constraint that forbids value ``v`` everywhere, recording what it was called with."""
    calls = []

    def constraint(canvas, decided, positions):
        calls.append((canvas.clone(), decided.clone(), positions.clone()))
        allowed = torch.ones(*positions.shape, 3, dtype=torch.bool)
        allowed[..., v] = False
        return allowed

    return constraint, calls


@pytest.mark.parametrize("slots", [False, True])
@pytest.mark.parametrize("top", ["ar", "mar"])
def test_constraint_is_obeyed_and_sees_the_partial_canvas(slots, top):
    model = graph_fractal(GraphEncoding(2, 2, 1), top, slots=slots)
    constraint, calls = no_value(2)
    x = model.sample(50, generator=torch.Generator().manual_seed(0), constraint=constraint)
    assert not bool((x == 2).any())
    # one call per element, every instance at once (leaf row i is instance i); each call sees
    # the elements decided before it, holding their final values
    assert len(calls) == 4
    for step, (canvas, decided, positions) in enumerate(calls):
        assert bool((decided.sum(1) == step).all())
        assert not bool(decided.gather(1, positions).any())
        assert bool((canvas == x)[decided].all())
    if top == "ar":  # raster order: the last call decides element 3 after elements 0..2
        assert bool((calls[-1][2] == 3).all())


def test_permissive_constraint_changes_nothing():
    model = graph_fractal(GraphEncoding(2, 3, 2))

    def anything(canvas, decided, positions):
        return torch.ones(*positions.shape, model.num_values, dtype=torch.bool)

    a = model.sample(40, generator=torch.Generator().manual_seed(3))
    b = model.sample(40, generator=torch.Generator().manual_seed(3), constraint=anything)
    assert torch.equal(a, b)


@pytest.mark.parametrize(
    ("result", "match"),
    [
        (lambda p: torch.ones(*p.shape, 2, dtype=torch.bool), "must return a bool tensor"),
        (lambda p: torch.ones(*p.shape, 3), "must return a bool tensor"),
        (lambda p: torch.zeros(*p.shape, 3, dtype=torch.bool), "allows no value"),
    ],
)
def test_bad_constraints(result, match):
    model = graph_fractal(GraphEncoding(2, 2, 1))
    with pytest.raises(ValueError, match=match):
        model.sample(3, constraint=lambda canvas, decided, positions: result(positions))


def test_constraint_must_be_callable():
    with pytest.raises(TypeError, match="constraint: expected a callable"):
        SampleOptions(constraint=3)


def test_slot_kinds_block_values_the_constraint_allows():
    """Slot kinds and a constraint combine: a constraint cannot re-allow a structural non-zero."""
    model = graph_fractal(GraphEncoding(2, 2, 1))

    def only_two(canvas, decided, positions):
        allowed = torch.zeros(*positions.shape, 3, dtype=torch.bool)
        allowed[..., 2] = True
        return allowed | (positions[..., None] == 1)  # slot 1 (a structural zero): anything

    with pytest.raises(ValueError, match="allows no value"):  # edge slot: B = 1, value 2 banned
        model.sample(3, constraint=only_two)
