"""The level base: the partitioner, the child, child embeddings, and the decoding loop.

Shape letters: N instances (R rows while decoding, both guidance halves), k children per
instance, P elements per child, T condition tokens, D_in incoming condition width, D this
level's width, T' condition tokens handed to each child, V values per element, S summary
entries.

A concrete level supplies its network: the teacher-forced conditions of its children
(:meth:`Level.teacher_forced_conditions`, or :meth:`Level.score_children` for levels that
score subsets), and how each decoding step computes the conditions of the children it decides
(:meth:`Level.step_conditions`, by default from the teacher-forced pass). :class:`Level` owns
the rest: the step loop over a :class:`StepPlan`, force and known handling, the guided halves,
the top level's guidance schedule and progress callback, the optional summary prefix (the
guiding pixel) and the log-probability accumulation.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from typing import Any, ClassVar, Literal

import torch
from torch import Tensor, nn

from fractalkit.config import BuildContext, LeafConfig, build_component
from fractalkit.nn.linear import Linear
from fractalkit.normalisation import ValueNormalisation
from fractalkit.partition import Partitioner
from fractalkit.protocol import AbstractGenerator, Score, accumulation_dtype
from fractalkit.protocol.contexts import DecodeContext, ScoreContext

EmbedMode = Literal["linear", "table"]


class ChildEmbedding(nn.Module):
    """Embeds a child's P integer elements into one D-wide token.

    ``"linear"`` (images, audio): values become floats ``(v / (V - 1) - mean) / std`` (the
    original FractalGen uses ImageNet's per-channel mean and std) and a linear map takes the P
    floats to D; the child vector is the child flattened in its own layout (channel, row, col).
    ``"table"`` (characters, atoms): a learned vector per (position, value), summed over positions,
    i.e. a linear map of the one-hot encoding.

    Args:
        child_shape: shape of one child (P = its size).
        num_values: V.
        width: D.
        mode: ``"linear"`` or ``"table"``.
        normalisation: ``"linear"`` only: the children's :class:`ValueNormalisation`
            (default: mean 0.5, std 0.5).
    """

    def __init__(
        self,
        child_shape: tuple[int, ...],
        num_values: int,
        width: int,
        mode: EmbedMode = "linear",
        normalisation: ValueNormalisation | None = None,
    ) -> None:
        super().__init__()
        p = math.prod(child_shape)
        self.mode = mode
        self.num_values = num_values
        if mode == "linear":
            self.proj = Linear(p, width)
            # Config constants on the CPU (checks work under any default device, e.g. meta);
            # the buffers follow ``module.to(...)``.
            norm = normalisation or ValueNormalisation.of(tuple(child_shape))
            mean, std = norm.mean.expand(child_shape), norm.std.expand(child_shape)
            # Not persistent: derived from the Fractal's config, never trained.
            self.register_buffer("mean", mean.reshape(p).clone(), persistent=False)
            self.register_buffer("std", std.reshape(p).clone(), persistent=False)
        elif mode == "table":
            self.table = nn.Embedding(p * num_values, width)
            self.register_buffer("offset", torch.arange(p) * num_values, persistent=False)
        else:
            raise ValueError(f"embed: expected 'linear' or 'table', got {mode!r}")

    def normalise(self, values: Tensor, dtype: torch.dtype) -> Tensor:
        """Integer values ``[..., P]`` as the floats the linear embedding sees, in ``dtype``."""
        scaled = values.to(dtype) / (self.num_values - 1)
        return (scaled - self.mean.to(dtype)) / self.std.to(dtype)

    def forward(self, children: Tensor) -> Tensor:
        """int64 ``[..., P]`` flattened children to ``[..., D]`` tokens."""
        if self.mode == "linear":
            return self.proj(self.normalise(children, self.proj.weight.dtype))
        return self.table(children + self.offset).sum(-2)


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

    Args:
        partitioner: how an instance becomes children; its ``child_shape`` must be the child's
            ``event_shape``.
        child: the next generator down (a level or a leaf); it receives ``[*, out_tokens, width]``
            conditions.
        cond_dim: D_in of the condition this level receives.
        cond_tokens: T of the condition this level receives.
        width: D, this level's width (and the child's ``cond_dim``).
        embed: how children are embedded (see :class:`ChildEmbedding`).
        normalisation: how this level's instance values become floats (its children share
            ``normalisation.child(partitioner)``); default mean 0.5, std 0.5.
        out_tokens: condition tokens handed to each child.

    A level may also predict a summary of its instance first (the guiding pixel): see
    :meth:`add_summary`.
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
        embed: EmbedMode = "linear",
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
        normalisation = normalisation or ValueNormalisation.of(self.event_shape)
        self.patch_emb = ChildEmbedding(
            partitioner.child_shape, child.num_values, width, embed,
            normalisation.child(partitioner, name),
        )
        self.patch_emb_ln = nn.LayerNorm(width, eps=1e-6)
        self.cond_emb = Linear(cond_dim, width)
        self.register_buffer("positions", partitioner.positions(), persistent=False)
        self.register_buffer("neighbours", partitioner.neighbours(), persistent=False)
        #: this level's instance normalisation (its children's is ``normalisation.child(...)``)
        self.normalisation = normalisation
        self.summary_input = "rounded"
        self.guide: AbstractGenerator | None = None

    def add_summary(
        self, summary: LeafConfig, summary_input: Literal["rounded", "continuous"] = "rounded"
    ) -> None:
        """Give this level a *summary prefix* (the guiding pixel); call it from ``__init__``.

        The level then first predicts the rounded :meth:`fractalkit.Partitioner.summary` of
        its instance with a leaf built from ``summary`` (any leaf config), and its network
        receives :meth:`summary_token` (one extra condition token of width D) as the
        ``summary`` argument of its hooks. It makes ``log_prob`` a bound:
        log p(g) + log p(x | g) <= log p(x).

        Args:
            summary: the summary leaf's config.
            summary_input: what :meth:`summary_token` receives in teacher-forced scoring:
                ``"rounded"`` (the value the summary leaf scores; keeps the bound) or
                ``"continuous"`` (the unrounded normalised summary, as the original FractalGen
                does; for converted checkpoints). Decoding always feeds the decided value.

        Raises:
            NotImplementedError: the partitioner defines no summary.
            ValueError: the summary leaf's value count differs from the data's.
        """
        name = type(self).__name__
        if summary_input not in ("rounded", "continuous"):
            raise ValueError(f"{name}: summary_input must be 'rounded' or 'continuous', got {summary_input!r}")
        shape = self.partitioner.summary_shape
        if shape is None:
            self.partitioner.summary(torch.zeros(0, *self.event_shape))  # raises, naming why
        # The original's parameter names (pix_proj, guide), so converted weights load.
        self.pix_proj = nn.Linear(math.prod(shape), self.width)
        self.guide = build_component(
            summary, BuildContext(self.cond_dim, self.cond_tokens, tuple(shape)), "leaf"
        )
        if self.guide.num_values != self.child.num_values:
            raise ValueError(
                f"{name}: the summary leaf has {self.guide.num_values} values but the data "
                f"has {self.child.num_values}"
            )
        self.summary_input = summary_input
        norm = self.normalisation.summary(self.partitioner)
        # Not persistent: derived from the Fractal's config, never trained.
        self.register_buffer("guide_mean", norm.mean.reshape(-1).clone(), persistent=False)
        self.register_buffer("guide_std", norm.std.reshape(-1).clone(), persistent=False)

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

    def initialize_weights(self) -> None:
        """The original's initialisation: xavier-uniform linears with zero bias, LayerNorms (1, 0),
        learned position embeddings and mask tokens N(0, 0.02). The child initialises itself."""
        for name, m in self.named_modules():
            if name.startswith("child") or name.startswith("guide"):
                continue
            if isinstance(m, nn.Linear):
                nn.init.xavier_uniform_(m.weight)
                if m.bias is not None:
                    nn.init.zeros_(m.bias)
            elif isinstance(m, nn.Embedding):
                nn.init.normal_(m.weight, std=0.02)

    # ---- the network: what a concrete level supplies -------------------------------------------

    def teacher_forced_conditions(
        self, children: Tensor, cond: Tensor, summary: Tensor | None
    ) -> Tensor:
        """Every child's condition in one teacher-forced pass.

        Args:
            children: int64 ``[N, k, P]`` flattened children (while decoding, undecided ones
                hold placeholders: row j must not read children ``>= j``).
            cond: ``[N, T, D_in]``, the incoming condition.
            summary: ``[N, 1, D]`` summary token (see :meth:`summary_token`), or None.

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
        positions = self.child_positions(ctx.positions, rows, cols)
        sub = self.child.score(self.child_rows(children[rows, cols]), conds, ctx.down(positions))
        return sub.reduce_to(rows, children.shape[0], weight)

    def child_positions(self, positions: Tensor | None, rows: Tensor, cols: Tensor) -> Tensor | None:
        """The element positions of children ``[rows, cols]`` (see
        :attr:`fractalkit.sampling.options.DecodeContext.positions`), or None when not tracked.

        Args:
            positions: int64 ``[N, *event]`` or None.
            rows, cols: int64 ``[M]``.

        Returns:
            int64 ``[M, *child_event]`` or None.
        """
        if positions is None:
            return None
        return self.child_rows(self.split(positions)[rows, cols])

    # ---- the summary prefix (guiding pixel) ----------------------------------------------------

    def guide_target(self, x: Tensor) -> Tensor:
        """The summary leaf's target: the partitioner's summary of ``x``, rounded half to even.

        Returns:
            int64 ``[N, *summary_shape]`` (e.g. the guiding pixel ``[N, C]``).
        """
        return self.partitioner.summary(x).round().long()

    def summary_token(self, summary: Tensor) -> Tensor:
        """The summary as one condition token: ``pix_proj`` of its normalised value.

        Args:
            summary: int64 ``[N, *summary_shape]`` (decided values), or, in float, the already
                normalised continuous summary (``summary_input="continuous"`` scoring).

        Returns:
            ``[N, 1, D]``.
        """
        dtype = self.pix_proj.weight.dtype
        if summary.dtype.is_floating_point:
            g = summary.flatten(1).to(dtype)
        else:
            g = (summary.flatten(1).to(dtype) / (self.num_values - 1) - self.guide_mean.to(dtype)) / (
                self.guide_std.to(dtype)
            )
        return self.pix_proj(g)[:, None]

    def continuous_summary(self, x: Tensor) -> Tensor:
        """The unrounded summary of normalised values (the original FractalGen's guiding pixel).

        Each element is normalised in the model's dtype, then the partitioner summarises them.

        Returns:
            ``[N, *summary_shape]`` in the model's dtype.
        """
        dtype = self.pix_proj.weight.dtype
        values = self.normalisation.apply(x, self.num_values, dtype)
        return self.partitioner.summary(values).to(dtype)

    def _score_summary(self, x: Tensor, cond: Tensor, ctx: ScoreContext) -> tuple[Tensor, Score]:
        g = self.guide_target(x)
        s = self.guide.score(g, cond, dataclasses.replace(ctx, positions=None))
        zeros = torch.zeros_like(s.logp)
        fed = g if self.summary_input == "rounded" else self.continuous_summary(x)
        if ctx.mode == "train":  # an auxiliary objective, not part of the data's NLL
            aux = {"guiding_pixel_nll": (s.objective.sum(), s.dims.sum())}
            return fed, Score(zeros, zeros, zeros, aux, "exact")
        return fed, Score(s.logp, zeros, zeros, {}, "bound")

    def _decode_summary(self, x: Tensor, cond: Tensor, ctx: DecodeContext) -> tuple[Tensor, Tensor]:
        ctx = dataclasses.replace(ctx, positions=None)  # the summary is no element of the canvas
        if ctx.force:
            g = self.guide_target(x)
            return self.guide.decode(g, torch.ones_like(g, dtype=torch.bool), cond, ctx)
        # Partially known instances: an approximation, g is drawn, not inferred.
        shape = self.partitioner.summary_shape
        start = torch.zeros(x.shape[0], *shape, dtype=torch.long, device=x.device)
        return self.guide.decode(start, torch.zeros_like(start, dtype=torch.bool), cond, ctx)

    # ---- the one scoring path and the one decoding loop ----------------------------------------

    def score(self, x: Tensor, cond: Tensor, ctx: ScoreContext) -> Score:
        """Teacher-forced score: the summary (if any), then :meth:`score_children`.

        See :class:`fractalkit.sampling.options.ScoreContext` for the modes.
        """
        children = self.split(x)  # [N, k, P]
        if self.guide is None:
            return self.score_children(children, cond, None, ctx)
        fed, summary_score = self._score_summary(x, cond, ctx)
        result = self.score_children(children, cond, self.summary_token(fed), ctx)
        return result.add(summary_score)

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
        if self.guide is not None:
            g, glogp = self._decode_summary(x, cond, ctx)
            logp += glogp.to(logp.dtype)
            summary = self.summary_token(g)
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
                    ctx.down(scale, self.child_positions(ctx.positions, r, c)),
                )
                children[r, c] = sub_x.flatten(1)
                logp.index_add_(0, r, sub_logp.to(logp.dtype))
            decided |= step.pick
            if ctx.is_top and ctx.options.callback is not None:
                done = child_known | decided[..., None]
                ctx.report(self.merge(children), self.merge(done), step.index + 1, len(plan))
        return self.merge(children), logp
