"""MARLevel: a bidirectional transformer over a level's children in a random order (masked AR).

Shape letters: N instances (R rows while decoding), k children, P elements per child, T incoming
condition tokens, D_in incoming width, D this level's width, S steps.

A MAR level is a family of autoregressive models, one per order of its children. Under an
order, child j's condition comes from a pass in which the children before it are visible and
the rest are replaced by a learned mask token. The sequence is
``[summary?, cond_emb(c_{T-1}), ..., cond_emb(c_0), t_0, ..., t_{k-1}]`` plus learned
positions, LayerNorm, the blocks and a final LayerNorm; ``summary`` is the token of the
optional :class:`fractalkit.levels.summary.SummaryPrefix` (the guiding pixel). What each child
receives is a child-token strategy (:mod:`fractalkit.levels.tokens`): its own output, or with
``neighbours`` also those of its top, right, bottom and left grid neighbours, or with
``linked_neighbours`` its own output plus the mean output of the visible children the
partitioner links to it (:meth:`fractalkit.Partitioner.links`). The decoding loop is the base
class's; this module plans the steps (random order, cosine schedule) and computes each step's
conditions.
"""

from __future__ import annotations

import dataclasses

import torch
from torch import Tensor, nn

from fractalkit.config import BuildContext, LevelConfig
from fractalkit.levels.base import Level, Step, StepPlan
from fractalkit.levels.inputs import ChildInputs, EmbedMode
from fractalkit.levels.summary import SummaryConfig, SummaryPrefix
from fractalkit.levels.tokens import child_tokens
from fractalkit.nn.blocks import Backbone, BlockStyle, check_transformer
from fractalkit.normalisation import ValueNormalisation
from fractalkit.partition import Partitioner
from fractalkit.protocol import AbstractGenerator, Score
from fractalkit.protocol.contexts import DecodeContext, ScoreContext
from fractalkit.registry import register
from fractalkit.sampling.orders import masked_subset, resolve_orders
from fractalkit.sampling.rng import uniform
from fractalkit.sampling.schedules import decode_counts, training_mask_counts


@register("mar")
@dataclasses.dataclass(frozen=True)
class MARLevelConfig(LevelConfig):
    """Configuration of a :class:`MARLevel`.

    Attributes:
        width: D.
        depth: transformer blocks.
        heads: attention heads.
        block: ``"vit"`` (the paper's MAR levels) or ``"llama"``.
        neighbours: hand each child 5 condition tokens (its own output, then its top, right,
            bottom and left neighbours') instead of 1; reduces patch-boundary artefacts.
        summary: a :class:`fractalkit.levels.summary.SummaryConfig` to first predict the
            instance's rounded summary (the partitioner's; for :class:`fractalkit.ImagePatches`
            the mean value per channel, the paper's guiding pixel) with a small leaf and feed it
            as an extra token (the paper's 256x256 models, levels below the top), or None. It
            makes ``log_prob`` a bound: log p(g) + log p(x | g) <= log p(x).
        attn_dropout, proj_dropout: dropout rates (training only).
        embed: ``"linear"`` or ``"table"`` child embedding (a summary needs linear).
        checkpointing: recompute blocks in the backward pass to save memory.
        linked_neighbours: over a partitioner with data-dependent links
            (:meth:`fractalkit.Partitioner.links`: the partitioner says, from the data, which
            children are linked), hand each child 1 condition token: its own output plus a learned linear map of the
            mean output of the *visible* children linked to it (zeros when none), so that an AR
            level below (which reads one token) sees it. Visible: unmasked / earlier in the
            order when teacher-forced, decided when decoding. The partitioner reads a link from
            the later child's values only, so each condition depends on visible children only
            and the likelihood stays exact under given orders. Needs ``neighbours=False`` (it
            replaces the grid neighbours).
    """

    width: int = 64
    depth: int = 2
    heads: int = 4
    block: BlockStyle = "vit"
    neighbours: bool = True
    summary: SummaryConfig | None = None
    attn_dropout: float = 0.0
    proj_dropout: float = 0.0
    embed: EmbedMode = "linear"
    checkpointing: bool = False
    linked_neighbours: bool = False

    def __post_init__(self) -> None:
        check_transformer(self, rope=False)
        if self.linked_neighbours and self.neighbours:
            raise ValueError(
                "MARLevelConfig: linked_neighbours replaces the grid neighbours; set neighbours=False"
            )
        if self.summary is not None and not isinstance(self.summary, SummaryConfig):
            raise TypeError(
                "MARLevelConfig: summary must be a SummaryConfig (the summary leaf's config and "
                f"input) or None, got {self.summary!r}"
            )
        if self.summary is not None and self.embed != "linear":
            raise ValueError("MARLevelConfig: a summary needs embed='linear'")

    def to_dict(self) -> dict:
        """As :meth:`ComponentConfig.to_dict`, leaving out ``linked_neighbours`` when False (the
        configs of models without it keep the fields they always had)."""
        out = super().to_dict()
        if not self.linked_neighbours:
            del out["linked_neighbours"]
        return out

    @property
    def out_tokens(self) -> int:
        """Condition tokens handed to each child: 5 with neighbours, else 1."""
        return 5 if self.neighbours else 1

    def build(self, ctx: BuildContext) -> MARLevel:
        """The level over ``ctx.partitioner``'s children, delegating to ``ctx.child``."""
        return MARLevel(
            ctx.partitioner, ctx.child, self, cond_dim=ctx.cond_dim, cond_tokens=ctx.cond_tokens,
            normalisation=ctx.normalisation,
        )


class MARLevel(Level):
    """Random-order masked autoregressive level (bidirectional transformer, mask token).

    Args:
        partitioner: how an instance becomes k children.
        child: the next generator down; receives ``config.out_tokens`` condition tokens.
        config: a :class:`MARLevelConfig`.
        cond_dim: D_in of the incoming condition.
        cond_tokens: T of the incoming condition; all T tokens enter the sequence.
        normalisation: how the instance's values become floats (child embedding, summary).
    """

    uses_orders = True

    def __init__(
        self,
        partitioner: Partitioner,
        child: AbstractGenerator,
        config: MARLevelConfig,
        *,
        cond_dim: int,
        cond_tokens: int,
        normalisation: ValueNormalisation | None = None,
    ) -> None:
        super().__init__(
            partitioner,
            child,
            cond_dim=cond_dim,
            cond_tokens=cond_tokens,
            width=config.width,
            normalisation=normalisation,
            out_tokens=config.out_tokens,
        )
        self.config = config
        k = partitioner.num_children
        self.inputs = ChildInputs.of(self, config.embed)
        self.num_prefix = cond_tokens + int(config.summary is not None)
        self.mask_token = nn.Parameter(torch.zeros(1, 1, config.width))
        self.pos_embed = nn.Parameter(torch.zeros(1, self.num_prefix + k, config.width))
        self.backbone = Backbone(
            config.block,
            config.width,
            config.depth,
            config.heads,
            attn_dropout=config.attn_dropout,
            proj_dropout=config.proj_dropout,
            checkpointing=config.checkpointing,
        )
        #: how the outputs become each child's condition tokens (own / grid / linked mean)
        self.tokens = child_tokens(
            partitioner, config.width, neighbours=config.neighbours,
            linked=config.linked_neighbours, owner=type(self).__name__,
        )
        if config.summary is not None:
            self.summary = SummaryPrefix.of(self, config.summary)
        # The original's initialisation, part by part in its order (a seed gives the same weights).
        self.inputs.reset_parameters()
        self.backbone.reset_parameters()
        self.tokens.reset_parameters()
        if self.summary is not None:
            self.summary.reset_parameters()
        nn.init.normal_(self.mask_token, std=0.02)
        nn.init.normal_(self.pos_embed, std=0.02)

    # ---- network ---------------------------------------------------------------------------

    def prefix(self, cond: Tensor, summary: Tensor | None) -> Tensor:
        """Condition tokens ``[N, num_prefix, D]``: the summary token, then ``c_{T-1} .. c_0``."""
        tokens = self.inputs.condition(cond.flip(1))  # [N, T, D]; the original prepends one at a time
        if summary is not None:
            tokens = torch.cat([summary.to(tokens.dtype), tokens], dim=1)
        return tokens

    def hidden(self, children: Tensor, masked: Tensor, prefix: Tensor) -> Tensor:
        """Outputs at the children's positions.

        Args:
            children: int64 ``[N, k, P]`` (masked entries may hold anything).
            masked: bool ``[N, k]``: True = replaced by the mask token.
            prefix: ``[N, num_prefix, D]`` from :meth:`prefix`.

        Returns:
            ``[N, k, D]``.
        """
        t = self.inputs.embed(children)  # [N, k, D]
        t = torch.where(masked[..., None], self.mask_token.to(t.dtype), t)
        h = torch.cat([prefix.to(t.dtype), t], dim=1) + self.pos_embed
        h = self.backbone(self.inputs.norm(h), causal=False)
        return h[:, self.num_prefix :]

    # ---- scoring ---------------------------------------------------------------------------

    def score_children(
        self, children: Tensor, cond: Tensor, summary: Tensor | None, ctx: ScoreContext
    ) -> Score:
        """Teacher-forced score; see :class:`fractalkit.sampling.options.ScoreContext` for modes."""
        prefix = self.prefix(cond, summary)
        if ctx.mode == "exact":
            return self._score_exact(children, prefix, ctx)
        return self._score_masked(children, prefix, ctx)

    def _score_masked(self, children: Tensor, prefix: Tensor, ctx: ScoreContext) -> Score:
        n, k = children.shape[:2]
        device = children.device
        weight = None
        masked = ctx.mask()
        if masked is not None:  # the plan fixes the scored children (a replay): unweighted
            if masked.dtype != torch.bool or tuple(masked.shape) != (n, k):
                got = (masked.dtype, list(masked.shape))
                raise ValueError(
                    f"MARLevel (level {ctx.depth}): masks[{ctx.depth}] must be a bool tensor of "
                    f"shape [{n}, {k}], got {got}"
                )
            masked = masked.to(device)
        else:
            orders = resolve_orders(ctx.order(), n, k, generator=ctx.generator, device=device)
            if ctx.mode == "train":
                count = training_mask_counts(n, k, generator=ctx.generator, device=device)
            elif ctx.mode == "estimate":  # m ~ U{1..k}; weight k/m makes the estimate unbiased
                u = uniform((n,), generator=ctx.generator, device=device)
                count = (u * k).long().clamp_(max=k - 1) + 1
                weight = k / count.double()
            else:
                raise ValueError(f"MARLevel: unknown scoring mode {ctx.mode!r}")
            masked = masked_subset(orders, count)
        h = self.hidden(children, masked, prefix)
        rows, cols = masked.nonzero(as_tuple=True)  # (instance, child) in lexicographic order
        conds = self.tokens.select(h, rows, cols, children, ~masked)  # [M, T', D]
        result = self.score_rows(children, rows, cols, conds, ctx, weight)
        if ctx.mode == "estimate":
            result.kind = "estimate"
        return result

    def _score_exact(self, children: Tensor, prefix: Tensor, ctx: ScoreContext) -> Score:
        # One pass per child: pass j shows the children before position j of the order.
        n, k, p = children.shape
        device = children.device
        orders = resolve_orders(ctx.order(), n, k, generator=ctx.generator, device=device)
        ranks = orders.argsort(dim=-1)  # [N, k]: position of each child in its order
        step = torch.arange(k, device=device)
        masked = ranks[:, None, :] >= step[None, :, None]  # [N, pass, k]
        h = self.hidden(
            children[:, None].expand(n, k, k, p).reshape(n * k, k, p),
            masked.reshape(n * k, k),
            prefix[:, None].expand(n, k, *prefix.shape[1:]).reshape(n * k, *prefix.shape[1:]),
        ).view(n, k, k, self.width)  # [N, pass, k, D]
        # Child c is predicted in pass ranks[n, c]: take that pass's outputs for child c.
        d = h.shape[-1]
        per_child = h.gather(1, ranks[:, :, None, None].expand(n, k, k, d))  # [N, c, k, D]
        visible = ranks[:, None, :] < ranks[:, :, None]  # [N, c, i]: known in child c's pass
        conds = self.tokens.select_passes(per_child, children, visible)  # [N*k, T', D]
        rows = torch.arange(n, device=device).repeat_interleave(k)
        return self.score_rows(children, rows, step.repeat(n), conds, ctx)

    # ---- decoding ------------------------------------------------------------------------

    def begin_decoding(
        self, children: Tensor, cond: Tensor, summary: Tensor | None, ctx: DecodeContext
    ) -> Tensor:
        """The condition tokens (:meth:`prefix`), shared by every step."""
        return self.prefix(cond, summary)

    def step_plan(self, full: Tensor, ctx: DecodeContext) -> StepPlan:
        """A random order (both guidance halves share it) with fully known children first;
        several children per step on the cosine schedule, or one per step in the exact mode."""
        rows, k = full.shape
        half = ctx.half(rows)
        copies = rows // half if half else 1
        orders = resolve_orders(ctx.order(), half, k, generator=ctx.generator, device=full.device)
        orders = orders.repeat(copies, 1)  # both guidance halves share orders
        # Known children first, keeping the drawn order within each group.
        key = (~full).long() * k + orders.argsort(dim=-1)
        ranks = key.argsort(dim=-1).argsort(dim=-1)  # [R, k]
        n_known = full.sum(-1)  # [R]
        counts = decode_counts(k - n_known[:half], ctx.steps())  # [half, S]
        bounds = torch.cat([counts.new_zeros(half, 1), counts.cumsum(1)], dim=1).repeat(copies, 1)
        return StepPlan.by_rank(ranks, n_known[:, None] + bounds, half)

    def step_conditions(self, state: Tensor, children: Tensor, decided: Tensor, step: Step) -> Tensor:
        """One bidirectional pass with the undecided children masked."""
        rows, cols = step.pick.nonzero(as_tuple=True)
        h = self.hidden(children, ~decided, state)
        return self.tokens.select(h, rows, cols, children, decided)
