"""Transformer blocks: ViT style (LayerNorm, GELU MLP, biases) and LLaMA style (RMSNorm, SwiGLU).

Shape letters: N sequences, S tokens, D width.
"""

from __future__ import annotations

from typing import Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from fractalkit.nn.attention import Attention, KVCache
from fractalkit.nn.init import xavier_init
from fractalkit.nn.linear import Linear, packed_pair

BlockStyle = Literal["vit", "llama"]


class RMSNorm(nn.Module):
    """Root-mean-square norm, computed in float32 (or wider) and cast back.

    Args:
        width: D.
        eps: added to the mean square (LLaMA: 1e-5).
    """

    def __init__(self, width: int, eps: float = 1e-5) -> None:
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(width))

    def forward(self, x: Tensor) -> Tensor:
        """Normalise ``[..., D]``; returns the same shape and dtype."""
        if x.dtype in (torch.float32, torch.float64) and x.dtype == self.weight.dtype:
            # One fused kernel: sampling runs this per token and per op overhead adds up.
            return F.rms_norm(x, (x.shape[-1],), self.weight, self.eps)
        work = x.to(torch.promote_types(x.dtype, torch.float32))
        out = work * torch.rsqrt(work.pow(2).mean(-1, keepdim=True) + self.eps)
        return out.to(x.dtype) * self.weight


class PreNormBlock(nn.Module):
    """What both block styles share: ``x + attn(norm1(x))``, then ``x + mlp(norm2(x))``.

    Subclasses build ``norm1``, ``attn``, ``norm2`` and define :meth:`mlp`.
    """

    def mlp(self, h: Tensor) -> Tensor:
        """The block's feed-forward part, ``[N, S, D] -> [N, S, D]``."""
        raise NotImplementedError

    def forward(
        self,
        x: Tensor,
        *,
        causal: bool,
        rope: Tensor | None = None,
        cache: KVCache | None = None,
        slots: tuple[Tensor, Tensor] | None = None,
    ) -> Tensor:
        """``[N, S, D] -> [N, S, D]``; see :class:`fractalkit.nn.Attention` for the arguments."""
        x = x + self.attn(self.norm1(x), causal=causal, rope=rope, cache=cache, slots=slots)
        return x + self.mlp(self.norm2(x))


class ViTBlock(PreNormBlock):
    """Pre-norm ViT block: ``x + attn(LN(x))``, then ``x + fc2(GELU(fc1(LN(x))))``.

    LayerNorm eps 1e-6, qkv with bias, exact (erf) GELU, MLP hidden ``mlp_ratio * D``.

    Args:
        width: D.
        heads: attention heads.
        mlp_ratio: MLP hidden size over D.
        attn_dropout, proj_dropout: dropout rates (training only).
    """

    def __init__(
        self,
        width: int,
        heads: int,
        *,
        mlp_ratio: float = 4.0,
        attn_dropout: float = 0.0,
        proj_dropout: float = 0.0,
    ) -> None:
        super().__init__()
        hidden = int(width * mlp_ratio)
        self.norm1 = nn.LayerNorm(width, eps=1e-6)
        self.attn = Attention(
            width, heads, bias=True, attn_dropout=attn_dropout, proj_dropout=proj_dropout
        )
        self.norm2 = nn.LayerNorm(width, eps=1e-6)
        self.fc1 = Linear(width, hidden)
        self.fc2 = Linear(hidden, width)
        self.drop = nn.Dropout(proj_dropout)

    def mlp(self, h: Tensor) -> Tensor:
        """``fc2(GELU(fc1(h)))`` with dropout, ``[N, S, D] -> [N, S, D]``."""
        return self.drop(self.fc2(self.drop(F.gelu(self.fc1(h)))))


def swiglu_hidden(width: int, multiple_of: int = 256) -> int:
    """LLaMA's SwiGLU hidden size: ``int(2 * 4 * width / 3)`` rounded up to ``multiple_of``."""
    hidden = int(2 * 4 * width / 3)
    return multiple_of * ((hidden + multiple_of - 1) // multiple_of)


class LlamaBlock(PreNormBlock):
    """LLaMA block: ``x + attn(RMSNorm(x))``, then ``x + w2(silu(w1 h) * w3 h)``, no biases.

    RMSNorm eps 1e-5; SwiGLU hidden size from :func:`swiglu_hidden`.

    Args:
        width: D.
        heads: attention heads.
        attn_dropout, proj_dropout: dropout rates (training only).
        multiple_of: SwiGLU hidden-size rounding.
    """

    def __init__(
        self,
        width: int,
        heads: int,
        *,
        attn_dropout: float = 0.0,
        proj_dropout: float = 0.0,
        multiple_of: int = 256,
    ) -> None:
        super().__init__()
        hidden = swiglu_hidden(width, multiple_of)
        self.norm1 = RMSNorm(width)
        self.attn = Attention(
            width, heads, bias=False, attn_dropout=attn_dropout, proj_dropout=proj_dropout
        )
        self.norm2 = RMSNorm(width)
        self.w1 = Linear(width, hidden, bias=False)
        self.w3 = Linear(width, hidden, bias=False)
        self.w2 = Linear(hidden, width, bias=False)
        self.drop = nn.Dropout(proj_dropout)

    def mlp(self, h: Tensor) -> Tensor:
        """SwiGLU ``w2(silu(w1 h) * w3 h)`` with dropout, ``[N, S, D] -> [N, S, D]``.

        Inside :func:`fractalkit.nn.linear.packed_weights`, skinny bf16 products of ``w1`` and
        ``w3`` run as one product over their stacked weights (:func:`~fractalkit.nn.linear.packed_pair`).
        """
        both = packed_pair(self.w1, self.w3, h)
        if both is not None:
            gate, up = both.split(self.w1.out_features, -1)
            return self.drop(self.w2(F.silu(gate) * up))
        return self.drop(self.w2(F.silu(self.w1(h)) * self.w3(h)))


def make_block(
    style: BlockStyle, width: int, heads: int, *, attn_dropout: float, proj_dropout: float
) -> nn.Module:
    """Build one block of the named style (``"vit"`` or ``"llama"``)."""
    if style == "vit":
        return ViTBlock(width, heads, attn_dropout=attn_dropout, proj_dropout=proj_dropout)
    if style == "llama":
        return LlamaBlock(width, heads, attn_dropout=attn_dropout, proj_dropout=proj_dropout)
    raise ValueError(f"block: expected 'vit' or 'llama', got {style!r}")


class Backbone(nn.Module):
    """A stack of blocks of one style followed by a final LayerNorm (eps 1e-6).

    Args:
        style: ``"vit"`` or ``"llama"``.
        width: D.
        depth: number of blocks.
        heads: attention heads per block.
        attn_dropout, proj_dropout: dropout rates (training only).
        checkpointing: recompute each block in the backward pass (saves activation memory).
    """

    def __init__(
        self,
        style: BlockStyle,
        width: int,
        depth: int,
        heads: int,
        *,
        attn_dropout: float = 0.0,
        proj_dropout: float = 0.0,
        checkpointing: bool = False,
    ) -> None:
        super().__init__()
        self.blocks = nn.ModuleList(
            make_block(style, width, heads, attn_dropout=attn_dropout, proj_dropout=proj_dropout)
            for _ in range(depth)
        )
        self.norm = nn.LayerNorm(width, eps=1e-6)
        self.checkpointing = checkpointing
        #: decode with fixed-shape caches (set by :meth:`fractalkit.Fractal.compile`)
        self.fixed_shape_caches = False

    def reset_parameters(self) -> None:
        """The original FractalGen's initialisation of the blocks (:func:`xavier_init`); the
        owning level calls it, in its own initialisation order."""
        xavier_init(self)

    def new_caches(self, batch: int, capacity: int, like: Tensor) -> list[KVCache]:
        """One empty :class:`KVCache` per block for ``batch`` sequences of up to ``capacity``,
        in ``like``'s dtype and device; under autocast from float32 on CUDA (or any device but
        the CPU), in autocast's dtype.

        Keys and values come out of autocast's products in its dtype; stored so, they are kept
        exactly and attention does not cast the whole cache at every step. On the CPU the caches
        stay float32 (the 16-bit keys are stored exactly all the same) and each step attends in
        float32 (:func:`fractalkit.nn.attention.cached_attention_in`): a 16-bit attention step
        is 3-6x slower there.
        """
        attn = self.blocks[0].attn if len(self.blocks) else None
        if attn is None:
            return []
        dtype = like.dtype
        device = like.device.type
        if dtype == torch.float32 and device != "cpu" and torch.is_autocast_enabled(device):
            dtype = torch.get_autocast_dtype(device)
        return [
            KVCache(
                batch,
                attn.heads,
                attn.head_dim,
                capacity,
                like.device,
                dtype,
                fixed_shape=self.fixed_shape_caches,
            )
            for _ in self.blocks
        ]

    def forward(
        self,
        x: Tensor,
        *,
        causal: bool,
        rope: Tensor | None = None,
        caches: list[KVCache] | None = None,
    ) -> Tensor:
        """``[N, S, D] -> [N, S, D]``, normalised; ``caches`` (one per block) are appended to."""
        slots = None
        if caches:  # one slot index and mask for every layer: they all hold the same tokens
            slots = caches[0].slots(x.shape[1])
        for i, block in enumerate(self.blocks):
            cache = caches[i] if caches is not None else None
            if self.checkpointing and self.training and torch.is_grad_enabled() and cache is None:
                x = torch.utils.checkpoint.checkpoint(
                    block, x, causal=causal, rope=rope, use_reentrant=False
                )
            else:
                x = block(x, causal=causal, rope=rope, cache=cache, slots=slots)
        for cache in caches or []:
            cache.advance(x.shape[1])
        return self.norm(x)


def check_transformer(cfg, rope: bool) -> None:
    """Validate a transformer level config's ``width``, ``depth``, ``heads``, ``block`` and dropouts.

    Raises:
        ValueError: naming the config class and the bad field.
    """
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
