"""Plug-ins with the bugs a plug-in author planted in issue 20 (item 8), each beside the
working twin the kit must accept. Written as a user would, against the public API and the
tutorial's GRU level (``tests/own_level.py``, read from docs/tutorials/own_level.md).

Shape letters: N instances, R decoding rows, k children, M leaf instances, E elements,
V values, D width, T condition tokens.
"""

from __future__ import annotations

import dataclasses
from typing import Any, ClassVar

import torch
from own_level import CachedGRULevel, CachedGRULevelConfig
from torch import Tensor, nn

from fractalkit import BuildContext, ComponentConfig, Leaf, register
from fractalkit.conditioners import Conditioner, ConditionerConfig
from fractalkit.conditioners.base import check_instances
from kit.components import MarkovLeaf, Strided

# ---- a cache dropped every 2 steps (wrong from the third step on) ------------------------------


class ForgetfulGRULevel(CachedGRULevel):
    """Broken: the cached path drops its recurrent state every second step (steps 2, 4, ...),
    so with 2 children it is right and with 4 it is not."""

    def step_conditions(self, state, children, decided, step):
        if isinstance(state, dict) and step.index > 0 and step.index % 2 == 0:
            state["h"] = None  # the bug
        return super().step_conditions(state, children, decided, step)


@register("planted_forgetful_gru")
@dataclasses.dataclass(frozen=True)
class ForgetfulGRULevelConfig(CachedGRULevelConfig):

    def build(self, ctx: BuildContext) -> ForgetfulGRULevel:
        return ForgetfulGRULevel(ctx.partitioner, ctx.child, self, cond_dim=ctx.cond_dim,
                                 cond_tokens=ctx.cond_tokens, normalisation=ctx.normalisation)


# ---- a cache that does not advance over known children (stale below the top) ------------------


class SkippingGRULevel(CachedGRULevel):
    """Broken: a step that picks no row (its child is known) returns at once, so the GRU never
    reads the known child and the next step's state is stale."""

    def step_conditions(self, state, children, decided, step):
        if isinstance(state, dict) and not bool(step.pick.any()):
            return children.new_zeros(0, 1, self.width, dtype=self.inputs.cond_emb.weight.dtype)  # the bug
        return super().step_conditions(state, children, decided, step)


@register("planted_skipping_gru")
@dataclasses.dataclass(frozen=True)
class SkippingGRULevelConfig(CachedGRULevelConfig):

    def build(self, ctx: BuildContext) -> SkippingGRULevel:
        return SkippingGRULevel(ctx.partitioner, ctx.child, self, cond_dim=ctx.cond_dim,
                                cond_tokens=ctx.cond_tokens, normalisation=ctx.normalisation)


# ---- a null embedding that is not saved --------------------------------------------------------


class LabelConditioner(Conditioner):
    """Class labels ``int64 [N]`` in ``[0, K)``; the null embedding is a Parameter (saved)."""

    def __init__(self, width: int, tokens: int, config: Labels) -> None:
        super().__init__(width, tokens, drop=config.drop)
        self.table = nn.Embedding(config.num_classes, width)
        self.num_classes = config.num_classes
        self.make_null(width)

    def make_null(self, width: int) -> None:
        self.null_embedding = nn.Parameter(torch.randn(1, width) * 0.5)

    def check(self, c: Any, n: int | None) -> int:
        if not isinstance(c, Tensor) or c.dtype != torch.int64 or c.dim() != 1:
            raise TypeError(f"Labels: expected int64 labels [N], got {c!r:.60}")
        return check_instances(c, n, "Labels")

    def embed(self, c: Any, *, drop: bool, generator: torch.Generator | None) -> Tensor:
        return self.table(c)  # [N, D]


class BufferNullConditioner(LabelConditioner):
    """Broken: the null embedding is a non-persistent buffer made from random numbers, so
    ``save`` leaves it out and ``load`` makes another one: guided samples change."""

    def make_null(self, width: int) -> None:
        self.register_buffer("null_embedding", torch.randn(1, width) * 0.5, persistent=False)


@register("planted_labels")
@dataclasses.dataclass(frozen=True)
class Labels(ConditionerConfig):
    num_classes: int = 2
    drop: float = 0.1

    def build(self, ctx: BuildContext) -> LabelConditioner:
        return LabelConditioner(ctx.cond_dim, ctx.cond_tokens, self)


@register("planted_buffer_null_labels")
@dataclasses.dataclass(frozen=True)
class BufferNullLabels(Labels):

    def build(self, ctx: BuildContext) -> LabelConditioner:
        return BufferNullConditioner(ctx.cond_dim, ctx.cond_tokens, self)


LABELS = [torch.tensor([0]), torch.tensor([1])]
"""Example conditions of both conditioners, each for one instance."""


# ---- a partitioner that is not a bijection -----------------------------------------------------


class Overlapping(Strided):
    """Broken: child 1 repeats child 0's first element instead of holding its own."""

    kind: ClassVar[str] = "planted_overlapping"

    def _split(self, x: Tensor) -> Tensor:
        children = super()._split(x).clone()
        children[:, 1, 0] = children[:, 0, 0]  # the bug: element 1 is lost, element 0 twice
        return children


# ---- a constructor that reads a tensor's values (breaks Fractal.load's meta build) -------------


class MetaUnsafeLeaf(MarkovLeaf):
    """Broken for loading: the constructor reads the values of a tensor it made, which fails
    on the meta device ``Fractal.load`` builds the model on first."""

    def __init__(self, event_shape, cond_dim, cond_tokens, num_values):
        super().__init__(event_shape, cond_dim, cond_tokens, num_values)
        self.centre = float(torch.arange(num_values, dtype=torch.float64).mean())  # the bug

    def element_logits(self, x: Tensor, cond: Tensor) -> Tensor:
        return super().element_logits(x, cond) - 0.0 * self.centre


class MetaSafeLeaf(MarkovLeaf):
    """The twin: the same constant from plain Python."""

    def __init__(self, event_shape, cond_dim, cond_tokens, num_values):
        super().__init__(event_shape, cond_dim, cond_tokens, num_values)
        self.centre = (num_values - 1) / 2


@register("planted_meta_unsafe")
@dataclasses.dataclass(frozen=True)
class MetaUnsafeLeafConfig(ComponentConfig):
    num_values: int = 3

    def build(self, ctx: BuildContext) -> Leaf:
        return MetaUnsafeLeaf(tuple(ctx.event_shape), ctx.cond_dim, ctx.cond_tokens, self.num_values)


@register("planted_meta_safe")
@dataclasses.dataclass(frozen=True)
class MetaSafeLeafConfig(ComponentConfig):
    num_values: int = 3

    def build(self, ctx: BuildContext) -> Leaf:
        return MetaSafeLeaf(tuple(ctx.event_shape), ctx.cond_dim, ctx.cond_tokens, self.num_values)


# ---- sampling that ignores its generator --------------------------------------------------------


class ArgmaxLeaf(MarkovLeaf):
    """Broken: decodes at a temperature of 1e-6, i.e. takes the most likely value."""

    def decode(self, x, known, cond, ctx):
        options = dataclasses.replace(ctx.options, temperature=1e-6)
        return super().decode(x, known, cond, dataclasses.replace(ctx, options=options))


@register("planted_argmax")
@dataclasses.dataclass(frozen=True)
class ArgmaxLeafConfig(ComponentConfig):
    num_values: int = 3

    def build(self, ctx: BuildContext) -> Leaf:
        return ArgmaxLeaf(tuple(ctx.event_shape), ctx.cond_dim, ctx.cond_tokens, self.num_values)
