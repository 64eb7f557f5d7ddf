"""Slot kinds: a leaf told which kind of slot each element fills, normalised over its allowed values.

Shape letters: D elements of the top-level instance (flattened), K kinds, V values, E elements
of a leaf instance, M leaf instances, T condition tokens.

Some data mixes several kinds of slot in one integer tensor: a graph encoding
(:class:`fractalkit.graphs.GraphEncoding`) holds node-type slots (values ``0..A``), edge
slots (``0..B``) and structural zeros (always 0). A plain leaf spends probability on every one
of the V values everywhere and cannot see which kind of slot it fills. With :class:`SlotKinds`
the leaf (i) adds a learned embedding of the element's kind to its condition and (ii) puts
probability only on the kind's allowed values: ``p(x_e = v) = softmax over allowed(kind_e)``,
zero elsewhere. An element whose kind allows one value has probability exactly 1 (log-prob 0):
the model spends nothing on structural zeros. The likelihood stays a normalised distribution
over the restricted support (the tensors whose every element holds an allowed value).

:class:`SlotKindsLeaf` wraps any leaf with this; :class:`SlotCategoricalLeaf` is the wrapper
around a :class:`~fractalkit.CategoricalLeaf` that :class:`SlotCategoricalLeafConfig` builds. The
element's kind is looked up from its position in the top-level instance: the wrapper declares
``needs_positions``, so :class:`fractalkit.Fractal` tracks positions through every level (the same
splits the data goes through) in a :class:`fractalkit.protocol.canvas.Canvas`.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import torch
from torch import Tensor, nn

from fractalkit.config import BuildContext
from fractalkit.leaves.base import Leaf
from fractalkit.leaves.categorical import CategoricalLeaf, CategoricalLeafConfig
from fractalkit.protocol.contexts import DecodeContext, ScoreContext
from fractalkit.registry import register


@dataclasses.dataclass(frozen=True)
class SlotKinds:
    """Per-element kinds of a top-level instance and the values each kind allows.

    Attributes:
        element_kinds: one kind in ``[0, K)`` per element of the top-level event, flattened
            in C order (D entries).
        allowed_values: for each kind, the values it allows (a non-empty set in ``[0, V)``).

    Raises:
        ValueError: if a kind has no allowed value, a value repeats or is negative, or an
            element's kind has no entry in ``allowed_values``.

    Example:
        >>> kinds = SlotKinds((0, 2, 0, 1), ((1, 2), (0, 1), (0,)))  # type, zero, type, edge
        >>> kinds.num_kinds, kinds.allowed_mask(3)[2].tolist()
        (3, [True, False, False])
    """

    element_kinds: tuple[int, ...]
    allowed_values: tuple[tuple[int, ...], ...]

    def __post_init__(self) -> None:
        kinds = tuple(int(k) for k in self.element_kinds)
        allowed = tuple(tuple(int(v) for v in values) for values in self.allowed_values)
        object.__setattr__(self, "element_kinds", kinds)
        object.__setattr__(self, "allowed_values", allowed)
        if not kinds:
            raise ValueError("SlotKinds: element_kinds is empty; give one kind per element")
        for k, values in enumerate(allowed):
            if not values or len(set(values)) != len(values) or min(values) < 0:
                raise ValueError(
                    f"SlotKinds: kind {k} must allow a non-empty set of distinct values >= 0, "
                    f"got {values}"
                )
        bad = sorted({k for k in kinds if not 0 <= k < len(allowed)})
        if bad:
            raise ValueError(
                f"SlotKinds: element kinds {bad[:10]} have no allowed_values entry "
                f"(kinds must lie in [0, {len(allowed)}))"
            )

    @property
    def num_kinds(self) -> int:
        """K."""
        return len(self.allowed_values)

    @property
    def num_elements(self) -> int:
        """D, elements of the top-level instance."""
        return len(self.element_kinds)

    def check(self, num_values: int) -> None:
        """Raise a ValueError if an allowed value lies outside ``[0, num_values)``."""
        for k, values in enumerate(self.allowed_values):
            if max(values) >= num_values:
                raise ValueError(
                    f"SlotKinds: kind {k} allows value {max(values)}, outside the leaf's "
                    f"[0, {num_values})"
                )

    def allowed_mask(self, num_values: int) -> Tensor:
        """bool ``[K, V]``: True where a kind allows a value."""
        self.check(num_values)
        mask = torch.zeros(self.num_kinds, num_values, dtype=torch.bool)
        for k, values in enumerate(self.allowed_values):
            mask[k, list(values)] = True
        return mask

    def support_mask(self, x: Tensor) -> Tensor:
        """bool ``[N]``: which top-level instances ``x [N, *event]`` lie in the restricted support."""
        flat = x.reshape(x.shape[0], -1).long()
        if flat.shape[1] != self.num_elements:
            raise ValueError(
                f"SlotKinds.support_mask: instances have {flat.shape[1]} elements, the kinds "
                f"describe {self.num_elements}"
            )
        mask = self.allowed_mask(int(flat.max()) + 1 if flat.numel() else 1).to(flat.device)
        kinds = torch.tensor(self.element_kinds, device=flat.device)
        return mask[kinds[None].expand_as(flat), flat].all(1)


class SlotKindsLeaf(Leaf):
    """Wraps a leaf with :class:`SlotKinds`: a learned embedding of the elements' kinds is added
    to the condition, and each element is normalised over its kind's allowed values. Its
    likelihood is exact when the wrapped leaf's is.

    The wrapped leaf supplies the logits (:meth:`element_logits`); scoring, sampling, guidance
    and constraints are the leaf base's, restricted through :meth:`prepare`.

    Args:
        leaf: the wrapped leaf (its event shape, condition and values are the wrapper's).
        slot_kinds: the kinds of the top-level instance's elements and their allowed values.

    Raises:
        ValueError: an allowed value outside the leaf's ``[0, V)``.

    Attributes:
        leaf: the wrapped leaf.
        slot_kinds: the :class:`SlotKinds`.
        slot_embed: ``nn.Embedding(E * K, D)``, a vector per (element, kind), N(0, 0.02).
    """

    needs_positions = True

    def __init__(self, leaf: Leaf, slot_kinds: SlotKinds) -> None:
        super().__init__(leaf.event_shape, leaf.cond_dim, leaf.cond_tokens, leaf.num_values,
                         leaf.channel_weights)
        slot_kinds.check(self.num_values)
        self.leaf = leaf
        self.autoregressive = leaf.autoregressive  # the element loop follows the wrapped leaf
        self.slot_kinds = slot_kinds
        # Not persistent: derived from the config.
        self.register_buffer("slot_kind_of", torch.tensor(slot_kinds.element_kinds, dtype=torch.long),
                             persistent=False)  # [D]
        self.register_buffer("slot_allowed", slot_kinds.allowed_mask(self.num_values),
                             persistent=False)  # [K, V]
        e, k = self.num_elements, slot_kinds.num_kinds
        self.slot_embed = nn.Embedding(e * k, self.cond_dim)  # a vector per (element, kind)
        nn.init.normal_(self.slot_embed.weight, std=0.02)
        self.register_buffer("slot_offset", torch.arange(e) * k, persistent=False)

    def element_logits(self, x: Tensor, cond: Tensor) -> Tensor:
        """The wrapped leaf's logits ``[M, E, V]`` (``cond`` already holds the kind embedding)."""
        return self.leaf.element_logits(x, cond)

    def kinds(self, ctx: ScoreContext | DecodeContext, rows: int) -> Tensor:
        """int64 ``[M, E]``: the kinds of the elements of this call's ``rows`` instances.

        Raises:
            ValueError: the call tracks no positions (not run through :class:`fractalkit.Fractal`).
        """
        if ctx.canvas is None:
            raise ValueError(
                f"{type(self).__name__}: this leaf has slot kinds and needs each element's "
                "position; score and sample it through fractalkit.Fractal (log_prob, loss, "
                "sample), which tracks them"
            )
        d = self.slot_kind_of.shape[0]
        return self.slot_kind_of[ctx.canvas.flat_positions(rows) % d]

    def prepare(self, cond: Tensor, ctx: ScoreContext | DecodeContext, rows: int) -> tuple[Tensor, Tensor]:
        """``cond`` plus the embedding of the elements' kinds (every token), and the kinds'
        allowed values ``[M, E, V]``."""
        kinds = self.kinds(ctx, rows)  # [M, E]
        emb = self.slot_embed(kinds + self.slot_offset).sum(1)  # [M, D]
        return cond + emb[:, None].to(cond.dtype), self.slot_allowed[kinds]


class SlotCategoricalLeaf(SlotKindsLeaf):
    """A :class:`CategoricalLeaf` wrapped with :class:`SlotKinds` (see :class:`SlotKindsLeaf`).

    Args:
        event_shape: shape of one leaf instance.
        cond_dim: D of the incoming condition (token 0 is read).
        cond_tokens: T of the incoming condition.
        num_values: V.
        slot_kinds: the kinds of the top-level instance's elements.
        channel_weights: training-only per-element weights (see :class:`Leaf`).
    """

    def __init__(
        self,
        event_shape: tuple[int, ...],
        cond_dim: int,
        cond_tokens: int,
        num_values: int,
        slot_kinds: SlotKinds,
        channel_weights: tuple[float, ...] | None = None,
    ) -> None:
        super().__init__(
            CategoricalLeaf(event_shape, cond_dim, cond_tokens, num_values, channel_weights), slot_kinds
        )


@register("slot_categorical")
@dataclasses.dataclass(frozen=True)
class SlotCategoricalLeafConfig(CategoricalLeafConfig):
    """Configuration of a :class:`SlotCategoricalLeaf` (saved and loaded like any leaf).

    Attributes:
        num_values: V, values per element.
        channel_weights: training-only per-element weights, or None.
        element_kinds: one kind per element of the top-level event (D entries, C order).
        allowed_values: per kind, its allowed values.

    Example:
        >>> from fractalkit.partition import GraphEncoding
        >>> enc = GraphEncoding(max_nodes=2, num_node_types=2, num_edge_types=1)
        >>> leaf = SlotCategoricalLeafConfig(**enc.slot_kinds_config())
        >>> leaf.element_kinds
        (0, 2, 0, 1)
    """

    element_kinds: tuple[int, ...] = ()
    allowed_values: tuple[tuple[int, ...], ...] = ()

    def __post_init__(self) -> None:
        kinds = SlotKinds(self.element_kinds, self.allowed_values)  # checks and normalises
        object.__setattr__(self, "element_kinds", kinds.element_kinds)
        object.__setattr__(self, "allowed_values", kinds.allowed_values)
        kinds.check(self.num_values)

    @property
    def slot_kinds(self) -> SlotKinds:
        """The :class:`SlotKinds` this config describes."""
        return SlotKinds(self.element_kinds, self.allowed_values)

    def to_dict(self) -> dict[str, Any]:
        """As :meth:`fractalkit.config.ComponentConfig.to_dict`, with plain nested lists."""
        out = super().to_dict()
        out["allowed_values"] = [list(v) for v in self.allowed_values]
        return out

    def build(self, ctx: BuildContext) -> SlotCategoricalLeaf:
        """The leaf for instances of ``ctx.event_shape`` under ``[*, cond_tokens, cond_dim]`` conditions."""
        return SlotCategoricalLeaf(
            tuple(ctx.event_shape), ctx.cond_dim, ctx.cond_tokens, self.num_values, self.slot_kinds,
            self.channel_weights,
        )
