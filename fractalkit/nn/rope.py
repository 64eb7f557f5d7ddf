"""Two-dimensional rotary position embeddings (the LLaMA-style AR levels' positions).

Shape letters: S sequence length, E head dim.
"""

from __future__ import annotations

import torch
from torch import Tensor


def rope_2d_table(positions: Tensor, head_dim: int, num_prefix: int, base: float = 10000.0) -> Tensor:
    """Angles' cosine and sine for 2-D rotary embeddings, one row per sequence position.

    Pair i of a head (elements 2i, 2i+1) rotates by ``row * theta_i`` for ``i < E/4`` and by
    ``col * theta_{i - E/4}`` for the next E/4 pairs, ``theta_k = base^(-2k / (E/2))``. The first
    ``num_prefix`` positions (condition tokens) get cos = sin = 0, which zeroes their queries and
    keys: the convention of the original FractalGen AR levels, kept so its weights load exactly.

    Args:
        positions: int64 ``[k, 2]`` (row, col) of each child on its grid.
        head_dim: E, divisible by 4.
        num_prefix: condition tokens placed before the children.
        base: rotary base.

    Returns:
        float32 ``[num_prefix + k, E/2, 2]``: (cos, sin) per position and pair.
    """
    if head_dim % 4:
        raise ValueError(f"2-D rotary embeddings need a head dim divisible by 4, got {head_dim}")
    quarter = head_dim // 4
    theta = 1.0 / (base ** (torch.arange(0, quarter, dtype=torch.float32) * 2 / (head_dim // 2)))
    rows = positions[:, 0].float()[:, None] * theta  # [k, E/4]
    cols = positions[:, 1].float()[:, None] * theta  # [k, E/4]
    angles = torch.cat([rows, cols], dim=-1)  # [k, E/2]
    table = torch.stack([angles.cos(), angles.sin()], dim=-1)  # [k, E/2, 2]
    prefix = torch.zeros(num_prefix, head_dim // 2, 2)
    return torch.cat([prefix, table], dim=0)


def apply_rope(x: Tensor, table: Tensor, *, dtype: torch.dtype | None = None) -> Tensor:
    """Rotate adjacent pairs (2i, 2i+1) of ``x`` by the angles in ``table``.

    Args:
        x: ``[N, H, S, E]`` queries or keys.
        table: ``[S, E/2, 2]`` from :func:`rope_2d_table`, sliced to the positions of ``x``.
        dtype: the result's dtype; None: that of ``x``.

    Returns:
        ``[N, H, S, E]`` in ``dtype`` (the rotation itself runs in float32 or wider).
    """
    work = torch.promote_types(x.dtype, torch.float32)
    pairs = x.to(work).unflatten(-1, (-1, 2))  # [N, H, S, E/2, 2]
    cos, sin = table[..., 0].to(work), table[..., 1].to(work)  # [S, E/2]
    a, b = pairs[..., 0], pairs[..., 1]
    out = torch.stack([a * cos - b * sin, b * cos + a * sin], dim=-1)
    return out.flatten(-2).to(dtype or x.dtype)
