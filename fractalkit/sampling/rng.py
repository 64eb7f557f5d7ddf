"""Random draws that go through a ``torch.Generator`` when one is given.

Every random number in fractalkit comes from these helpers, so one seeded generator reproduces
a whole run (no numpy or global RNG inside the library). Draws happen on the generator's device
and move to the data's device, so a CPU generator also drives a CUDA model.
"""

from __future__ import annotations

import torch
from torch import Tensor


def uniform(shape: tuple[int, ...], *, generator: torch.Generator | None, device) -> Tensor:
    """Float32 uniform draws in [0, 1) of ``shape`` on ``device``."""
    where = generator.device if generator is not None else device
    return torch.rand(shape, generator=generator, device=where).to(device)


def random_orders(n: int, length: int, *, generator: torch.Generator | None, device) -> Tensor:
    """``n`` uniformly random permutations of ``range(length)``: int64 ``[n, length]``."""
    return uniform((n, length), generator=generator, device=device).argsort(dim=-1)


def truncated_normal(
    n: int,
    *,
    loc: float,
    scale: float,
    low: float,
    high: float,
    generator: torch.Generator | None,
    device,
) -> Tensor:
    """``n`` draws from a normal(loc, scale) truncated to [low, high], by inverse CDF: float64 [n]."""
    a = torch.special.ndtr(torch.tensor((low - loc) / scale, dtype=torch.float64))
    b = torch.special.ndtr(torch.tensor((high - loc) / scale, dtype=torch.float64))
    u = uniform((n,), generator=generator, device=device).double()
    p = (a + (b - a) * u).clamp(1e-12, 1 - 1e-12)
    return (loc + scale * torch.special.ndtri(p)).clamp(low, high)


def sample_categorical(probs: Tensor, *, generator: torch.Generator | None) -> Tensor:
    """One draw per row of ``probs`` ``[M, V]`` (rows sum to 1): int64 ``[M]``.

    Inverse-CDF sampling with one uniform per row, so the random stream advances by exactly M
    numbers whatever V is (cached and uncached decoding then consume identical streams).
    """
    u = uniform((probs.shape[0], 1), generator=generator, device=probs.device)
    cdf = probs.cumsum(dim=-1)
    index = (cdf < u.to(cdf.dtype) * cdf[:, -1:]).sum(dim=-1)
    return index.clamp_(max=probs.shape[-1] - 1)
