"""The conditioner contract: a user condition ``c`` for N instances -> the top level's condition.

Shape letters: N instances, T the condition tokens the top level reads (its ``out_tokens``),
D its width.

A conditioner is described by a :class:`ConditionerConfig` (a frozen dataclass registered with
``@fractalkit.config.register("kind")``, so it saves and loads with the model) whose
``build(ctx)`` returns a :class:`Conditioner` module for the top condition
``[N, ctx.cond_tokens, ctx.cond_dim]``; the model holds it as its ``conditioner`` submodule. The
module

- checks a condition (:meth:`Conditioner.check`: clear errors for a wrong N, wrong shapes or
  dtypes, non-finite values) and returns N;
- embeds it (:meth:`Conditioner.embed`) as ``[N, D]`` (one vector read by every token) or
  ``[N, T, D]``;
- owns a learned *null* condition (``null_embedding``, ``[1, D]`` or ``[T, D]``): what
  ``c=None`` means, what the unconditional half of classifier-free guidance reads, and what
  whole-condition dropout (probability ``drop``, training mode only) substitutes.

:meth:`Conditioner.forward` puts these together; :class:`fractalkit.Fractal` only calls it.
"""

from __future__ import annotations

import abc
from typing import Any

import torch
from torch import Tensor, nn

from fractalkit.config import BuildContext, ComponentConfig
from fractalkit.sampling.rng import uniform
from fractalkit.validation import check_count, check_probability


class Conditioner(nn.Module, abc.ABC):
    """Maps a user condition for N instances to the top level's condition ``[N, T, D]``.

    Subclasses implement :meth:`check` and :meth:`embed`, and create ``null_embedding``
    (``[1, D]`` or ``[T, D]``; or set it to None for a conditioner without a null condition,
    which then needs a condition on every call and cannot guide).

    Args:
        width: D, the top level's width.
        tokens: T, the condition tokens the top level reads.
        drop: probability of replacing a whole condition by the null one in training mode
            (classifier-free guidance needs it); in [0, 1).
    """

    null_embedding: nn.Parameter | None

    def __init__(self, width: int, tokens: int, *, drop: float = 0.0) -> None:
        super().__init__()
        owner = type(self).__name__
        check_count(owner, "width", width)
        check_count(owner, "tokens", tokens)
        check_probability(owner, "drop", drop)
        self.width, self.tokens, self.drop = int(width), int(tokens), float(drop)

    @property
    def has_null(self) -> bool:
        """Whether ``c=None`` (and so guidance and condition dropout) is possible."""
        return getattr(self, "null_embedding", None) is not None

    @abc.abstractmethod
    def check(self, c: Any, n: int | None) -> int:
        """Validate ``c`` for ``n`` instances (None: any N) and return N.

        Raises:
            TypeError, ValueError: saying what is wrong with ``c`` and what is expected.
        """

    @abc.abstractmethod
    def embed(self, c: Any, *, drop: bool, generator: torch.Generator | None) -> Tensor:
        """The embedded (checked) condition, ``[N, D]`` or ``[N, T, D]``.

        Args:
            c: a condition :meth:`check` accepted.
            drop: training mode: apply the conditioner's own per-part dropout, if any.
            generator: random stream for that dropout.
        """

    def null(self, n: int) -> Tensor:
        """The null condition for ``n`` instances, ``[N, D]`` (a ``[1, D]`` null) or ``[N, T, D]``."""
        if not self.has_null:
            raise ValueError(
                f"{type(self).__name__} has no null condition: pass a condition c for every "
                "instance (guidance and condition dropout need a null condition)"
            )
        null = self.null_embedding
        if null.shape[0] == 1:
            return null.expand(n, -1)
        return null[None].expand(n, *null.shape)

    def forward(
        self,
        c: Any,
        n: int,
        *,
        drop: bool = False,
        generator: torch.Generator | None = None,
    ) -> Tensor:
        """The top condition ``[N, T, D]`` for a checked ``c`` (None: the null condition).

        Args:
            c: the condition, or None.
            n: N.
            drop: training mode: replace each instance's condition by the null one with
                probability ``self.drop`` (and apply :meth:`embed`'s per-part dropout).
            generator: random stream for the dropout.
        """
        if c is None:
            e = self.null(n)
        else:
            e = self.embed(c, drop=drop, generator=generator)
            if not isinstance(e, Tensor) or e.dim() not in (2, 3) or e.shape[0] != n:
                return e  # not [N, D] or [N, T, D]: the Fractal refuses it, naming this class
            if drop and self.drop > 0 and self.has_null:
                null = self.null(n)
                dropped = uniform((n,), generator=generator, device=e.device) < self.drop
                if e.dim() == 3 and null.dim() == 2:
                    null = null[:, None].expand_as(e)
                keep_shape = (n,) + (1,) * (e.dim() - 1)
                e = torch.where(dropped.view(keep_shape), null.to(e.dtype), e)
        if e.dim() == 2:  # one vector read by every token
            return e[:, None].expand(n, self.tokens, e.shape[-1])
        return e


class ConditionerConfig(ComponentConfig, abc.ABC):
    """The contract of a conditioner's config: a registered frozen dataclass with ``build``.

    Subclasses define their fields (JSON values only) and are registered with
    ``@fractalkit.config.register("kind")``; the model's config stores them, so a saved model
    rebuilds its conditioner.
    """

    @abc.abstractmethod
    def build(self, ctx: BuildContext) -> Conditioner:
        """The conditioner for a top level of width ``D = ctx.cond_dim`` reading
        ``T = ctx.cond_tokens`` tokens (``ctx.event_shape`` is the model's instance shape)."""


def check_instances(c: Tensor, n: int | None, what: str) -> int:
    """N of a condition whose leading axis is N, checked against ``n`` (None: any)."""
    if c.dim() == 0:
        raise ValueError(f"{what}: expected a leading axis of N instances, got a scalar")
    if n is not None and c.shape[0] != n:
        raise ValueError(
            f"{what}: the condition is for {c.shape[0]} instances but {n} were given "
            f"(shape {list(c.shape)}); give one condition per instance"
        )
    return int(c.shape[0])

