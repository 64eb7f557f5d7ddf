"""Sampling options and the decoding/scoring contexts that travel down the levels (all public)."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

import torch
from torch import Tensor

from fractalkit.sampling.canvas import Canvas
from fractalkit.sampling.schedules import GuidanceSchedule, guidance_at
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
        guidance: classifier-free guidance scale w (1.0 = none); needs a conditional model
            (any conditioner with a null condition) and a condition.
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
        constraint: restricts the values each leaf may draw, given what has been decoded so
            far (e.g. valence-aware decoding of molecules): called as
            ``constraint(canvas, decided, positions)`` with int64 ``canvas [M, D]`` (the
            partial top-level instances of the M leaf rows being decided, flattened; undecided
            elements hold placeholders), bool ``decided [M, D]`` and int64 ``positions [M, E]``
            (the flattened element positions, in ``[0, D)``, the leaf decides now), it returns
            bool ``[M, E, V]``, True where a value is allowed. The leaf renormalises over the
            allowed values (every row must allow at least one). An AR leaf (or E = 1) decides
            one element per call, so the canvas holds every element decided before it. The
            samples are then no longer draws from the model that ``log_prob`` scores. None: no
            constraint.
    """

    guidance: float = 1.0
    guidance_schedule: GuidanceSchedule = "constant"
    temperature: float = 1.0
    filter_threshold: float = 1e-4
    steps: Sequence[int | None] | None = None
    kv_cache: bool = True
    callback: Callable[[Progress], Any] | None = field(default=None, compare=False)
    constraint: Callable[[Tensor, Tensor, Tensor], Tensor] | None = field(default=None, compare=False)

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
        if self.constraint is not None and not callable(self.constraint):
            raise TypeError(f"constraint: expected a callable or None, got {type(self.constraint).__name__}")
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


def _own(per_level: tuple, default=None):
    """The first entry of a per-level tuple (this level's), or ``default`` past its end."""
    return per_level[0] if per_level else default


@dataclass(frozen=True)
class DecodeContext:
    """What one level's decoding receives from above (public: plug-in levels and leaves read it).

    A context is *this level's view*: per-level settings hold this level's entry first, and
    :meth:`down` hands the child its own, so no level needs to know how deep it sits.
    :class:`fractalkit.levels.base.Level` runs the decoding loop with it (guidance schedule,
    progress callback, guided halves, force and known handling); a plug-in level normally only
    reads :meth:`order` and :meth:`steps` while planning its steps.

    Attributes:
        options: the user's :class:`SampleOptions`.
        generator: the random stream (None: torch's global one).
        guided: the batch is ``[conditional; unconditional]`` halves (rows ``[:R/2]`` and
            ``[R/2:]``) that must receive the same values; see :meth:`half`.
        scale: guidance scale in force now (the top level sets it from the schedule).
        force: teacher-force the given values instead of sampling them, still walking the
            decoding path step by step and returning their log-probabilities (tests use this).
        orders: per level from this one down: None/"random", "identity", or an int64
            permutation ``[k]`` (shared) or ``[R, k]`` (per instance; top level only).
        is_top: this level's steps drive the guidance schedule and the progress callback
            (True for the outermost level; :meth:`down` clears it).
        depth: how many levels lie above (0 = top); for error messages only.
        steps_per_level: decoding steps per level from this one down (None entries: one child
            per step); None reads ``options.steps`` (top level first).
        canvas: the element positions of the rows this level decodes and the values decided
            so far (:class:`fractalkit.sampling.canvas.Canvas`), or None. Made by
            :class:`fractalkit.Fractal` only when a component declares ``needs_positions``
            (a slot-kinds leaf) or ``options.constraint`` is given; a level hands its children
            their view (:meth:`down`).
    """

    options: SampleOptions
    generator: torch.Generator | None
    guided: bool
    scale: float
    force: bool = False
    orders: tuple[OrderSpec, ...] = ()
    is_top: bool = True
    depth: int = 0
    steps_per_level: tuple[int | None, ...] | None = None
    canvas: Canvas | None = field(default=None, compare=False)

    @property
    def positions(self) -> Tensor | None:
        """int64 ``[R, *event]`` element positions of this level's rows (``canvas.positions``),
        or None when not tracked."""
        return None if self.canvas is None else self.canvas.positions

    def down(self, scale: float | None = None, canvas: Canvas | None = None) -> DecodeContext:
        """The context for the child level, optionally with a new guidance scale and the
        child rows' canvas view (see :attr:`canvas`; None when not tracked)."""
        return dataclasses.replace(
            self,
            depth=self.depth + 1,
            is_top=False,
            scale=self.scale if scale is None else scale,
            orders=self.orders[1:],
            steps_per_level=self._steps_tuple()[1:],
            canvas=canvas,
        )

    def _steps_tuple(self) -> tuple[int | None, ...]:
        if self.steps_per_level is not None:
            return self.steps_per_level
        return tuple(self.options.steps) if self.options.steps is not None else ()

    def steps(self) -> int | None:
        """Decoding steps configured for this level (None: one child per step)."""
        return _own(self._steps_tuple())

    def order(self) -> OrderSpec:
        """The order specification for this level."""
        return _own(self.orders)

    def half(self, rows: int) -> int:
        """Rows of the conditional half: ``rows // 2`` when guided, else ``rows``."""
        return rows // 2 if self.guided else rows

    def scale_at(self, progress: float) -> float:
        """Guidance scale for a step after which ``progress`` (in [0, 1]) of this level is done.

        The top level follows ``options.guidance_schedule``; levels below keep the scale the
        top level set (as the original FractalGen does).
        """
        if not self.is_top:
            return self.scale
        return guidance_at(self.options.guidance, self.options.guidance_schedule, progress)

    def report(self, canvas: Tensor, decided: Tensor, step: int, num_steps: int) -> None:
        """Hand the top level's partial instance to ``options.callback`` (no-op below the top).

        Args:
            canvas: int64 ``[R, *event_shape]``, all rows (only the conditional half is passed).
            decided: bool ``[R, *event_shape]``.
            step: 1-based index of the step just finished.
            num_steps: steps in all.
        """
        if not self.is_top or self.options.callback is None:
            return
        half = self.half(canvas.shape[0])
        self.options.callback(Progress(canvas[:half], decided[:half], step, num_steps))


ScoreMode = Literal["train", "exact", "estimate", "masks"]


@dataclass(frozen=True)
class ScoreContext:
    """How a teacher-forced pass scores a level (public: plug-in levels and leaves read it).

    As with :class:`DecodeContext`, per-level settings hold this level's entry first and
    :meth:`down` hands the child its own.

    Attributes:
        mode: ``"train"`` (MAR: the paper's truncated-normal mask ratio, masked children only,
            unweighted); ``"exact"`` (MAR: one pass per child under ``orders``); ``"estimate"``
            (MAR: m ~ U{1..k} masked children, weighted k/m: unbiased for the any-order bound);
            ``"masks"`` (MAR: the explicit ``masks``, unweighted; a compatibility path).
            Levels with a fixed order (AR) score every child exactly in every mode.
        generator: random stream for orders, masks and label dropout.
        orders: per level from this one down, as in :class:`DecodeContext`.
        masks: per level from this one down, bool ``[n, k]`` (True = masked = scored and
            passed down), for ``"masks"``.
        depth: how many levels lie above (0 = top); for error messages only.
        canvas: the element positions of the rows this level scores (a
            :class:`fractalkit.sampling.canvas.Canvas` without values), or None; as in
            :class:`DecodeContext` (made only when a component declares ``needs_positions``).
    """

    mode: ScoreMode
    generator: torch.Generator | None = None
    orders: tuple[OrderSpec, ...] = ()
    masks: tuple[Tensor | None, ...] = ()
    depth: int = 0
    canvas: Canvas | None = field(default=None, compare=False)

    @property
    def positions(self) -> Tensor | None:
        """int64 ``[N, *event]`` element positions of this level's rows, or None."""
        return None if self.canvas is None else self.canvas.positions

    def down(self, canvas: Canvas | None = None) -> ScoreContext:
        """The context for the child level (with the child rows' canvas view, if tracked)."""
        return dataclasses.replace(
            self, depth=self.depth + 1, orders=self.orders[1:], masks=self.masks[1:],
            canvas=canvas,
        )

    def order(self) -> OrderSpec:
        """The order specification for this level."""
        return _own(self.orders)

    def mask(self) -> Tensor | None:
        """The explicit mask for this level, if any."""
        return _own(self.masks)
