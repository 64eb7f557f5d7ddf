"""The level base: the contract between a level, its partitioner and its child, and the loop.

Shape letters: N instances (R rows while decoding, both guidance halves), k children per
instance, P elements per child, T condition tokens, D_in incoming condition width, D this
level's width, T' condition tokens handed to each child, V values per element, S summary
entries.

A concrete level supplies its network: the teacher-forced conditions of its children
(:meth:`Level.teacher_forced_conditions`, or :meth:`Level.score_children` for levels that
score subsets), and how each decoding step computes the conditions of the children it decides
(:meth:`Level.step_conditions`, by default from the teacher-forced pass). :class:`Level` owns
the rest: the step loop over a :class:`StepPlan`, force and known handling, the guided halves,
the top level's guidance schedule and progress callback, and the log-probability accumulation.
The base holds no parameters: a level composes the parts it wants, e.g. the input network
(:class:`fractalkit.levels.inputs.ChildInputs`) and the optional summary prefix
(:class:`fractalkit.levels.summary.SummaryPrefix`, the guiding pixel), which the loop calls when
``self.summary`` is set.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar

import torch
from torch import Tensor

# ChildEmbedding and EmbedMode moved to fractalkit.levels.inputs; still importable from here.
from fractalkit.levels.inputs import ChildEmbedding, EmbedMode  # noqa: F401
from fractalkit.levels.summary import SummaryPrefix
from fractalkit.normalisation import ValueNormalisation
from fractalkit.partition import Partitioner
from fractalkit.protocol import AbstractGenerator, Score, accumulation_dtype
from fractalkit.protocol.canvas import Canvas
from fractalkit.protocol.contexts import DecodeContext, ScoreContext


@dataclass(frozen=True)
class Step:
    """One decoding step of a level.

    Attributes:
        index: 0-based position of the step in its plan.
        pick: bool ``[R, k]``: the children decided at this step (both guidance halves alike).
        progress: fraction of the level's work done once this step is finished, in ``[0, 1]``;
            the top level's guidance schedule reads it.
    """

    index: int
    pick: Tensor
    progress: float


@dataclass(frozen=True)
class StepPlan:
    """Which children each decoding step decides, in order (see :meth:`Level.step_plan`).

    Attributes:
        steps: the steps, first to last.
    """

    steps: tuple[Step, ...]

    def __len__(self) -> int:
        return len(self.steps)

    @classmethod
    def one_per_child(cls, todo: Tensor) -> StepPlan:
        """Raster order, one child per step: step j decides child j where ``todo[:, j]``.

        Args:
            todo: bool ``[R, k]``, the children to decide (the others are known context).
        """
        k = todo.shape[1]
        return cls(tuple(Step(j, _column(todo, j), (j + 1) / k) for j in range(k)))

    @classmethod
    def by_rank(cls, ranks: Tensor, starts: Tensor, half: int) -> StepPlan:
        """Step s decides the children whose rank lies in ``[starts[:, s], starts[:, s + 1])``.

        Args:
            ranks: int64 ``[R, k]``, each child's position in the decoding order.
            starts: int64 ``[R, S + 1]``, the first rank of each step (then the end).
            half: rows of the conditional half; progress is the mean fraction of children
                decided there.
        """
        k = ranks.shape[1]
        steps = []
        for s in range(starts.shape[1] - 1):
            lo, hi = starts[:, s, None], starts[:, s + 1, None]
            progress = float(starts[:half, s + 1].double().mean()) / k
            steps.append(Step(s, (ranks >= lo) & (ranks < hi), progress))
        return cls(tuple(steps))


def _column(todo: Tensor, j: int) -> Tensor:
    pick = torch.zeros_like(todo)
    pick[:, j] = todo[:, j]
    return pick


class Level(AbstractGenerator):
    """A generator that splits its instance into k children and delegates each to its child.

    The base class runs decoding and scoring; a concrete level (:class:`fractalkit.ARLevel`,
    :class:`fractalkit.MARLevel`, or a plug-in: see the tutorial "Write your own level")
    supplies its network through these methods:

    - :meth:`teacher_forced_conditions` (required unless :meth:`score_children` is
      overridden): every child's condition in one pass, child j seeing the incoming condition
      and children ``< j`` only. This alone makes an exact, raster-order level: scoring, sampling,
      completion, guidance schedules and progress callbacks all work.
    - :meth:`begin_decoding` and :meth:`step_conditions` (optional): per-step conditions
      computed incrementally, e.g. with a KV cache; by default each step reruns the
      teacher-forced pass on the partially decided children.
    - :meth:`step_plan` and :meth:`score_children` (optional): for levels that decide several
      children per step or in a random order (MAR).

    A level composes the parts it needs (none are in the base, which holds no parameters):
    the FractalGen input network :class:`fractalkit.levels.inputs.ChildInputs` (child embedding,
    its LayerNorm, condition projection) and, optionally, a summary prefix
    :class:`fractalkit.levels.summary.SummaryPrefix` assigned to ``self.summary``: the loop then
    scores or decides the summary first and hands its token to the hooks as ``summary``.

    Args:
        partitioner: how an instance becomes children; its ``child_shape`` must be the child's
            ``event_shape``.
        child: the next generator down (a level or a leaf); it receives ``[*, out_tokens, width]``
            conditions.
        cond_dim: D_in of the condition this level receives.
        cond_tokens: T of the condition this level receives.
        width: D, this level's width (and the child's ``cond_dim``).
        normalisation: how this level's instance values become floats (its children share
            ``normalisation.child(partitioner)``); default mean 0.5, std 0.5.
        out_tokens: condition tokens handed to each child.
    """

    #: whether this level's likelihood depends on an order of its children (MAR: True)
    uses_orders: ClassVar[bool] = False

    def __init__(
        self,
        partitioner: Partitioner,
        child: AbstractGenerator,
        *,
        cond_dim: int,
        cond_tokens: int,
        width: int,
        normalisation: ValueNormalisation | None = None,
        out_tokens: int = 1,
    ) -> None:
        super().__init__()
        name = type(self).__name__
        #: condition tokens this level hands each child
        self.out_tokens = int(out_tokens)
        if not isinstance(partitioner, Partitioner):
            raise TypeError(f"{name}: partitioner must be a Partitioner, got {type(partitioner)}")
        if not isinstance(child, AbstractGenerator):
            raise TypeError(f"{name}: child must be a level or a leaf, got {type(child)}")
        if tuple(partitioner.child_shape) != tuple(child.event_shape):
            raise ValueError(
                f"{name}: the partitioner's child shape {list(partitioner.child_shape)} differs "
                f"from the child's event shape {list(child.event_shape)}"
            )
        if child.cond_dim != width:
            raise ValueError(
                f"{name}: the child expects conditions of width {child.cond_dim}, but this "
                f"level's width is {width}; build the child with cond_dim={width}"
            )
        if child.cond_tokens != self.out_tokens:
            raise ValueError(
                f"{name}: the child expects {child.cond_tokens} condition token(s), but this "
                f"level hands down {self.out_tokens}"
            )
        self.partitioner = partitioner
        self.child = child
        self.event_shape = tuple(partitioner.event_shape)
        self.cond_dim = int(cond_dim)
        self.cond_tokens = int(cond_tokens)
        self.width = int(width)
        #: this level's instance normalisation (its children's is ``normalisation.child(...)``)
        self.normalisation = normalisation or ValueNormalisation.of(self.event_shape)
        #: the optional summary prefix; a level that wants one assigns a SummaryPrefix
        self.summary: SummaryPrefix | None = None

    @property
    def num_values(self) -> int:
        """V, the leaf's number of values per element."""
        return self.child.num_values

    @property
    def num_children(self) -> int:
        """k, children per instance."""
        return self.partitioner.num_children

    def split(self, x: Tensor) -> Tensor:
        """``[N, *event]`` to ``[N, k, P]`` flattened children (any dtype)."""
        return self.partitioner.split(x).flatten(2)

    def merge(self, children: Tensor) -> Tensor:
        """``[N, k, P]`` flattened children back to ``[N, *event]``."""
        n, k = children.shape[:2]
        return self.partitioner.merge(children.view(n, k, *self.partitioner.child_shape))

    def child_rows(self, children: Tensor) -> Tensor:
        """``[M, P]`` flattened children as the child's instances ``[M, *child_event]``."""
        return children.view(children.shape[0], *self.child.event_shape)

    # ---- the network: what a concrete level supplies -------------------------------------------

    def teacher_forced_conditions(
        self, children: Tensor, cond: Tensor, summary: Tensor | None
    ) -> Tensor:
        """Every child's condition in one teacher-forced pass.

        Args:
            children: int64 ``[N, k, P]`` flattened children (while decoding, undecided ones
                hold placeholders: row j must not read children ``>= j``).
            cond: ``[N, T, D_in]``, the incoming condition.
            summary: ``[N, 1, D]`` summary token (see :class:`SummaryPrefix`), or None.

        Returns:
            ``[N, k, out_tokens, D]``: child j's condition depends on ``cond``, ``summary`` and
            children ``< j`` only.
        """
        raise NotImplementedError(
            f"{type(self).__name__}: implement teacher_forced_conditions (or override "
            "score_children, step_plan and step_conditions)"
        )

    def begin_decoding(
        self, children: Tensor, cond: Tensor, summary: Tensor | None, ctx: DecodeContext
    ) -> Any:
        """State carried across one decoding call's steps (e.g. KV caches); any object.

        The default keeps ``(cond, summary)`` for :meth:`step_conditions`.

        Args:
            children: int64 ``[R, k, P]`` (known children hold their values).
            cond: ``[R, T, D_in]``.
            summary: ``[R, 1, D]`` or None.
            ctx: this level's decoding context.
        """
        return cond, summary

    def step_conditions(
        self, state: Any, children: Tensor, decided: Tensor, step: Step
    ) -> Tensor:
        """The conditions of the children this step decides.

        The default reruns :meth:`teacher_forced_conditions` on the current children (correct
        for raster plans: every child before the picked one is decided).

        Args:
            state: what :meth:`begin_decoding` returned.
            children: int64 ``[R, k, P]``, decided children hold their values.
            decided: bool ``[R, k]``, the children decided before this step (known included).
            step: the step; ``step.pick`` selects the children to condition.

        Returns:
            ``[M, out_tokens, D]`` for the M children of ``step.pick.nonzero()``, in that
            (row-major) order.
        """
        cond, summary = state
        conds = self.teacher_forced_conditions(children, cond, summary)
        rows, cols = step.pick.nonzero(as_tuple=True)
        return conds[rows, cols]

    def step_plan(self, full: Tensor, ctx: DecodeContext) -> StepPlan:
        """Which children each step decides; the default is raster order, one per step.

        Args:
            full: bool ``[R, k]``: children already fully known (never picked; with
                ``ctx.force`` none is).
            ctx: this level's decoding context (``ctx.order()``, ``ctx.steps()``,
                ``ctx.half(R)``, ``ctx.generator``).
        """
        return StepPlan.one_per_child(~full)

    def score_children(
        self, children: Tensor, cond: Tensor, summary: Tensor | None, ctx: ScoreContext
    ) -> Score:
        """Teacher-forced score of the children; the default scores all of them exactly.

        Args:
            children: int64 ``[N, k, P]``.
            cond: ``[N, T, D_in]``.
            summary: ``[N, 1, D]`` or None.
            ctx: this level's scoring context.

        Returns:
            A :class:`Score` of N rows (use :meth:`score_rows`).
        """
        n, k = children.shape[:2]
        conds = self.teacher_forced_conditions(children, cond, summary)  # [N, k, T', D]
        rows = torch.arange(n, device=children.device).repeat_interleave(k)
        cols = torch.arange(k, device=children.device).repeat(n)
        return self.score_rows(children, rows, cols, conds.flatten(0, 1), ctx)

    def score_rows(
        self,
        children: Tensor,
        rows: Tensor,
        cols: Tensor,
        conds: Tensor,
        ctx: ScoreContext,
        weight: Tensor | None = None,
    ) -> Score:
        """Score children ``children[rows, cols]`` under ``conds`` and sum them per instance.

        Args:
            children: int64 ``[N, k, P]``.
            rows, cols: int64 ``[M]``: which children, rows in increasing order.
            conds: ``[M, out_tokens, D]``.
            ctx: this level's scoring context (the child gets ``ctx.down()``).
            weight: ``[N]`` per-instance factor (e.g. an estimator's k/m), or None.

        Returns:
            A :class:`Score` of N rows.
        """
        canvas = self.child_canvas(ctx.canvas, rows, cols)
        sub = self.child.score(self.child_rows(children[rows, cols]), conds, ctx.down(canvas))
        return sub.reduce_to(rows, children.shape[0], weight)

    def child_canvas(self, canvas: Canvas | None, rows: Tensor, cols: Tensor) -> Canvas | None:
        """The canvas view of children ``[rows, cols]`` (see
        :attr:`fractalkit.sampling.options.DecodeContext.canvas`), or None when not tracked.

        Args:
            canvas: this level's view (positions ``[N, *event]``) or None.
            rows, cols: int64 ``[M]``.

        Returns:
            The view with positions int64 ``[M, *child_event]``, or None.
        """
        if canvas is None:
            return None
        return canvas.at(self.child_rows(self.split(canvas.positions)[rows, cols]))

    # ---- the one scoring path and the one decoding loop ----------------------------------------

    def score(self, x: Tensor, cond: Tensor, ctx: ScoreContext) -> Score:
        """Teacher-forced score: the summary (if any), then :meth:`score_children`.

        See :class:`fractalkit.sampling.options.ScoreContext` for the modes.
        """
        children = self.split(x)  # [N, k, P]
        if self.summary is None:
            return self.score_children(children, cond, None, ctx)
        token, summary_score = self.summary.score(x, cond, ctx)
        return self.score_children(children, cond, token, ctx).add(summary_score)

    def decode(
        self, x: Tensor, known: Tensor, cond: Tensor, ctx: DecodeContext
    ) -> tuple[Tensor, Tensor]:
        """Decide the unknown children step by step, as :meth:`step_plan` says.

        Fully known children are context (never picked, unless ``ctx.force``); each step's
        children are decoded by the child with ``ctx.down(scale)``, where the top level sets
        the scale from the guidance schedule and reports progress to the callback.
        """
        rows = x.shape[0]
        children = self.split(x).clone()  # [R, k, P]
        child_known = self.split(known)  # [R, k, P]
        full = child_known.all(-1)
        if ctx.force:
            full = torch.zeros_like(full)
        logp = torch.zeros(rows, dtype=accumulation_dtype(cond.dtype), device=x.device)
        summary = None
        if self.summary is not None:
            summary, summary_logp = self.summary.decode(x, cond, ctx)
            logp += summary_logp.to(logp.dtype)
        state = self.begin_decoding(children, cond, summary, ctx)
        plan = self.step_plan(full, ctx)
        decided = full.clone()
        for step in plan.steps:
            conds = self.step_conditions(state, children, decided, step)
            r, c = step.pick.nonzero(as_tuple=True)
            scale = ctx.scale_at(step.progress)
            if r.numel():
                sub_x, sub_logp = self.child.decode(
                    self.child_rows(children[r, c]),
                    self.child_rows(child_known[r, c]),
                    conds,
                    ctx.down(scale, self.child_canvas(ctx.canvas, r, c)),
                )
                children[r, c] = sub_x.flatten(1)
                logp.index_add_(0, r, sub_logp.to(logp.dtype))
            decided |= step.pick
            if ctx.is_top and ctx.options.callback is not None:
                done = child_known | decided[..., None]
                ctx.report(self.merge(children), self.merge(done), step.index + 1, len(plan))
        return self.merge(children), logp
