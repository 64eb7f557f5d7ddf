"""ARLevel: a causal transformer over a level's children in raster order, with a KV cache.

Shape letters: N instances, k children, P elements per child, T incoming condition tokens,
D_in incoming width, D this level's width.

Teacher forcing: the sequence is ``[cond_emb(c_0), t_0, ..., t_{k-2}]`` (t_j the embedding of
child j) plus learned positions, LayerNorm, the blocks and a final LayerNorm; output j is the
condition of child j, which therefore sees the incoming condition and children ``< j`` only.
Sampling feeds one token per step through a preallocated KV cache; the decoding loop itself
(raster plan, guidance schedule, callback, known children) is :class:`fractalkit.levels.base.Level`'s.
"""

from __future__ import annotations

import dataclasses

import torch
from torch import Tensor, nn

from fractalkit.config import BuildContext, LevelConfig
from fractalkit.levels.base import Level, Step
from fractalkit.levels.inputs import ChildInputs, EmbedMode
from fractalkit.nn.blocks import Backbone, BlockStyle, check_transformer
from fractalkit.nn.rope import rope_2d_table
from fractalkit.normalisation import ValueNormalisation
from fractalkit.partition import Partitioner
from fractalkit.protocol import AbstractGenerator
from fractalkit.protocol.contexts import DecodeContext
from fractalkit.registry import register


@register("ar")
@dataclasses.dataclass(frozen=True)
class ARLevelConfig(LevelConfig):
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
        check_transformer(self, self.rope)

    def build(self, ctx: BuildContext) -> ARLevel:
        """The level over ``ctx.partitioner``'s children, delegating to ``ctx.child``."""
        return ARLevel(
            ctx.partitioner, ctx.child, self, cond_dim=ctx.cond_dim, cond_tokens=ctx.cond_tokens,
            normalisation=ctx.normalisation,
        )


class ARLevel(Level):
    """Raster-order causal transformer over the children: an exact autoregressive level.

    Args:
        partitioner: how an instance becomes k children.
        child: the next generator down; receives one condition token of width ``config.width``.
        config: an :class:`ARLevelConfig`.
        cond_dim: D_in of the incoming condition.
        cond_tokens: T of the incoming condition (token 0 is used: in an AR level a neighbour's
            output would leak the child).
        normalisation: how the instance's values become floats (linear child embedding).
    """

    def __init__(
        self,
        partitioner: Partitioner,
        child: AbstractGenerator,
        config: ARLevelConfig,
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
            out_tokens=1,
        )
        self.config = config
        k = partitioner.num_children
        self.inputs = ChildInputs.of(self, config.embed)
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
            table = rope_2d_table(partitioner.positions(), config.width // config.heads, num_prefix=1)
            self.register_buffer("rope", table, persistent=False)  # [k + 1, E/2, 2]
        else:
            self.rope = None
        # The original's initialisation, part by part in its order (a seed gives the same weights).
        self.inputs.reset_parameters()
        self.backbone.reset_parameters()
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
        tokens = torch.cat([self.inputs.condition(cond[:, :1]), self.inputs.embed(children[:, : k - 1])], 1)
        h = self.inputs.norm(tokens + self.pos_embed[:, :k])  # [N, k, D]
        return self.backbone(h, causal=True, rope=self._rope(0, k))

    def teacher_forced_conditions(
        self, children: Tensor, cond: Tensor, summary: Tensor | None
    ) -> Tensor:
        """``[N, k, 1, D]``: :meth:`conditions` as one condition token per child."""
        return self.conditions(children, cond)[:, :, None]

    def begin_decoding(
        self, children: Tensor, cond: Tensor, summary: Tensor | None, ctx: DecodeContext
    ) -> dict:
        """The token inputs (token 0 the condition) and, with ``kv_cache``, the caches."""
        rows, k = children.shape[:2]
        # Inputs before positions: token 0 is the condition, token j + 1 embeds child j.
        tokens = self.pos_embed.new_zeros(rows, k, self.width)
        tokens[:, 0] = self.inputs.condition(cond[:, 0]).to(tokens.dtype)
        caches = self.backbone.new_caches(rows, k, self.pos_embed) if ctx.options.kv_cache else None
        return {"tokens": tokens, "caches": caches}

    def step_conditions(self, state: dict, children: Tensor, decided: Tensor, step: Step) -> Tensor:
        """Child j's condition from one new token (KV cache) or the recomputed prefix."""
        j, tokens, caches = step.index, state["tokens"], state["caches"]
        if j > 0:  # child j - 1 was decided at the previous step
            tokens[:, j] = self.inputs.embed(children[:, j - 1]).to(tokens.dtype)
        if caches is not None:  # one new token; keys and values of the rest are cached
            h = self.inputs.norm(tokens[:, j : j + 1] + self.pos_embed[:, j : j + 1])
            h = self.backbone(h, causal=True, rope=self._rope(j, j + 1), caches=caches)
        else:  # recompute the whole prefix (reference path)
            h = self.inputs.norm(tokens[:, : j + 1] + self.pos_embed[:, : j + 1])
            h = self.backbone(h, causal=True, rope=self._rope(0, j + 1))
        rows = step.pick[:, j].nonzero().squeeze(1)
        return h[rows, -1, None]  # [M, 1, D]
