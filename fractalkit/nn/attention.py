"""Multi-head self-attention on ``scaled_dot_product_attention``, with a preallocated KV cache.

Shape letters: N sequences, S new tokens, P cached tokens, D width, H heads, E head dim.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from fractalkit.nn.rope import apply_rope


class KVCache:
    """Preallocated keys and values of one attention layer, filled left to right.

    Preallocation keeps sampling free of per-step concatenation: step t writes its keys at
    ``[length, length + S)`` and attends to ``[0, length + S)``.

    Args:
        batch: N, sequences decoded together.
        heads: H.
        head_dim: E.
        capacity: most tokens the sequence will hold.
        device, dtype: where and how to store keys and values (those of the layer's weights).
    """

    def __init__(
        self, batch: int, heads: int, head_dim: int, capacity: int, device, dtype
    ) -> None:
        self.keys = torch.empty(batch, heads, capacity, head_dim, device=device, dtype=dtype)
        self.values = torch.empty_like(self.keys)
        self.length = 0

    def append(self, k: Tensor, v: Tensor) -> tuple[Tensor, Tensor]:
        """Store ``[N, H, S, E]`` keys and values; return all of them so far, ``[N, H, P+S, E]``."""
        end = self.length + k.shape[2]
        if end > self.keys.shape[2]:
            raise ValueError(f"KVCache: capacity {self.keys.shape[2]} exceeded ({end} tokens)")
        self.keys[:, :, self.length : end] = k
        self.values[:, :, self.length : end] = v
        self.length = end
        return self.keys[:, :, :end], self.values[:, :, :end]


class Attention(nn.Module):
    """Multi-head self-attention with packed ``qkv`` rows ordered [q; k; v], heads contiguous.

    Args:
        width: D.
        heads: H, dividing D.
        bias: whether ``qkv`` has a bias (ViT blocks: yes; LLaMA blocks: no, nor ``proj``).
        attn_dropout: dropout on attention weights (training only).
        proj_dropout: dropout after the output projection (training only).
    """

    def __init__(
        self,
        width: int,
        heads: int,
        *,
        bias: bool,
        attn_dropout: float = 0.0,
        proj_dropout: float = 0.0,
    ) -> None:
        super().__init__()
        if width % heads:
            raise ValueError(f"Attention: width {width} is not divisible by heads {heads}")
        self.heads = heads
        self.head_dim = width // heads
        self.qkv = nn.Linear(width, 3 * width, bias=bias)
        self.proj = nn.Linear(width, width, bias=bias)
        self.attn_dropout = attn_dropout
        self.proj_drop = nn.Dropout(proj_dropout)

    def forward(
        self,
        x: Tensor,
        *,
        causal: bool,
        rope: Tensor | None = None,
        cache: KVCache | None = None,
    ) -> Tensor:
        """Attend over ``x`` (and what ``cache`` holds).

        Args:
            x: ``[N, S, D]``.
            causal: each token sees itself and earlier tokens only.
            rope: ``[S, E/2, 2]`` rotary table for these S positions, or None.
            cache: keys/values of earlier tokens; the new ones are appended.

        Returns:
            ``[N, S, D]``.
        """
        n, s, d = x.shape
        q, k, v = self.qkv(x).view(n, s, 3, self.heads, self.head_dim).permute(2, 0, 3, 1, 4)
        if rope is not None:
            q, k = apply_rope(q, rope), apply_rope(k, rope)
        past = 0
        if cache is not None:
            past = cache.length
            k, v = cache.append(k, v)
        mask = None
        is_causal = causal and s > 1
        if is_causal and past:
            # A causal block of new tokens after P cached ones: row i sees keys [0, P + i].
            keys = torch.arange(past + s, device=x.device)
            mask = keys[None, :] <= (past + torch.arange(s, device=x.device))[:, None]
            is_causal = False
        dropout = self.attn_dropout if self.training else 0.0
        # CUDA kernels launch one block row per (sequence, head) and fail past 65,535 of them
        # (a leaf sees ~10^5 pixels per batch): chunk the batch there.
        step = max(1, 65535 // self.heads if q.is_cuda else n)
        out = torch.cat(
            [
                F.scaled_dot_product_attention(
                    q[i : i + step],
                    k[i : i + step],
                    v[i : i + step],
                    attn_mask=mask,
                    dropout_p=dropout,
                    is_causal=is_causal,
                )
                for i in range(0, max(n, 1), step)
            ]
        )  # [N, H, S, E]
        out = out.transpose(1, 2).reshape(n, s, d)
        return self.proj_drop(self.proj(out))
