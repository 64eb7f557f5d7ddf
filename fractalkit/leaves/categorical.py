"""A categorical leaf: independent V-way distributions over an instance's elements given c.

Shape letters: M instances, T condition tokens, D condition width, E elements, V values.
"""

from __future__ import annotations

import dataclasses
import math

from torch import Tensor, nn

from fractalkit.config import BuildContext, LeafConfig
from fractalkit.leaves.base import Leaf
from fractalkit.registry import register


class CategoricalLeaf(Leaf):
    """``p(x | c) = prod_e Categorical(x_e; softmax(W LN(c) + b)_e)``: one linear head.

    For a single element (E = 1, e.g. a character, an atom type, one pixel channel) this is
    exactly a V-way categorical. Its likelihood is exact.

    Args:
        event_shape: shape of one instance.
        cond_dim: D of the incoming condition (token 0 is read).
        cond_tokens: T of the incoming condition.
        num_values: V.
        channel_weights: training-only per-element weights (see :class:`Leaf`).
    """

    autoregressive = False

    def __init__(
        self,
        event_shape: tuple[int, ...],
        cond_dim: int,
        cond_tokens: int,
        num_values: int,
        channel_weights: tuple[float, ...] | None = None,
    ) -> None:
        super().__init__(event_shape, cond_dim, cond_tokens, num_values, channel_weights)
        e = math.prod(self.event_shape)
        self.norm = nn.LayerNorm(cond_dim, eps=1e-6)
        self.head = nn.Linear(cond_dim, e * num_values)
        nn.init.xavier_uniform_(self.head.weight)
        nn.init.zeros_(self.head.bias)

    def element_logits(self, x: Tensor, cond: Tensor) -> Tensor:
        """``[M, E]`` values (unused) and ``[M, T, D]`` condition to ``[M, E, V]`` logits."""
        logits = self.head(self.norm(cond[:, 0]))  # [M, E*V]
        return logits.view(x.shape[0], x.shape[1], self.num_values)


@register("categorical")
@dataclasses.dataclass(frozen=True)
class CategoricalLeafConfig(LeafConfig):
    """Configuration of a :class:`CategoricalLeaf`.

    Attributes:
        num_values: V, values per element.
        channel_weights: training-only per-element weights, or None.
    """

    num_values: int = 256
    channel_weights: tuple[float, ...] | None = None

    def build(self, ctx: BuildContext) -> CategoricalLeaf:
        """The leaf for instances of ``ctx.event_shape`` under ``[*, cond_tokens, cond_dim]`` conditions."""
        return CategoricalLeaf(
            tuple(ctx.event_shape), ctx.cond_dim, ctx.cond_tokens, self.num_values, self.channel_weights
        )
