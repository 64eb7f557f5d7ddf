"""Plug-in components defined outside the package, as a user would write them: a custom leaf, a
custom partitioner, and deliberately broken components that the kit must catch.

Shape letters: N instances, M leaf instances, T condition tokens, D condition width, E elements,
V values, L sequence length, k children.
"""

from __future__ import annotations

import dataclasses
from typing import Any, ClassVar

import torch
from torch import Tensor, nn

from fractalkit import (
    BuildContext,
    ComponentConfig,
    Fractal,
    Leaf,
    Partitioner,
    register_config,
    register_partitioner,
)

# ---- a working custom leaf and partitioner ----------------------------------------------------


class MarkovLeaf(Leaf):
    """An autoregressive leaf: element e's logits come from the condition plus an embedding of
    element e - 1 (a first-order Markov chain over the instance's elements)."""

    autoregressive = True

    def __init__(self, event_shape, cond_dim, cond_tokens, num_values):
        super().__init__(event_shape, cond_dim, cond_tokens, num_values)
        self.head = nn.Linear(cond_dim, self.num_elements * num_values)
        self.previous = nn.Embedding(num_values + 1, num_values)  # index V: "no previous element"

    def element_logits(self, x: Tensor, cond: Tensor) -> Tensor:
        m, e = x.shape
        base = self.head(cond[:, 0]).view(m, e, self.num_values)  # [M, E, V]
        start = torch.full_like(x[:, :1], self.num_values)  # [M, 1]
        prev = torch.cat([start, x[:, :-1]], dim=1)  # [M, E]: element e sees only e - 1
        return base + self.previous(prev).to(base.dtype)


@register_config
@dataclasses.dataclass(frozen=True)
class MarkovLeafConfig(ComponentConfig):
    """Config of :class:`MarkovLeaf` (registered: saved files find it by ``kind``)."""

    kind = "kit_test_markov"
    num_values: int = 3

    def build(self, ctx: BuildContext) -> MarkovLeaf:
        """The leaf for instances of ``ctx.event_shape``."""
        return MarkovLeaf(ctx.event_shape, ctx.cond_dim, ctx.cond_tokens, self.num_values)


class Strided(Partitioner):
    """A sequence ``[N, L]`` dealt into k interleaved children: child j holds x[j::k]."""

    kind: ClassVar[str] = "kit_test_strided"

    def __init__(self, length: int, children: int) -> None:
        if length % children:
            raise ValueError(f"Strided: {children} children do not divide length {length}")
        self.length, self.children = length, children
        self.event_shape = (length,)
        self.child_shape = (length // children,)
        self.grid = (1, children)

    def _split(self, x: Tensor) -> Tensor:
        # [N, L] -> [N, L/k, k] -> [N, k, L/k]
        return x.reshape(x.shape[0], self.length // self.children, self.children).transpose(1, 2)

    def _merge(self, children: Tensor) -> Tensor:
        # [N, k, L/k] -> [N, L]
        return children.transpose(1, 2).reshape(children.shape[0], self.length)

    def config(self) -> dict[str, Any]:
        """``{"kind": "kit_test_strided", "length": L, "children": k}``."""
        return {"kind": self.kind, "length": self.length, "children": self.children}


register_partitioner(Strided)


# ---- broken components ------------------------------------------------------------------------


class PeekingLeaf(Leaf):
    """Broken: each element's logits see the element's own value (a leak), so the per-row
    softmax is normalised but the probabilities of all configurations do not sum to 1, and
    sampling (which cannot see the value yet) disagrees with the likelihood."""

    autoregressive = False

    def __init__(self, event_shape, cond_dim, cond_tokens, num_values):
        super().__init__(event_shape, cond_dim, cond_tokens, num_values)
        self.head = nn.Linear(cond_dim, self.num_elements * num_values)

    def element_logits(self, x: Tensor, cond: Tensor) -> Tensor:
        m, e = x.shape
        base = self.head(cond[:, 0]).view(m, e, self.num_values)
        own = nn.functional.one_hot(x, self.num_values).to(base.dtype)  # [M, E, V]
        return base + 2.0 * own  # the bug: the value being scored boosts itself


@register_config
@dataclasses.dataclass(frozen=True)
class PeekingLeafConfig(ComponentConfig):
    """Config of the broken :class:`PeekingLeaf`."""

    kind = "kit_test_peeking"
    num_values: int = 3

    def build(self, ctx: BuildContext) -> PeekingLeaf:
        """The leaf for instances of ``ctx.event_shape``."""
        return PeekingLeaf(ctx.event_shape, ctx.cond_dim, ctx.cond_tokens, self.num_values)


class ColdLeaf(MarkovLeaf):
    """Broken: its sampling path ignores the temperature (it decodes as if T were 1).

    The override reaches into the decoding context (``ctx.options``), an internal the kit never
    touches: the breakage lives here, in the test, not in the kit.
    """

    def decode(self, x, known, cond, ctx):
        options = dataclasses.replace(ctx.options, temperature=1.0)
        return super().decode(x, known, cond, dataclasses.replace(ctx, options=options))


@register_config
@dataclasses.dataclass(frozen=True)
class ColdLeafConfig(ComponentConfig):
    """Config of the broken :class:`ColdLeaf`."""

    kind = "kit_test_cold"
    num_values: int = 3

    def build(self, ctx: BuildContext) -> ColdLeaf:
        """The leaf for instances of ``ctx.event_shape``."""
        return ColdLeaf(ctx.event_shape, ctx.cond_dim, ctx.cond_tokens, self.num_values)


def drift_the_cache(model: Fractal, size: float = 1e-3) -> Fractal:
    """Broken: make every cached decoding step of ``model`` drift (in place; returns it).

    A forward hook on each transformer backbone adds ``size`` times the number of cached steps
    (times a ramp over the features) to its output whenever it runs with KV caches, as a cache that accumulates an error would;
    the uncached path and teacher-forced scoring are untouched. It relies on the backbones'
    ``caches`` keyword, a level internal, so it lives in the tests.
    """
    from fractalkit.nn.blocks import Backbone

    def hook(module, args, kwargs, output):
        caches = kwargs.get("caches")
        if caches is None:
            return output
        hook.calls += 1
        # Not a constant shift: a LayerNorm downstream would remove that.
        ramp = torch.linspace(-1, 1, output.shape[-1], dtype=output.dtype, device=output.device)
        return output + size * hook.calls * ramp

    hook.calls = 0
    for module in model.modules():
        if isinstance(module, Backbone):
            module.register_forward_hook(hook, with_kwargs=True)
    return model
