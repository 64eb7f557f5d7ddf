"""MARLevel: a bidirectional transformer over a level's children in a random order (masked AR).

Shape letters: N instances (R rows while decoding), k children, P elements per child, T incoming
condition tokens, D_in incoming width, D this level's width, S steps.

A MAR level is a family of autoregressive models, one per order of its children. Under an
order, child j's condition comes from a pass in which the children before it are visible and
the rest are replaced by a learned mask token. The sequence is
``[summary?, cond_emb(c_{T-1}), ..., cond_emb(c_0), t_0, ..., t_{k-1}]`` plus learned
positions, LayerNorm, the blocks and a final LayerNorm; ``summary`` is the guiding-pixel token
of :class:`fractalkit.levels.base.Level`. Each child receives its own output and, with
``neighbours``, those of its top, right, bottom and left neighbours (zeros off the grid), or
with ``graph_neighbours`` (over :class:`fractalkit.partition.GraphSubsets`) the mean output of
its *known graph neighbours*. The decoding loop is the base class's; this module plans the steps (random order, cosine schedule)
and computes each step's conditions.
"""

from __future__ import annotations

import dataclasses
from typing import Literal

import torch
from torch import Tensor, nn

from fractalkit.config import CONFIG_REGISTRY, BuildContext, LeafConfig, LevelConfig
from fractalkit.levels.base import EmbedMode, Level, Step, StepPlan
from fractalkit.nn.blocks import Backbone, BlockStyle, check_transformer
from fractalkit.normalisation import ValueNormalisation
from fractalkit.partition import Partitioner
from fractalkit.protocol import AbstractGenerator, Score
from fractalkit.protocol.contexts import DecodeContext, ScoreContext
from fractalkit.registry import register
from fractalkit.sampling.orders import masked_subset, resolve_orders
from fractalkit.sampling.rng import uniform
from fractalkit.sampling.schedules import decode_counts, training_mask_counts


def _default_guide() -> LeafConfig:
    """The paper's guiding-pixel leaf: the RGB leaf (width 128, 3 blocks, red weighted 5)."""
    # Looked up by kind, not imported: a level does not depend on a particular leaf module.
    return CONFIG_REGISTRY["rgb"](width=128, depth=3, heads=4, channel_weights=(5.0, 1.0, 1.0))


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
        guiding_pixel: first predict the instance's rounded summary (the partitioner's; for
            :class:`fractalkit.ImagePatches` the mean value per channel) with a small leaf and
            feed it as an extra token (the paper's 256x256 models, levels below the top). It
            makes ``log_prob`` a bound: log p(g) + log p(x | g) <= log p(x).
        guide: configuration of the guiding-pixel leaf (any leaf config; default: the paper's
            RGB leaf, width 128, 3 blocks).
        guide_input: what the guiding-pixel token sees in teacher-forced scoring:
            ``"rounded"`` (the scored value; keeps the bound) or ``"continuous"`` (the
            unrounded normalised block mean, as the original FractalGen; set by the converter
            so that converted checkpoints reproduce the original's logits). Sampling always
            feeds the sampled value.
        attn_dropout, proj_dropout: dropout rates (training only).
        embed: ``"linear"`` or ``"table"`` child embedding (the guiding pixel needs linear).
        checkpointing: recompute blocks in the backward pass to save memory.
        graph_neighbours: over a whole-graph :class:`fractalkit.partition.GraphSubsets`
            encoding (the top graph level), hand each child 1 condition token: its own output
            plus a learned linear map of the mean output of the *known* children that share an
            edge with it (zeros when none), so that an AR level below (which reads one token)
            sees it. Child i is a known graph neighbour of child j when i is visible
            in this pass (teacher-forced: unmasked / earlier in the order; decoding: decided)
            and one of i's node rows holds an edge to a node of j. Only edges stored in known
            rows are read (edges from j's nodes to earlier nodes sit in j's own, unknown rows),
            so each condition depends on visible children only and the likelihood stays exact
            under given orders. Needs ``neighbours=False`` (it replaces the grid neighbours).
    """

    width: int = 64
    depth: int = 2
    heads: int = 4
    block: BlockStyle = "vit"
    neighbours: bool = True
    guiding_pixel: bool = False
    guide: LeafConfig = dataclasses.field(default_factory=_default_guide)
    attn_dropout: float = 0.0
    proj_dropout: float = 0.0
    embed: EmbedMode = "linear"
    checkpointing: bool = False
    guide_input: Literal["rounded", "continuous"] = "rounded"
    graph_neighbours: bool = False

    def __post_init__(self) -> None:
        check_transformer(self, rope=False)
        if self.graph_neighbours and self.neighbours:
            raise ValueError(
                "MARLevelConfig: graph_neighbours replaces the grid neighbours; set neighbours=False"
            )
        if self.guiding_pixel and self.embed != "linear":
            raise ValueError("MARLevelConfig: guiding_pixel needs embed='linear'")
        if self.guide_input not in ("rounded", "continuous"):
            raise ValueError(
                f"MARLevelConfig: guide_input must be 'rounded' or 'continuous', got {self.guide_input!r}"
            )

    def to_dict(self) -> dict:
        """As :meth:`ComponentConfig.to_dict`, leaving out ``graph_neighbours`` when False, so
        that the configs (and saved files) of every existing MAR model stay as they were."""
        out = super().to_dict()
        if not self.graph_neighbours:
            del out["graph_neighbours"]
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
        normalisation: how the instance's values become floats (child embedding, guiding pixel).
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
            embed=config.embed,
            normalisation=normalisation,
            out_tokens=config.out_tokens,
        )
        self.config = config
        k = partitioner.num_children
        if config.graph_neighbours:
            from fractalkit.partition.graph import (
                GraphSubsets,  # a level needs no graph code otherwise
            )

            if not isinstance(partitioner, GraphSubsets) or partitioner.num_nodes != partitioner.row_width:
                raise ValueError(
                    "MARLevel: graph_neighbours needs a GraphSubsets partitioner over a whole graph "
                    f"(num_nodes == row_width, the top graph level), got {partitioner!r}"
                )
        self.num_prefix = cond_tokens + int(config.guiding_pixel)
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
        if config.graph_neighbours:  # only then: existing models keep their parameters
            self.graph_proj = nn.Linear(config.width, config.width)
        if config.guiding_pixel:
            self.add_summary(config.guide, config.guide_input)
        self.initialize_weights()
        nn.init.normal_(self.mask_token, std=0.02)
        nn.init.normal_(self.pos_embed, std=0.02)

    # ---- network ---------------------------------------------------------------------------

    def prefix(self, cond: Tensor, summary: Tensor | None) -> Tensor:
        """Condition tokens ``[N, num_prefix, D]``: the summary token, then ``c_{T-1} .. c_0``."""
        tokens = self.cond_emb(cond.flip(1))  # [N, T, D]; the original prepends one at a time
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
        t = self.patch_emb(children)  # [N, k, D]
        t = torch.where(masked[..., None], self.mask_token.to(t.dtype), t)
        h = torch.cat([prefix.to(t.dtype), t], dim=1) + self.pos_embed
        h = self.backbone(self.patch_emb_ln(h), causal=False)
        return h[:, self.num_prefix :]

    def child_conditions(self, h: Tensor, rows: Tensor, cols: Tensor) -> Tensor:
        """The condition tokens of children ``(rows, cols)``: own output, then top, right,
        bottom and left neighbours' (zeros off the grid).

        Args:
            h: ``[N, k, D]`` outputs at the children's positions.
            rows, cols: int64 ``[M]``, which children.

        Returns:
            ``[M, out_tokens, D]``.
        """
        if not self.config.neighbours:
            return h[rows, cols][:, None]
        # One gather of the M children's tokens only (training masks ~80% of the children):
        # forming every child's tokens first and then selecting was a second full-size copy.
        n, k, d = h.shape
        padded = torch.cat([h, h.new_zeros(n, 1, d)], dim=1)  # index k holds zeros
        own = torch.arange(k, device=h.device)[:, None]
        index = torch.cat([own, self.neighbours.where(self.neighbours >= 0, k)], dim=1)  # [k, 5]
        return padded[rows[:, None], index[cols]]  # [M, 5, D]

    def graph_links(self, children: Tensor) -> Tensor:
        """Which children share an edge, read from the *later* child's rows only.

        Args:
            children: int64 ``[N, k, s * W]`` (GraphSubsets children: s node rows of width W).

        Returns:
            bool ``[N, k, k]``: ``[n, j, i]`` is True when i > j and a node row of child i holds
            an edge to a node of child j (the rows of child i alone decide it).
        """
        p = self.partitioner
        n_inst, k = children.shape[:2]
        s, w = p.nodes_per_child, p.row_width  # w == num nodes of the whole graph
        rows = children.reshape(n_inst, k * s, w)
        edges = torch.nn.functional.pad(rows[:, :, 1:] != 0, (0, 1))  # [N, a, b]: edge(a, b)
        edges = edges & torch.ones(w, w, dtype=torch.bool, device=children.device).tril(-1)
        links = edges.view(n_inst, k, s, k, s).any(4).any(2)  # [N, i, j]
        links = links & torch.ones(k, k, dtype=torch.bool, device=children.device).tril(-1)
        return links.transpose(1, 2)  # [N, j, i]

    def graph_tokens(self, h: Tensor, links: Tensor, visible: Tensor) -> Tensor:
        """Mean output of each child's known graph neighbours.

        Args:
            h: ``[N, k, D]`` outputs of one pass, or ``[N, k, k, D]`` with ``h[:, j]`` the
                outputs of child j's own pass (the exact mode's one pass per child).
            links: bool ``[N, k, k]`` from :meth:`graph_links`.
            visible: bool ``[N, k]`` (one pass) or ``[N, k, k]`` (``[:, j]``: known in child
                j's pass), the children known in the pass.

        Returns:
            ``[N, k, D]`` (zeros for a child without known graph neighbours).
        """
        vis = visible[:, None, :] if visible.dim() == 2 else visible
        weight = (links & vis).to(h.dtype)  # [N, j, i]
        weight = weight / weight.sum(-1, keepdim=True).clamp(min=1.0)
        if h.dim() == 4:
            return torch.einsum("nji,njid->njd", weight, h)
        return torch.bmm(weight, h)

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
        if self.config.graph_neighbours:
            graph = self.graph_tokens(h, self.graph_links(children), ~masked)
            conds = (h[rows, cols] + self.graph_proj(graph[rows, cols]))[:, None]  # [M, 1, D]
        else:
            conds = self.child_conditions(h, rows, cols)  # [M, T', D]
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
        if self.config.graph_neighbours:
            # pseudo-instance (n, c): child c's pass, in which the children ranked before c are known
            visible = ranks[:, None, :] < ranks[:, :, None]  # [N, c, i]
            graph = self.graph_tokens(per_child, self.graph_links(children), visible)  # [N, c, D]
            own = per_child.diagonal(dim1=1, dim2=2).transpose(1, 2)  # [N, c, D]: child c in its pass
            conds = (own + self.graph_proj(graph)).reshape(n * k, 1, d)
            rows = torch.arange(n, device=device).repeat_interleave(k)
            return self.score_rows(children, rows, step.repeat(n), conds, ctx)
        conds = self.child_conditions(
            per_child.reshape(n * k, k, d), torch.arange(n * k, device=device), step.repeat(n)
        )  # [N*k, T', D]
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
        if self.config.graph_neighbours:
            graph = self.graph_tokens(h, self.graph_links(children), decided)
            return (h[rows, cols] + self.graph_proj(graph[rows, cols]))[:, None]
        return self.child_conditions(h, rows, cols)
