"""ARLevel: a causal transformer over a level's children in raster order, with a KV cache.

Shape letters: N instances, k children, P elements per child, T incoming condition tokens,
D_in incoming width, D this level's width.

Teacher forcing: the sequence is ``[cond_emb(c_0), t_0, ..., t_{k-2}]`` (t_j the embedding of
child j) plus learned positions, LayerNorm, the blocks and a final LayerNorm; output j is the
condition of child j, which therefore sees the incoming condition and children ``< j`` only.
Sampling feeds one token per step through a preallocated KV cache.
"""

from __future__ import annotations

import dataclasses

import torch
from torch import Tensor, nn

from fractalkit.config import ComponentConfig, register_config
from fractalkit.levels.base import EmbedMode, Level
from fractalkit.nn.blocks import Backbone, BlockStyle
from fractalkit.nn.rope import rope_2d_table
from fractalkit.partition import Partitioner
from fractalkit.protocol import AbstractGenerator, Score, accumulation_dtype
from fractalkit.sampling.options import DecodeContext, Progress, ScoreContext
from fractalkit.sampling.schedules import guidance_at


@register_config
@dataclasses.dataclass(frozen=True)
class ARLevelConfig(ComponentConfig):
    """Configuration of an :class:`ARLevel`.

    Attributes:
        width: D.
        depth: transformer blocks.
        heads: attention heads (D divisible by heads; head dim divisible by 4 with ``rope``).
        block: ``"llama"`` (RMSNorm, SwiGLU, no biases; the paper's AR levels) or ``"vit"``.
        rope: 2-D rotary embeddings on queries and keys (in addition to learned positions).
        attn_dropout, proj_dropout: dropout rates (training only).
        embed: ``"linear"`` (values scaled to floats) or ``"table"`` (one-hot embedding).
        checkpointing: recompute blocks in the backward pass to save memory.
    """

    kind = "ar"
    width: int = 64
    depth: int = 2
    heads: int = 4
    block: BlockStyle = "llama"
    rope: bool = True
    attn_dropout: float = 0.0
    proj_dropout: float = 0.0
    embed: EmbedMode = "linear"
    checkpointing: bool = False

    out_tokens = 1  # not a field: an AR level hands each child one condition token

    def __post_init__(self) -> None:
        _check_transformer(self, self.rope)

    def build(
        self,
        partitioner: Partitioner,
        child: AbstractGenerator,
        *,
        cond_dim: int,
        cond_tokens: int,
        value_mean: Tensor | float = 0.5,
        value_std: Tensor | float = 0.5,
    ) -> ARLevel:
        """The level over ``partitioner``'s children, delegating to ``child``."""
        return ARLevel(
            partitioner,
            child,
            self,
            cond_dim=cond_dim,
            cond_tokens=cond_tokens,
            value_mean=value_mean,
            value_std=value_std,
        )


def _check_transformer(cfg, rope: bool) -> None:
    name = type(cfg).__name__
    for field in ("width", "heads"):
        if not isinstance(getattr(cfg, field), int) or getattr(cfg, field) < 1:
            raise ValueError(f"{name}: {field} must be a positive integer, got {getattr(cfg, field)}")
    if not isinstance(cfg.depth, int) or cfg.depth < 0:
        raise ValueError(f"{name}: depth must be a non-negative integer, got {cfg.depth}")
    if cfg.width % cfg.heads:
        raise ValueError(f"{name}: width {cfg.width} is not divisible by heads {cfg.heads}")
    if rope and (cfg.width // cfg.heads) % 4:
        raise ValueError(
            f"{name}: 2-D rotary embeddings need a head dim (width / heads = "
            f"{cfg.width // cfg.heads}) divisible by 4"
        )
    if cfg.block not in ("vit", "llama"):
        raise ValueError(f"{name}: block must be 'vit' or 'llama', got {cfg.block!r}")
    for field in ("attn_dropout", "proj_dropout"):
        if not 0 <= getattr(cfg, field) < 1:
            raise ValueError(f"{name}: {field} must lie in [0, 1), got {getattr(cfg, field)}")


class ARLevel(Level):
    """Raster-order causal transformer over the children: an exact autoregressive level.

    Args:
        partitioner: how an instance becomes k children.
        child: the next generator down; receives one condition token of width ``config.width``.
        config: an :class:`ARLevelConfig`.
        cond_dim: D_in of the incoming condition.
        cond_tokens: T of the incoming condition (token 0 is used: in an AR level a neighbour's
            output would leak the child).
        value_mean, value_std: normalisation of the linear child embedding.
    """

    def __init__(
        self,
        partitioner: Partitioner,
        child: AbstractGenerator,
        config: ARLevelConfig,
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
            out_tokens=1,
        )
        self.config = config
        k = partitioner.num_children
        # k + 1 positions as in the original (the last one is never used), so its weights load.
        self.pos_embed = nn.Parameter(torch.zeros(1, k + 1, config.width))
        self.backbone = Backbone(
            config.block,
            config.width,
            config.depth,
            config.heads,
            attn_dropout=config.attn_dropout,
            proj_dropout=config.proj_dropout,
            checkpointing=config.checkpointing,
        )
        if config.rope:
            table = rope_2d_table(self.positions, config.width // config.heads, num_prefix=1)
            self.register_buffer("rope", table, persistent=False)  # [k + 1, E/2, 2]
        else:
            self.rope = None
        self.initialize_weights()
        nn.init.normal_(self.pos_embed, std=0.02)

    def _rope(self, start: int, stop: int) -> Tensor | None:
        return None if self.rope is None else self.rope[start:stop]

    def conditions(self, children: Tensor, cond: Tensor) -> Tensor:
        """Teacher-forced conditions of all children.

        Args:
            children: int64 ``[N, k, P]``.
            cond: ``[N, T, D_in]``.

        Returns:
            ``[N, k, D]``: row j depends on ``cond`` and children ``< j`` only.
        """
        k = children.shape[1]
        tokens = torch.cat([self.cond_emb(cond[:, :1]), self.patch_emb(children[:, : k - 1])], 1)
        h = self.patch_emb_ln(tokens + self.pos_embed[:, :k])  # [N, k, D]
        return self.backbone(h, causal=True, rope=self._rope(0, k))

    def score(self, x: Tensor, cond: Tensor, ctx: ScoreContext) -> Score:
        """Exact teacher-forced score: every child, conditioned on its predecessors."""
        n, k = x.shape[0], self.num_children
        children = self.split(x)  # [N, k, P]
        h = self.conditions(children, cond)  # [N, k, D]
        sub = self.child.score(
            self.child_rows(children.flatten(0, 1)), h.flatten(0, 1)[:, None], ctx.down()
        )
        return sub.reduce_to(torch.arange(n, device=x.device).repeat_interleave(k), n)

    def decode(
        self, x: Tensor, known: Tensor, cond: Tensor, ctx: DecodeContext
    ) -> tuple[Tensor, Tensor]:
        """Decide children in raster order, one per step; fully known children are context."""
        rows, k = x.shape[0], self.num_children
        children = self.split(x).clone()  # [R, k, P]
        child_known = self.split(known)  # [R, k, P]
        todo = torch.ones(rows, k, dtype=torch.bool, device=x.device)
        if not ctx.force:
            todo = ~child_known.all(-1)
        logp = torch.zeros(rows, dtype=accumulation_dtype(cond.dtype), device=x.device)
        # Inputs before positions: token 0 is the condition, token j + 1 embeds child j.
        tokens = self.pos_embed.new_zeros(rows, k, self.width)
        tokens[:, 0] = self.cond_emb(cond[:, 0]).to(tokens.dtype)
        caches = self.backbone.new_caches(rows, k, self.pos_embed) if ctx.options.kv_cache else None
        top = ctx.depth == 0
        for j in range(k):
            if caches is not None:  # one new token; keys and values of the rest are cached
                h = self.patch_emb_ln(tokens[:, j : j + 1] + self.pos_embed[:, j : j + 1])
                h = self.backbone(h, causal=True, rope=self._rope(j, j + 1), caches=caches)
            else:  # recompute the whole prefix (reference path)
                h = self.patch_emb_ln(tokens[:, : j + 1] + self.pos_embed[:, : j + 1])
                h = self.backbone(h, causal=True, rope=self._rope(0, j + 1))
            h = h[:, -1]  # [R, D]: condition of child j
            scale = ctx.scale
            if top:
                scale = guidance_at(
                    ctx.options.guidance, ctx.options.guidance_schedule, (j + 1) / k
                )
            picked = todo[:, j].nonzero().squeeze(1)
            if picked.numel():
                sub_x, sub_logp = self.child.decode(
                    self.child_rows(children[picked, j]),
                    self.child_rows(child_known[picked, j]),
                    h[picked, None],
                    ctx.down(scale),
                )
                children[picked, j] = sub_x.flatten(1)
                logp.index_add_(0, picked, sub_logp.to(logp.dtype))
            if j + 1 < k:
                tokens[:, j + 1] = self.patch_emb(children[:, j]).to(tokens.dtype)
            if top and ctx.options.callback is not None:
                done = torch.arange(k, device=x.device)[None, :, None] <= j
                _report(ctx, self, children, child_known | done, j, k)
        return self.merge(children), logp


def _report(
    ctx: DecodeContext, level: Level, children: Tensor, decided: Tensor, step: int, steps: int
) -> None:
    """Hand the top level's partial canvas (conditional half only) to the user's callback."""
    half = children.shape[0] // 2 if ctx.guided else children.shape[0]
    canvas = level.merge(children[:half])
    done = level.merge(decided[:half])
    ctx.options.callback(Progress(canvas, done, step + 1, steps))
