"""Temperature, the low-probability filter and classifier-free guidance, applied at the leaf.

Shape letters: M instances decided together, V values.
"""

from __future__ import annotations

import torch
from torch import Tensor


def guided_logits(
    logits: Tensor,
    *,
    guided: bool,
    scale: float,
    temperature: float,
    filter_threshold: float,
) -> Tensor:
    """Turn raw leaf logits into the logits a value is drawn from.

    Order (DESIGN.md, sampling): temperature on both halves (logits divided by T: below 1
    sharpens), then the filter (values whose conditional probability is below
    ``filter_threshold`` cannot be boosted: their unconditional logits are raised to the
    conditional ones' level relative to the maximum), then guidance ``l_u + w (l_c - l_u)``.

    Args:
        logits: ``[2M, ..., V]`` when ``guided`` (conditional half first), else ``[M, ..., V]``.
        guided: whether the batch carries a conditional and an unconditional half.
        scale: guidance scale w.
        temperature: T > 0.
        filter_threshold: probability threshold of the filter (0 disables it).

    Returns:
        float32 (or wider) ``[M, ..., V]``.
    """
    work = logits.to(torch.promote_types(logits.dtype, torch.float32)) / temperature
    if not guided:
        return work
    cond, uncond = work.chunk(2)
    if filter_threshold > 0:
        unlikely = cond.softmax(dim=-1) < filter_threshold
        level = cond - cond.amax(dim=-1, keepdim=True) + uncond.amax(dim=-1, keepdim=True)
        uncond = torch.where(unlikely, torch.maximum(uncond, level), uncond)
    return uncond + scale * (cond - uncond)
