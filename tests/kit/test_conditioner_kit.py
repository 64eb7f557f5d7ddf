"""The contract kit runs over every conditioner (issue 12): each built-in, the user conditioner
of ``tests/test_conditioners.py`` (with and without a null condition), and two deliberately
broken conditioners that a kit check must catch.
"""

from __future__ import annotations

import dataclasses
from typing import Any, ClassVar

import pytest
import torch
from test_conditioners import Scalar, ScalarConditioner
from torch import nn

from fractalkit import ClassLabel, MARLevelConfig, Sequence, Vector, register_config
from fractalkit.config import CONFIG_REGISTRY, BuildContext
from fractalkit.testing import (
    ContractError,
    check_component,
    check_condition_dropout,
    check_condition_reaches_model,
    check_sampler,
    default_conditions,
    join_conditions,
    random_conditions,
    repeat_condition,
    run_all,
    take_conditions,
    tiny_fractal,
)

# Conditions of the user conditioner: one float per instance, each for one instance.
SCALARS = [torch.tensor([0.5]), torch.tensor([2.0]), torch.tensor([4.0])]

CONDITIONERS: dict[str, tuple[Any, list[Any] | None]] = {
    "class_label": (ClassLabel(3), None),
    "vector": (Vector(2, mean=(0.5, -1.0), std=(2.0, 0.5), feature_drop=0.2), None),
    "tokens": (Sequence(4, vocab=5), None),
    "frames": (Sequence(3, features=2), None),
    "user": (Scalar(), SCALARS),
    "user_without_null": (Scalar(null=False), SCALARS),
}

ALWAYS = {
    "normalisation", "condition_reaches_model", "decomposition", "kv_cache", "seeded_sampling",
    "callback", "completion", "sampler", "sampler_temperature", "completion_law",
    "config_round_trip", "save_load",
}
WITH_NULL = {"condition_dropout", "sampler_guidance", "sampler_null"}


def test_every_built_in_conditioner_has_a_row() -> None:
    built_in = {
        kind for kind, cls in CONFIG_REGISTRY.items()
        if cls.__module__.startswith("fractalkit.conditioners.") and kind != "unconditional"
    }
    covered = {cfg.kind for cfg, _ in CONDITIONERS.values()}
    assert built_in <= covered, f"add rows using {sorted(built_in - covered)} to CONDITIONERS"


@pytest.mark.parametrize("name", list(CONDITIONERS))
def test_kit_runs_over_every_conditioner(name: str) -> None:
    config, conditions = CONDITIONERS[name]
    # Conditioner networks make the roughened tiny laws peaked: less noise, more draws and a
    # milder guidance keep enough chi-square cells (figures in the report).
    labels = name == "class_label"
    results = check_component(
        conditioner=config, conditions=conditions, num_samples=4000 if labels else 8000,
        scale=0.4 if labels else 0.2, guidance=3.0 if labels else 2.0,
    )
    top = results["top"]
    expected = ALWAYS | (WITH_NULL if config.drop and getattr(config, "null", True) else set())
    assert expected <= set(top), sorted(expected - set(top))
    assert top["normalisation"].figure < 1e-9
    # The null condition is normalised too (and is the first case) when there is one.
    assert ("c=None (null)" in top["normalisation"].detail) == ("sampler_null" in top)
    assert top["condition_reaches_model"].figure > 1e-3
    for check in ("sampler", "sampler_temperature", "completion_law"):
        assert top[check].p_value > 1e-3


@pytest.mark.slow
@pytest.mark.parametrize("name", ["vector", "tokens", "user"])
def test_kit_runs_over_conditioners_with_an_order_taking_level(name: str) -> None:
    config, conditions = CONDITIONERS[name]
    results = check_component(
        level=MARLevelConfig(width=16, depth=1, heads=2), conditioner=config,
        conditions=conditions, num_samples=8000, scale=0.2, guidance=2.0,
        # Sampling seed 0 drew a p-value of 3e-4 for the vector row's guided law under the MAR
        # level (chi-square, 8000 draws); 40000 draws from seeds 10 and 11 gave p = 0.33 and
        # 0.31, so it was the 1-in-a-thousand unlucky seed: the kit's advice is to change it.
        seed=1,
    )
    assert {"top", "below"} <= set(results)
    assert "orders_reach_levels" in results["top"]


def test_class_label_spellings_still_work() -> None:
    model = tiny_fractal()
    a = check_sampler(model, 1)
    b = check_sampler(model, y=1)
    c = check_sampler(model, torch.tensor([1]))
    assert a.statistic == b.statistic == c.statistic
    assert set(run_all(model, label=1)) >= ALWAYS | WITH_NULL


def test_conditions_batch_without_knowing_the_conditioner() -> None:
    seqs = [[torch.tensor([1, 2])], [torch.tensor([3])]]
    joined = join_conditions(seqs)
    assert [s.tolist() for s in joined] == [[1, 2], [3]]
    assert [s.tolist() for s in take_conditions(joined, torch.tensor([1, 1, 0]))] == [[3], [3], [1, 2]]
    pair = join_conditions([(torch.zeros(1, 2), torch.ones(1, 2, dtype=torch.bool))] * 2)
    assert pair[0].shape == (2, 2) and pair[1].dtype == torch.bool
    assert repeat_condition(torch.tensor([[1.0, 2.0]]), 3).shape == (3, 2)
    with pytest.raises(TypeError, match="cannot batch a condition of type dict"):
        join_conditions([{"a": 1}])


def test_a_user_conditioner_needs_example_conditions() -> None:
    model = tiny_fractal(conditioner=Scalar())
    with pytest.raises(ValueError, match="cannot invent conditions for ScalarConditioner"):
        run_all(model)
    assert default_conditions(model) is None
    labels = random_conditions(tiny_fractal(num_classes=3), 5, seed=2)
    assert labels.dtype == torch.long and labels.shape == (5,)


# ---- deliberately broken conditioners: the kit must fail ---------------------------------------


class IgnoringConditioner(ScalarConditioner):
    """Broken: every condition embeds to the same vector (the condition never reaches the model)."""

    def __init__(self, width: int, tokens: int, config: Any) -> None:
        super().__init__(width, tokens, config)
        self.constant = nn.Parameter(torch.randn(1, width) * 0.02)

    def embed(self, c: Any, *, drop: bool, generator: torch.Generator | None) -> torch.Tensor:
        return self.constant.expand(c.shape[0], -1)


class ZeroDropConditioner(ScalarConditioner):
    """Broken: dropout substitutes zeros, not the learned null condition, so guidance's
    unconditional half (which reads the null) is a condition training never showed."""

    def forward(self, c: Any, n: int, *, drop: bool = False, generator=None) -> torch.Tensor:
        e = super().forward(c, n, drop=False)
        if c is not None and drop:
            dropped = torch.rand(n, generator=generator) < self.drop
            e = torch.where(dropped[:, None, None], torch.zeros_like(e), e)
        return e


@register_config
@dataclasses.dataclass(frozen=True)
class IgnoringScalar(Scalar):
    kind: ClassVar[str] = "test_ignoring_scalar"

    def build(self, ctx: BuildContext) -> IgnoringConditioner:
        return IgnoringConditioner(ctx.cond_dim, ctx.cond_tokens, self)


@register_config
@dataclasses.dataclass(frozen=True)
class ZeroDropScalar(Scalar):
    kind: ClassVar[str] = "test_zero_drop_scalar"

    def build(self, ctx: BuildContext) -> ZeroDropConditioner:
        return ZeroDropConditioner(ctx.cond_dim, ctx.cond_tokens, self)


def test_kit_catches_a_conditioner_that_ignores_its_condition() -> None:
    with pytest.raises(ContractError, match=r"check_condition_reaches_model failed: .*0 \(tolerance > 0.001\)"):
        check_component(conditioner=IgnoringScalar(), conditions=SCALARS, num_samples=1000)
    with pytest.raises(ContractError, match="the condition never reaches the model"):
        check_condition_reaches_model(tiny_fractal(conditioner=IgnoringScalar()), conditions=SCALARS)


def test_kit_catches_dropout_that_does_not_use_the_null_condition() -> None:
    model = tiny_fractal(conditioner=ZeroDropScalar(drop=0.3))
    with pytest.raises(ContractError, match="check_condition_dropout failed: 0 of 2000 rows"):
        check_condition_dropout(model, conditions=SCALARS)
    with pytest.raises(ContractError, match="other than the learned null condition"):
        run_all(model, conditions=SCALARS, num_samples=1000)
    correct = check_condition_dropout(tiny_fractal(conditioner=Scalar(drop=0.3)), conditions=SCALARS)
    assert abs(correct.figure - 0.3) < 0.05
