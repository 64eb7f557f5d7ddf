"""MARLevel: a bidirectional transformer over a level's children in a random order (masked AR).

Shape letters: N instances, k children, P elements per child, T incoming condition tokens,
D_in incoming width, D this level's width, C channels of the guiding pixel.

A MAR level is a family of autoregressive models, one per order of its children. Under an
order, child j's condition comes from a pass in which the children before it are visible and
the rest are replaced by a learned mask token. The sequence is
``[pix_proj(g)?, cond_emb(c_{T-1}), ..., cond_emb(c_0), t_0, ..., t_{k-1}]`` plus learned
positions, LayerNorm, the blocks and a final LayerNorm. Each child receives its own output and,
with ``neighbours``, those of its top, right, bottom and left neighbours (zeros off the grid).
"""

from __future__ import annotations

import dataclasses

import torch
from torch import Tensor, nn

from fractalkit.config import ComponentConfig, register_config
from fractalkit.leaves.rgb import RGBLeafConfig
from fractalkit.levels.ar import _check_transformer, _report
from fractalkit.levels.base import EmbedMode, Level
from fractalkit.nn.blocks import Backbone, BlockStyle
from fractalkit.partition import Partitioner
from fractalkit.protocol import AbstractGenerator, Score, accumulation_dtype
from fractalkit.sampling.options import DecodeContext, ScoreContext
from fractalkit.sampling.orders import masked_subset, resolve_orders
from fractalkit.sampling.rng import uniform
from fractalkit.sampling.schedules import decode_counts, guidance_at, training_mask_counts


@register_config
@dataclasses.dataclass(frozen=True)
class MARLevelConfig(ComponentConfig):
    """Configuration of a :class:`MARLevel`.

    Attributes:
        width: D.
        depth: transformer blocks.
        heads: attention heads.
        block: ``"vit"`` (the paper's MAR levels) or ``"llama"``.
        neighbours: hand each child 5 condition tokens (its own output, then its top, right,
            bottom and left neighbours') instead of 1; reduces patch-boundary artefacts.
        guiding_pixel: first predict the instance's rounded mean value per channel with a small
            leaf and feed it as an extra token (the paper's 256x256 models, levels below the
            top). It makes ``log_prob`` a bound: log p(g) + log p(x | g) <= log p(x).
        guide: configuration of the guiding-pixel leaf.
        attn_dropout, proj_dropout: dropout rates (training only).
        embed: ``"linear"`` or ``"table"`` child embedding (the guiding pixel needs linear).
        checkpointing: recompute blocks in the backward pass to save memory.
    """

    kind = "mar"
    width: int = 64
    depth: int = 2
    heads: int = 4
    block: BlockStyle = "vit"
    neighbours: bool = True
    guiding_pixel: bool = False
    guide: RGBLeafConfig = dataclasses.field(
        default_factory=lambda: RGBLeafConfig(
            width=128, depth=3, heads=4, channel_weights=(5.0, 1.0, 1.0)
        )
    )
    attn_dropout: float = 0.0
    proj_dropout: float = 0.0
    embed: EmbedMode = "linear"
    checkpointing: bool = False

    def __post_init__(self) -> None:
        _check_transformer(self, rope=False)
        if self.guiding_pixel and self.embed != "linear":
            raise ValueError("MARLevelConfig: guiding_pixel needs embed='linear'")

    @property
    def out_tokens(self) -> int:
        """Condition tokens handed to each child: 5 with neighbours, else 1."""
        return 5 if self.neighbours else 1

    def build(
        self,
        partitioner: Partitioner,
        child: AbstractGenerator,
        *,
        cond_dim: int,
        cond_tokens: int,
        value_mean: Tensor | float = 0.5,
        value_std: Tensor | float = 0.5,
    ) -> MARLevel:
        """The level over ``partitioner``'s children, delegating to ``child``."""
        return MARLevel(
            partitioner,
            child,
            self,
            cond_dim=cond_dim,
            cond_tokens=cond_tokens,
            value_mean=value_mean,
            value_std=value_std,
        )


class MARLevel(Level):
    """Random-order masked autoregressive level (bidirectional transformer, mask token).

    Args:
        partitioner: how an instance becomes k children.
        child: the next generator down; receives ``config.out_tokens`` condition tokens.
        config: a :class:`MARLevelConfig`.
        cond_dim: D_in of the incoming condition.
        cond_tokens: T of the incoming condition; all T tokens enter the sequence.
        value_mean, value_std: normalisation of the linear child embedding.
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
        value_mean: Tensor | float = 0.5,
        value_std: Tensor | float = 0.5,
    ) -> None:
        super().__init__(
            partitioner,
            child,
            cond_dim=cond_dim,
            cond_tokens=cond_tokens,
            width=config.width,
            embed=config.embed,
            value_mean=value_mean,
            value_std=value_std,
            out_tokens=config.out_tokens,
        )
        self.config = config
        k = partitioner.num_children
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
        if config.guiding_pixel:
            channels = self.event_shape[0]
            self.pix_proj = nn.Linear(channels, config.width)
            self.guide = config.guide.build((channels,), cond_dim, cond_tokens)
            if self.guide.num_values != child.num_values:
                raise ValueError(
                    f"MARLevel: the guide leaf has {self.guide.num_values} values but the data "
                    f"has {child.num_values}"
                )
            # Per-channel normalisation of the guiding pixel, as for the children.
            per_channel = self.patch_emb.mean.view(channels, -1)[:, 0]
            self.register_buffer("guide_mean", per_channel.clone(), persistent=False)
            self.register_buffer(
                "guide_std", self.patch_emb.std.view(channels, -1)[:, 0].clone(), persistent=False
            )
        else:
            self.guide = None
        self.initialize_weights()
        nn.init.normal_(self.mask_token, std=0.02)
        nn.init.normal_(self.pos_embed, std=0.02)

    # ---- network ---------------------------------------------------------------------------

    def guide_target(self, x: Tensor) -> Tensor:
        """The guiding pixel of ``x [N, C, ...]``: per-channel mean, rounded half to even, ``[N, C]``."""
        return x.flatten(2).double().mean(-1).round().long()

    def prefix(self, cond: Tensor, guide: Tensor | None) -> Tensor:
        """Condition tokens ``[N, num_prefix, D]``: the guiding pixel, then ``c_{T-1} .. c_0``."""
        tokens = self.cond_emb(cond.flip(1))  # [N, T, D]; the original prepends one at a time
        if guide is not None:
            dtype = self.pix_proj.weight.dtype
            g = (guide.to(dtype) / (self.num_values - 1) - self.guide_mean.to(dtype)) / (
                self.guide_std.to(dtype)
            )
            tokens = torch.cat([self.pix_proj(g)[:, None].to(tokens.dtype), tokens], dim=1)
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

    def child_conditions(self, h: Tensor) -> Tensor:
        """``[N, k, D]`` outputs to ``[N, k, out_tokens, D]``: own, then top, right, bottom, left."""
        if not self.config.neighbours:
            return h[:, :, None]
        n, k, d = h.shape
        padded = torch.cat([h, h.new_zeros(n, 1, d)], dim=1)  # index k holds zeros
        own = torch.arange(k, device=h.device)[:, None]
        index = torch.cat([own, self.neighbours.where(self.neighbours >= 0, k)], dim=1)  # [k, 5]
        return padded[:, index]  # [N, k, 5, D]

    # ---- scoring ---------------------------------------------------------------------------

    def _guide_score(self, x: Tensor, cond: Tensor, ctx: ScoreContext) -> tuple[Tensor, Score]:
        g = self.guide_target(x)
        s = self.guide.score(g, cond, ctx)
        zeros = torch.zeros_like(s.logp)
        if ctx.mode == "train":  # an auxiliary objective, not part of the data's NLL
            aux = {"guiding_pixel_nll": (s.objective.sum(), s.dims.sum())}
            return g, Score(zeros, zeros, zeros, aux, "exact")
        return g, Score(s.logp, zeros, zeros, {}, "bound")

    def score(self, x: Tensor, cond: Tensor, ctx: ScoreContext) -> Score:
        """Teacher-forced score; see :class:`fractalkit.sampling.options.ScoreContext` for modes."""
        children = self.split(x)  # [N, k, P]
        guide, guide_score = None, None
        if self.guide is not None:
            guide, guide_score = self._guide_score(x, cond, ctx)
        prefix = self.prefix(cond, guide)
        if ctx.mode == "exact":
            result = self._score_exact(children, prefix, ctx)
        else:
            result = self._score_masked(children, prefix, ctx)
        return result if guide_score is None else result.add(guide_score)

    def _score_masked(self, children: Tensor, prefix: Tensor, ctx: ScoreContext) -> Score:
        n, k = children.shape[:2]
        device = children.device
        weight = None
        if ctx.mode == "masks":
            masked = ctx.mask()
            if masked is None or masked.dtype != torch.bool or tuple(masked.shape) != (n, k):
                got = None if masked is None else (masked.dtype, list(masked.shape))
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
        conds = self.child_conditions(h)  # [N, k, T', D]
        rows, cols = masked.nonzero(as_tuple=True)  # (instance, child) in lexicographic order
        sub = self.child.score(
            self.child_rows(children[rows, cols]), conds[rows, cols], ctx.down()
        )
        result = sub.reduce_to(rows, n, weight)
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
        conds = self.child_conditions(per_child.reshape(n * k, k, d))  # [N*k, k, T', D]
        conds = conds[torch.arange(n * k, device=device), step.repeat(n)]  # [N*k, T', D]
        sub = self.child.score(self.child_rows(children.reshape(n * k, p)), conds, ctx.down())
        return sub.reduce_to(torch.arange(n, device=device).repeat_interleave(k), n)

    # ---- decoding --------------------------------------------------------------------------

    def decode(
        self, x: Tensor, known: Tensor, cond: Tensor, ctx: DecodeContext
    ) -> tuple[Tensor, Tensor]:
        """Decide children in a random order, several per step on the cosine schedule (or one
        per step in the exact mode); fully known children come first and stay visible."""
        rows, k = x.shape[0], self.num_children
        half = rows // 2 if ctx.guided else rows
        copies = rows // half if half else 1
        device = x.device
        children = self.split(x).clone()  # [R, k, P]
        child_known = self.split(known)  # [R, k, P]
        full = torch.zeros(rows, k, dtype=torch.bool, device=device)
        if not ctx.force:
            full = child_known.all(-1)
        logp = torch.zeros(rows, dtype=accumulation_dtype(cond.dtype), device=device)

        guide = None
        if self.guide is not None:
            if ctx.force:
                guide = self.guide_target(x)
                guide, glogp = self.guide.decode(guide, torch.ones_like(guide, dtype=torch.bool), cond, ctx)
            else:  # an approximation for partially known instances: g is drawn, not inferred
                start = torch.zeros(rows, self.event_shape[0], dtype=torch.long, device=device)
                guide, glogp = self.guide.decode(start, torch.zeros_like(start, dtype=torch.bool), cond, ctx)
            logp += glogp.to(logp.dtype)
        prefix = self.prefix(cond, guide)

        orders = resolve_orders(ctx.order(), half, k, generator=ctx.generator, device=device)
        orders = orders.repeat(copies, 1)  # both guidance halves share orders
        # Known children first, keeping the drawn order within each group.
        key = (~full).long() * k + orders.argsort(dim=-1)
        ranks = key.argsort(dim=-1).argsort(dim=-1)  # [R, k]
        n_known = full.sum(-1)  # [R]
        counts = decode_counts(k - n_known[:half], ctx.steps())  # [half, S]
        bounds = torch.cat([counts.new_zeros(half, 1), counts.cumsum(1)], dim=1).repeat(copies, 1)
        decided = full.clone()
        num_steps = counts.shape[1]
        top = ctx.depth == 0
        for s in range(num_steps):
            h = self.hidden(children, ~decided, prefix)
            conds = self.child_conditions(h)  # [R, k, T', D]
            lo = (n_known + bounds[:, s])[:, None]
            hi = (n_known + bounds[:, s + 1])[:, None]
            pick = (ranks >= lo) & (ranks < hi)  # [R, k]: children decided at this step
            r, c = pick.nonzero(as_tuple=True)
            scale = ctx.scale
            if top:
                # Progress = fraction of the children decided once this step is done.
                done = float((n_known + bounds[:, s + 1])[:half].double().mean()) / k
                scale = guidance_at(ctx.options.guidance, ctx.options.guidance_schedule, done)
            if r.numel():
                sub_x, sub_logp = self.child.decode(
                    self.child_rows(children[r, c]),
                    self.child_rows(child_known[r, c]),
                    conds[r, c],
                    ctx.down(scale),
                )
                children[r, c] = sub_x.flatten(1)
                logp.index_add_(0, r, sub_logp.to(logp.dtype))
            decided |= pick
            if top and ctx.options.callback is not None:
                _report(ctx, self, children, child_known | decided[..., None], s, num_steps)
        return self.merge(children), logp
