"""Schedules: MAR training mask counts, decoding counts per step, guidance over progress.

Shape letters: N instances, L children per instance, S decoding steps.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

# The guidance schedule defines what SampleOptions.guidance_schedule means: it lives with the
# options under the protocol and is re-exported here with the other schedules.
from fractalkit.protocol.options import GuidanceSchedule, guidance_at
from fractalkit.sampling.rng import truncated_normal

__all__ = ["GuidanceSchedule", "decode_counts", "guidance_at", "training_mask_counts"]


def training_mask_counts(
    n: int, length: int, *, generator: torch.Generator | None, device
) -> Tensor:
    """Children to mask per instance in MAR training: ``ceil(L * r)``, r ~ TruncNormal(1, 0.25, [0, 1]).

    This is the paper's (and MAR's) mask-ratio distribution. Returns int64 ``[n]`` in ``[1, L]``.
    """
    ratio = truncated_normal(
        n, loc=1.0, scale=0.25, low=0.0, high=1.0, generator=generator, device=device
    )
    return torch.ceil(ratio * length).long().clamp_(1, length)


def decode_counts(unknown: Tensor, steps: int | None) -> Tensor:
    """How many children each instance decides at each decoding step.

    With ``steps=None``, one child per step (the exact mode: sampling then draws exactly from the
    ``log_prob`` model). Otherwise MAR's cosine schedule: after step s, ``floor(u * cos(pi/2 *
    (s+1)/S))`` children stay undecided, at least one child is decided per step while any remain,
    and the last step decides the rest.

    Args:
        unknown: int64 ``[N]``, children still to decide per instance (u).
        steps: S, or None for one child per step.

    Returns:
        int64 ``[N, S]`` with rows summing to ``unknown``; S = max(u) when ``steps`` is None.
    """
    if steps is not None and steps < 1:
        raise ValueError(f"steps: expected a positive number of decoding steps, got {steps}")
    total = int(unknown.max()) if unknown.numel() else 0
    if steps is None:
        s = torch.arange(total, device=unknown.device)
        return (s[None, :] < unknown[:, None]).long()
    remaining = unknown.clone()
    counts = []
    for step in range(steps):
        target = torch.floor(unknown.double() * math.cos(math.pi / 2 * (step + 1) / steps)).long()
        if step == steps - 1:
            target = torch.zeros_like(target)
        target = torch.minimum(target, (remaining - 1).clamp(min=0))
        counts.append(remaining - target)
        remaining = target
    return torch.stack(counts, dim=1)
