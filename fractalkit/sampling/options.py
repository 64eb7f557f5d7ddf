"""Sampling options (public) and the decoding/scoring contexts that travel down the levels."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

import torch
from torch import Tensor

from fractalkit.sampling.schedules import GuidanceSchedule
from fractalkit.validation import check_finite_number


@dataclass(frozen=True)
class Progress:
    """What a sampling callback receives after each step of the top level.

    Attributes:
        canvas: int64 ``[N, *event_shape]``, the partial sample (undecided elements are 0).
        decided: bool ``[N, *event_shape]``, which elements hold final values.
        step: 1-based index of the top-level step just finished.
        num_steps: top-level steps in all.
    """

    canvas: Tensor
    decided: Tensor
    step: int
    num_steps: int


@dataclass(frozen=True)
class SampleOptions:
    """Everything that shapes a draw, passed down every level as one object.

    Attributes:
        guidance: classifier-free guidance scale w (1.0 = none); needs a class-conditional model.
        guidance_schedule: ``"constant"``, or ``"linear"`` in the top level's progress (lower
            levels use the value the top level set, as the original does).
        temperature: T > 0; logits are *divided* by T (below 1 sharpens). The original FractalGen
            multiplies by its "temperature", so its published 1.02 is 1/1.02 here.
        filter_threshold: with guidance, values whose conditional probability is below this
            cannot be boosted (the paper's 1e-4); 0 disables the filter.
        steps: decoding steps per level, top first, one entry per level (the leaf excluded).
            ``None`` (or a None entry) means one child per step: the exact mode, in which MAR
            sampling draws exactly from the model that ``log_prob`` scores. AR levels always
            decide one child per step and ignore their entry.
        kv_cache: reuse keys and values across AR steps (False recomputes the prefix; same result).
        callback: called with a :class:`Progress` after every top-level step.
    """

    guidance: float = 1.0
    guidance_schedule: GuidanceSchedule = "constant"
    temperature: float = 1.0
    filter_threshold: float = 1e-4
    steps: Sequence[int | None] | None = None
    kv_cache: bool = True
    callback: Callable[[Progress], Any] | None = field(default=None, compare=False)

    def __post_init__(self) -> None:
        for name in ("guidance", "temperature", "filter_threshold"):
            check_finite_number("SampleOptions", name, getattr(self, name))
        if not self.temperature > 0:
            raise ValueError(f"temperature: expected > 0, got {self.temperature}")
        if not self.guidance >= 0:
            raise ValueError(f"guidance: expected >= 0, got {self.guidance}")
        if self.guidance_schedule not in ("constant", "linear"):
            raise ValueError(
                f"guidance_schedule: expected 'constant' or 'linear', got {self.guidance_schedule!r}"
            )
        if not 0 <= self.filter_threshold < 1:
            raise ValueError(f"filter_threshold: expected in [0, 1), got {self.filter_threshold}")
        if self.steps is not None:
            steps = tuple(self.steps)
            for s in steps:
                if s is not None and (not isinstance(s, int) or isinstance(s, bool) or s < 1):
                    raise ValueError(f"steps: expected positive integers or None, got {steps}")
            object.__setattr__(self, "steps", steps)

    @classmethod
    def make(cls, options: SampleOptions | None = None, **overrides: Any) -> SampleOptions:
        """``options`` (or the defaults) with ``overrides`` applied; unknown names raise TypeError."""
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(overrides) - names)
        if unknown:
            raise TypeError(
                f"unknown sampling option(s) {unknown}; valid options are {sorted(names)}"
            )
        return dataclasses.replace(options or cls(), **overrides)


OrderSpec = Literal["identity", "random"] | Tensor | None


@dataclass(frozen=True)
class DecodeContext:
    """Internal: what one level's decoding needs from above. Levels pass ``down()`` to the child.

    Attributes:
        options: the user's :class:`SampleOptions`.
        generator: the random stream (None: torch's global one).
        guided: the batch is ``[conditional; unconditional]`` halves sharing orders and values.
        scale: guidance scale in force now (set by the top level's schedule).
        force: teacher-force the given values instead of sampling them, still walking the
            decoding path step by step and returning their log-probabilities (tests use this).
        orders: per level, None/"random", "identity", or an int64 permutation ``[L]`` (shared) or
            ``[N, L]`` (per instance; top level only).
        depth: index of the level this context is for (0 = top).
        is_top: whether this level's steps drive the guidance schedule and callback.
    """

    options: SampleOptions
    generator: torch.Generator | None
    guided: bool
    scale: float
    force: bool = False
    orders: tuple[OrderSpec, ...] = ()
    depth: int = 0

    def down(self, scale: float | None = None) -> DecodeContext:
        """The context for the child level, optionally with a new guidance scale."""
        return dataclasses.replace(
            self, depth=self.depth + 1, scale=self.scale if scale is None else scale
        )

    def steps(self) -> int | None:
        """Decoding steps configured for this level (None: one child per step)."""
        steps = self.options.steps
        if steps is None or self.depth >= len(steps):
            return None
        return steps[self.depth]

    def order(self) -> OrderSpec:
        """The order specification for this level."""
        return self.orders[self.depth] if self.depth < len(self.orders) else None


ScoreMode = Literal["train", "exact", "estimate", "masks"]


@dataclass(frozen=True)
class ScoreContext:
    """Internal: how a teacher-forced pass scores a level.

    Attributes:
        mode: ``"train"`` (MAR: the paper's truncated-normal mask ratio, masked children only,
            unweighted); ``"exact"`` (MAR: one pass per child under ``orders``); ``"estimate"``
            (MAR: m ~ U{1..L} masked children, weighted L/m: unbiased for the any-order bound);
            ``"masks"`` (MAR: the explicit ``masks``, unweighted).
        generator: random stream for orders, masks and label dropout.
        orders: per level, as in :class:`DecodeContext`.
        masks: per level, bool ``[n, L]`` (True = masked = scored and passed down).
        depth: index of this level.
    """

    mode: ScoreMode
    generator: torch.Generator | None = None
    orders: tuple[OrderSpec, ...] = ()
    masks: tuple[Tensor | None, ...] = ()
    depth: int = 0

    def down(self) -> ScoreContext:
        """The context for the child level."""
        return dataclasses.replace(self, depth=self.depth + 1)

    def order(self) -> OrderSpec:
        """The order specification for this level."""
        return self.orders[self.depth] if self.depth < len(self.orders) else None

    def mask(self) -> Tensor | None:
        """The explicit mask for this level, if any."""
        return self.masks[self.depth] if self.depth < len(self.masks) else None
