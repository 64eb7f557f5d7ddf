"""Class labels (``ClassLabel``) and no condition at all (``Unconditional``).

Shape letters: N instances, K classes, D the top level's width.

Their parameters are the model's ``conditioner.null_embedding`` ``[1, D]`` and
``conditioner.class_embedding.weight`` ``[K, D]``; files written before the conditioner became an
ordinary submodule (top-level ``null_embedding`` and ``class_embedding.weight``) load through the
rules of :mod:`fractalkit.legacy`, and give the same numbers.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import torch
from torch import Tensor, nn

from fractalkit.conditioners.base import Conditioner, ConditionerConfig
from fractalkit.config import BuildContext
from fractalkit.registry import register
from fractalkit.validation import check_count, check_probability


class ClassLabelConditioner(Conditioner):
    """Integer labels in ``[0, K)`` -> a learned embedding each; the null one is separate.

    Args:
        width: D.
        tokens: T (every token reads the same vector).
        num_classes: K > 0.
        drop: whole-label dropout probability in training mode.
    """

    def __init__(self, width: int, tokens: int, num_classes: int, *, drop: float = 0.1) -> None:
        super().__init__(width, tokens, drop=drop)
        self.num_classes = num_classes
        # Creation and initialisation order as before conditioners: same weights from a seed.
        self.null_embedding = nn.Parameter(torch.zeros(1, width))
        self.class_embedding = nn.Embedding(num_classes, width)
        nn.init.normal_(self.null_embedding, std=0.02)
        nn.init.normal_(self.class_embedding.weight, std=0.02)

    def check(self, c: Any, n: int | None) -> int:
        """``c``: an integer tensor ``[N]`` of labels in ``[0, K)``."""
        if not isinstance(c, Tensor) or c.dtype.is_floating_point or c.dtype == torch.bool:
            raise TypeError(
                f"ClassLabel: y must be an integer tensor of class labels (the condition), got {c!r:.80}"
            )
        if c.dim() != 1 or (n is not None and c.shape[0] != n):
            raise ValueError(
                f"ClassLabel: y must have shape [{n if n is not None else 'N'}] (one label per "
                f"instance), got {list(c.shape)}"
            )
        if c.numel() and (int(c.min()) < 0 or int(c.max()) >= self.num_classes):
            raise ValueError(
                f"ClassLabel: labels must lie in [0, {self.num_classes}), got min {int(c.min())} "
                f"and max {int(c.max())}"
            )
        return int(c.shape[0])

    def embed(self, c: Tensor, *, drop: bool, generator: torch.Generator | None) -> Tensor:
        """``[N, D]`` label embeddings."""
        return self.class_embedding(c.to(self.null_embedding.device).long())


class UnconditionalConditioner(Conditioner):
    """No condition: every instance reads the learned ``null_embedding`` ``[1, D]``.

    Args:
        width: D.
        tokens: T.
    """

    def __init__(self, width: int, tokens: int) -> None:
        super().__init__(width, tokens)
        self.null_embedding = nn.Parameter(torch.zeros(1, width))
        nn.init.normal_(self.null_embedding, std=0.02)

    def check(self, c: Any, n: int | None) -> int:
        """Refuses every condition: the model is unconditional."""
        raise ValueError(
            "Fractal: this model is unconditional (no conditioner, num_classes=0); pass no "
            "condition (c=None, y=None)"
        )

    def embed(self, c: Any, *, drop: bool, generator: torch.Generator | None) -> Tensor:
        """Never called: :meth:`check` refuses every condition."""
        raise AssertionError("unreachable")


@register("class_label")
@dataclasses.dataclass(frozen=True)
class ClassLabel(ConditionerConfig):
    """Condition on an integer class label (what ``Fractal(num_classes=K)`` builds).

    ``c`` (or ``y=``) is an integer tensor ``[N]`` in ``[0, K)``.

    Attributes:
        num_classes: K > 0.
        drop: probability of replacing a label by the null embedding in training mode.
    """

    num_classes: int
    drop: float = 0.1

    def __post_init__(self) -> None:
        object.__setattr__(self, "num_classes", check_count("ClassLabel", "num_classes", self.num_classes))
        check_probability("ClassLabel", "drop", self.drop)

    def build(self, ctx: BuildContext) -> ClassLabelConditioner:
        """A :class:`ClassLabelConditioner` for the top condition ``[N, ctx.cond_tokens, ctx.cond_dim]``."""
        return ClassLabelConditioner(ctx.cond_dim, ctx.cond_tokens, self.num_classes, drop=self.drop)


@register("unconditional")
@dataclasses.dataclass(frozen=True)
class Unconditional(ConditionerConfig):
    """No condition (what ``Fractal(num_classes=0)`` builds): ``c`` must be None."""


    def build(self, ctx: BuildContext) -> UnconditionalConditioner:
        """An :class:`UnconditionalConditioner` for the top condition ``[N, ctx.cond_tokens, ctx.cond_dim]``."""
        return UnconditionalConditioner(ctx.cond_dim, ctx.cond_tokens)

