"""The decoding and scoring contexts that travel down the levels, and each level's plan.

Shape letters: R rows decoded together (both guidance halves), N instances scored, k children
of a level, D elements per top-level instance.

The composer (:func:`fractalkit.composer.level_plans`) resolves the user's per-level settings
once into one :class:`LevelPlan` per level, top first; a context holds the plans from its own
level down, and ``ctx.down()`` hands the child its own, so no level needs to know how deep it
sits. Levels read their plan through ``ctx.order()``, ``ctx.steps()`` and ``ctx.mask()``.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Literal

import torch
from torch import Tensor

from fractalkit.protocol.options import Progress, SampleOptions, guidance_at

OrderSpec = Literal["identity", "random"] | Tensor | None


@dataclass(frozen=True)
class LevelPlan:
    """What one level is told to do, resolved once before a pass (public: plug-in levels read it
    through the context's :meth:`~DecodeContext.order`, :meth:`~DecodeContext.steps` and
    :meth:`~ScoreContext.mask`).

    Attributes:
        order: the order of this level's children: None or ``"random"`` (one uniform
            permutation per instance from the context's generator), ``"identity"``, or an int64
            permutation ``[k]`` (shared) or ``[N, k]`` (per instance; top level only). Levels
            with a fixed order (AR) get None.
        steps: decoding steps of this level (None: one child per step, the exact mode). AR
            levels decide one child per step and ignore it.
        mask: bool ``[N, k]`` (True = scored and passed down), fixing which children a masked
            scoring pass (modes ``"train"``/``"estimate"``) scores instead of drawing them; the
            children are then scored unweighted. None (the default): drawn as the mode says.
            Only a caller replaying another implementation's draws sets it (the FractalGen
            converter's parity checks); the composer never does.
    """

    order: OrderSpec = field(default=None, compare=False)
    steps: int | None = None
    mask: Tensor | None = field(default=None, compare=False)


def _plans_from_steps(steps) -> tuple[LevelPlan, ...]:
    """One default plan per entry of ``SampleOptions.steps`` (a context built without plans)."""
    return tuple(LevelPlan(steps=s) for s in steps) if steps is not None else ()


@dataclass(frozen=True)
class DecodeContext:
    """What one level's decoding receives from above (public: plug-in levels and leaves read it).

    A context is *this level's view*: :attr:`plans` start with this level's plan, and
    :meth:`down` hands the child its own. :class:`fractalkit.levels.base.Level` runs the
    decoding loop with it (guidance schedule, progress callback, guided halves, force and known
    handling); a plug-in level normally only reads :meth:`order` and :meth:`steps` while
    planning its steps.

    Attributes:
        options: the user's :class:`SampleOptions`.
        generator: the random stream (None: torch's global one).
        guided: the batch is ``[conditional; unconditional]`` halves (rows ``[:R/2]`` and
            ``[R/2:]``) that must receive the same values; see :meth:`half`.
        scale: guidance scale in force now (the top level sets it from the schedule).
        force: teacher-force the given values instead of sampling them, still walking the
            decoding path step by step and returning their log-probabilities (tests use this).
        plans: one :class:`LevelPlan` per level from this one down, as the composer resolved
            them (:func:`fractalkit.composer.level_plans`). None (a context built by hand or
            by a bare generator): one plan per entry of ``options.steps``, random orders,
            resolved once when the context is built. Levels past the end of the tuple get
            :attr:`default_plan`.
        is_top: this level's steps drive the guidance schedule and the progress callback
            (True for the outermost level; :meth:`down` clears it).
        depth: how many levels lie above (0 = top); for error messages only.
        positions: int64, the shape of the instances this level decodes (``[R, *event]``):
            each element's flat index ``row * D + position`` in :attr:`canvas` (D elements per
            top-level instance), or None. Set by :class:`fractalkit.Fractal` only when the leaf
            uses element positions (slot kinds) or ``options.constraint`` is given; a level
            hands its children theirs (:meth:`down`).
        canvas: int64 ``[R, D]``, the top-level instances being decoded, written by the leaf
            as it decides elements (shared by every level; None when ``positions`` is).
        canvas_decided: bool ``[R, D]``, which canvas elements hold final values.
        default_plan: the plan of levels past the end of :attr:`plans`.
    """

    options: SampleOptions
    generator: torch.Generator | None
    guided: bool
    scale: float
    force: bool = False
    plans: tuple[LevelPlan, ...] | None = None
    is_top: bool = True
    depth: int = 0
    positions: Tensor | None = field(default=None, compare=False)
    canvas: Tensor | None = field(default=None, compare=False)
    canvas_decided: Tensor | None = field(default=None, compare=False)
    default_plan: LevelPlan = LevelPlan()

    def __post_init__(self) -> None:
        plans = _plans_from_steps(self.options.steps) if self.plans is None else tuple(self.plans)
        object.__setattr__(self, "plans", plans)

    def down(self, scale: float | None = None, positions: Tensor | None = None) -> DecodeContext:
        """The context for the child level, optionally with a new guidance scale and the
        child rows' element positions (see :attr:`positions`; None when not tracked)."""
        return dataclasses.replace(
            self,
            depth=self.depth + 1,
            is_top=False,
            scale=self.scale if scale is None else scale,
            plans=self.plans[1:],
            positions=positions,
        )

    def plan(self) -> LevelPlan:
        """This level's :class:`LevelPlan`."""
        return self.plans[0] if self.plans else self.default_plan

    def steps(self) -> int | None:
        """Decoding steps configured for this level (None: one child per step)."""
        return self.plan().steps

    def order(self) -> OrderSpec:
        """The order specification for this level (see :attr:`LevelPlan.order`)."""
        return self.plan().order

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


ScoreMode = Literal["train", "exact", "estimate"]
_SCORE_MODES = ("train", "exact", "estimate")


@dataclass(frozen=True)
class ScoreContext:
    """How a teacher-forced pass scores a level (public: plug-in levels and leaves read it).

    As with :class:`DecodeContext`, :attr:`plans` start with this level's plan and :meth:`down`
    hands the child its own.

    Attributes:
        mode: ``"train"`` (MAR: the paper's truncated-normal mask ratio, masked children only,
            unweighted); ``"exact"`` (MAR: one pass per child under the plan's order);
            ``"estimate"`` (MAR: m ~ U{1..k} masked children, weighted k/m: unbiased for the
            any-order bound). Levels with a fixed order (AR) score every child exactly in every
            mode. A plan's :attr:`LevelPlan.mask` replaces the drawn mask in the masked modes.
        generator: random stream for orders, masks and label dropout.
        plans: one :class:`LevelPlan` per level from this one down (orders, and masks where a
            caller fixes them); levels past the end get :attr:`default_plan`.
        depth: how many levels lie above (0 = top); for error messages only.
        positions: int64, the shape of the instances this level scores: each element's flat
            index ``row * D + position`` in the top-level batch (D elements per instance), or
            None; as in :class:`DecodeContext` (set only for leaves with slot kinds).
        default_plan: the plan of levels past the end of :attr:`plans`.
    """

    mode: ScoreMode
    generator: torch.Generator | None = None
    plans: tuple[LevelPlan, ...] = ()
    depth: int = 0
    positions: Tensor | None = field(default=None, compare=False)
    default_plan: LevelPlan = LevelPlan()

    def __post_init__(self) -> None:
        if self.mode not in _SCORE_MODES:
            raise ValueError(
                f"ScoreContext: mode must be one of {list(_SCORE_MODES)}, got {self.mode!r}"
            )
        object.__setattr__(self, "plans", tuple(self.plans))

    def down(self, positions: Tensor | None = None) -> ScoreContext:
        """The context for the child level (with the child rows' element positions, if tracked)."""
        return dataclasses.replace(
            self, depth=self.depth + 1, plans=self.plans[1:], positions=positions
        )

    def plan(self) -> LevelPlan:
        """This level's :class:`LevelPlan`."""
        return self.plans[0] if self.plans else self.default_plan

    def order(self) -> OrderSpec:
        """The order specification for this level (see :attr:`LevelPlan.order`)."""
        return self.plan().order

    def mask(self) -> Tensor | None:
        """The children this level must score, if a caller fixed them (see :attr:`LevelPlan.mask`)."""
        return self.plan().mask
