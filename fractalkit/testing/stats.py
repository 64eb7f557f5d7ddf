"""A pooled chi-square goodness-of-fit test, in torch (no scipy): is a sampler's histogram over
an enumerable support consistent with a given law?

Shape letters: C cells (configurations).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

__all__ = ["ChiSquare", "chi_square", "chi_square_p_value"]


@dataclass(frozen=True)
class ChiSquare:
    """Result of :func:`chi_square`.

    Attributes:
        statistic: Pearson's chi-square over the pooled cells.
        dof: degrees of freedom (pooled cells - 1).
        p_value: upper tail probability ``P(chi2_dof >= statistic)``; small means the counts do
            not follow the law.
        cells: cells after pooling.
    """

    statistic: float
    dof: int
    p_value: float
    cells: int


def chi_square_p_value(statistic: float, dof: int) -> float:
    """Upper tail of the chi-square distribution: ``gammaincc(dof / 2, statistic / 2)``.

    Args:
        statistic: the chi-square statistic (>= 0).
        dof: degrees of freedom (>= 1).

    Returns:
        The p-value in [0, 1].
    """
    if dof < 1:
        raise ValueError(f"chi_square_p_value: dof must be >= 1, got {dof}")
    s = torch.tensor(statistic / 2, dtype=torch.float64)
    return float(torch.special.gammaincc(torch.tensor(dof / 2, dtype=torch.float64), s))


def chi_square(counts: Tensor, probs: Tensor, *, min_expected: float = 5.0) -> ChiSquare:
    """Pearson's test of observed ``counts`` against cell probabilities ``probs``.

    Cells whose expected count is below ``min_expected`` are pooled, smallest first, into one
    cell (and that cell is merged with the next smallest one if it is still too small), so the
    chi-square approximation holds even for peaked laws.

    Args:
        counts: int64 ``[C]`` observed counts per cell.
        probs: float ``[C]`` law of the cells, summing to 1 (renormalised here in float64).

    Returns:
        A :class:`ChiSquare`; if everything pools into one cell there is no information, and
        the result has ``dof = 0``, ``p_value = 1`` and ``cells = 1`` (callers check ``cells``).

    Raises:
        ValueError: ``counts`` and ``probs`` are not 1-D of one length.
    """
    if counts.shape != probs.shape or counts.dim() != 1:
        raise ValueError(f"chi_square: counts {list(counts.shape)} and probs {list(probs.shape)} must be 1-D and equal")
    n = float(counts.sum())
    probs = probs.double() / probs.double().sum()
    expected = probs * n
    order = expected.argsort()
    expected, observed = expected[order], counts.double()[order]
    small = int((expected.cumsum(0) < min_expected).sum())  # the smallest cells, pooled
    small = min(max(small + 1, int((expected < min_expected).sum())), len(expected))
    if small > 1:
        expected = torch.cat([expected[:small].sum(0, keepdim=True), expected[small:]])
        observed = torch.cat([observed[:small].sum(0, keepdim=True), observed[small:]])
    statistic = float(((observed - expected) ** 2 / expected).sum())
    dof = len(expected) - 1
    if dof == 0:  # everything pooled into one cell: no information, nothing rejected
        return ChiSquare(0.0, 0, 1.0, 1)
    return ChiSquare(statistic, dof, chi_square_p_value(statistic, dof), len(expected))
