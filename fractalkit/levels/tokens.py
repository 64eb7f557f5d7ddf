"""How a MAR level turns its transformer outputs into each child's condition tokens.

Shape letters: N instances (or passes), k children, D the level's width, M selected children,
T' condition tokens per child.

A MAR level's pass gives one output per child position, ``h [N, k, D]``. A *child-token
strategy* makes the T' condition tokens each selected child hands its own child:

- :class:`OwnToken`: the child's own output (T' = 1);
- :class:`GridNeighbourTokens`: its own output, then its top, right, bottom and left grid
  neighbours' (zeros off the grid; T' = 5), from :meth:`fractalkit.Partitioner.neighbours`;
- :class:`LinkedMeanToken`: its own output plus a learned linear map of the mean output of the
  *visible* children linked to it by the data (:meth:`fractalkit.Partitioner.links`; zeros when
  none; T' = 1).

:func:`child_tokens` picks one from a level's settings.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from fractalkit.nn.init import xavier_init
from fractalkit.partition import Partitioner


class ChildTokenStrategy(nn.Module):
    """The interface: :meth:`select` for one pass, :meth:`select_passes` for one pass per child.

    Attributes:
        num_tokens: T', condition tokens per child.
    """

    num_tokens: int = 1

    def select(self, h: Tensor, rows: Tensor, cols: Tensor, children: Tensor, visible: Tensor) -> Tensor:
        """The condition tokens of children ``(rows, cols)`` from one pass.

        Args:
            h: ``[N, k, D]`` outputs at the children's positions.
            rows, cols: int64 ``[M]``, which children.
            children: int64 ``[N, k, P]``, the children (visible ones hold their values).
            visible: bool ``[N, k]``, the children visible in the pass.

        Returns:
            ``[M, T', D]``.
        """
        raise NotImplementedError

    def select_passes(self, h: Tensor, children: Tensor, visible: Tensor) -> Tensor:
        """Every child's condition tokens when child c has its own pass (the exact mode).

        Args:
            h: ``[N, k, k, D]``: ``h[:, c]`` are the outputs of child c's pass.
            children: int64 ``[N, k, P]``.
            visible: bool ``[N, k, k]``: ``[:, c]`` the children visible in child c's pass.

        Returns:
            ``[N * k, T', D]``, child c of instance n at row ``n * k + c``.
        """
        n, k, _, d = h.shape
        step = torch.arange(k, device=h.device)
        flat = h.reshape(n * k, k, d)
        return self.select(
            flat, torch.arange(n * k, device=h.device), step.repeat(n), children.repeat_interleave(k, 0),
            visible.reshape(n * k, k),
        )

    def reset_parameters(self) -> None:
        """The original's initialisation of the strategy's layers (none by default)."""


class OwnToken(ChildTokenStrategy):
    """Each child's own output, one token."""

    num_tokens = 1

    def select(self, h: Tensor, rows: Tensor, cols: Tensor, children: Tensor, visible: Tensor) -> Tensor:
        """``[M, 1, D]``: ``h[rows, cols]``."""
        return h[rows, cols][:, None]

    def select_passes(self, h: Tensor, children: Tensor, visible: Tensor) -> Tensor:
        """``[N * k, 1, D]``: child c's output in its own pass."""
        n, k, _, d = h.shape
        step = torch.arange(k, device=h.device)
        return h.reshape(n * k, k, d)[torch.arange(n * k, device=h.device), step.repeat(n)][:, None]


class GridNeighbourTokens(ChildTokenStrategy):
    """Own output, then the top, right, bottom and left grid neighbours' (zeros off the grid).

    Args:
        partitioner: gives the grid (:meth:`fractalkit.Partitioner.neighbours`).
    """

    num_tokens = 5

    def __init__(self, partitioner: Partitioner) -> None:
        super().__init__()
        self.register_buffer("neighbours", partitioner.neighbours(), persistent=False)  # [k, 4]

    def select(self, h: Tensor, rows: Tensor, cols: Tensor, children: Tensor, visible: Tensor) -> Tensor:
        """``[M, 5, D]``."""
        # One gather of the M children's tokens only (training masks ~80% of the children):
        # forming every child's tokens first and then selecting was a second full-size copy.
        # Rows of the flattened [N * (k + 1), D] outputs, as an embedding lookup: its backward
        # (rows split between threads, each summing its rows' gradients in order) takes less
        # time than advanced indexing's accumulating index_put, and stays deterministic.
        n, k, d = h.shape
        padded = torch.cat([h, h.new_zeros(n, 1, d)], dim=1)  # index k holds zeros
        own = torch.arange(k, device=h.device)[:, None]
        index = torch.cat([own, self.neighbours.where(self.neighbours >= 0, k)], dim=1)  # [k, 5]
        flat = (rows[:, None] * (k + 1) + index[cols]).reshape(-1)  # [M * 5]
        return F.embedding(flat, padded.view(n * (k + 1), d)).view(rows.shape[0], 5, d)  # [M, 5, D]

    def select_passes(self, h: Tensor, children: Tensor, visible: Tensor) -> Tensor:
        """``[N * k, 5, D]``: child c's and its neighbours' outputs in child c's pass."""
        n, k, _, d = h.shape
        step = torch.arange(k, device=h.device)
        return self.select(h.reshape(n * k, k, d), torch.arange(n * k, device=h.device), step.repeat(n), children, visible)


class LinkedMeanToken(ChildTokenStrategy):
    """Own output plus a learned map of the mean output of the visible children linked to it.

    Child i counts for child j when i is visible in the pass (teacher-forced: unmasked /
    earlier in the order; decoding: decided) and ``partitioner.links(children)[n, j, i]``; the
    partitioner reads links from the later child's values only, so each condition depends on
    visible children only and the likelihood stays exact under given orders.

    Args:
        partitioner: one with :attr:`fractalkit.Partitioner.has_links`.
        width: D.
        owner: how errors name the level.

    Raises:
        ValueError: the partitioner defines no links.

    Attributes:
        proj: linear ``[..., D] -> [..., D]`` applied to the mean.
    """

    num_tokens = 1

    def __init__(self, partitioner: Partitioner, width: int, owner: str = "MARLevel") -> None:
        super().__init__()
        if not partitioner.has_links:
            raise ValueError(
                f"{owner}: linked_neighbours needs a partitioner with data-dependent links "
                f"(Partitioner.links), e.g. a GraphSubsets over a whole graph (num_nodes == "
                f"row_width, the top graph level); got {partitioner!r}"
            )
        self.partitioner = partitioner
        self.proj = nn.Linear(width, width)

    def reset_parameters(self) -> None:
        """Xavier-uniform weight, zero bias (the level's initialisation)."""
        xavier_init(self.proj)

    def linked_mean(self, h: Tensor, links: Tensor, visible: Tensor) -> Tensor:
        """Mean output of each child's visible linked children.

        Args:
            h: ``[N, k, D]`` outputs of one pass, or ``[N, k, k, D]`` with ``h[:, j]`` the
                outputs of child j's own pass.
            links: bool ``[N, k, k]`` from :meth:`fractalkit.Partitioner.links`.
            visible: bool ``[N, k]`` (one pass) or ``[N, k, k]`` (``[:, j]``: visible in child
                j's pass).

        Returns:
            ``[N, k, D]`` (zeros for a child without visible linked children).
        """
        vis = visible[:, None, :] if visible.dim() == 2 else visible
        weight = (links & vis).to(h.dtype)  # [N, j, i]
        weight = weight / weight.sum(-1, keepdim=True).clamp(min=1.0)
        if h.dim() == 4:
            return torch.einsum("nji,njid->njd", weight, h)
        return torch.bmm(weight, h)

    def select(self, h: Tensor, rows: Tensor, cols: Tensor, children: Tensor, visible: Tensor) -> Tensor:
        """``[M, 1, D]``."""
        mean = self.linked_mean(h, self.partitioner.links(children), visible)
        return (h[rows, cols] + self.proj(mean[rows, cols]))[:, None]

    def select_passes(self, h: Tensor, children: Tensor, visible: Tensor) -> Tensor:
        """``[N * k, 1, D]``: child c's own output in its pass plus the linked mean there."""
        n, k, _, d = h.shape
        mean = self.linked_mean(h, self.partitioner.links(children), visible)  # [N, c, D]
        own = h.diagonal(dim1=1, dim2=2).transpose(1, 2)  # [N, c, D]: child c in its pass
        return (own + self.proj(mean)).reshape(n * k, 1, d)


def child_tokens(partitioner: Partitioner, width: int, *, neighbours: bool, linked: bool,
                 owner: str = "MARLevel") -> ChildTokenStrategy:
    """The strategy a level's settings choose: linked mean, grid neighbours, or own output.

    Args:
        partitioner: the level's partitioner.
        width: D.
        neighbours: grid neighbours (5 tokens).
        linked: the linked mean (1 token); excludes ``neighbours``.
        owner: how errors name the level.

    Raises:
        ValueError: both chosen, or links asked of a partitioner without them.
    """
    if linked and neighbours:
        raise ValueError(f"{owner}: linked_neighbours replaces the grid neighbours; set neighbours=False")
    if linked:
        return LinkedMeanToken(partitioner, width, owner)
    if neighbours:
        return GridNeighbourTokens(partitioner)
    return OwnToken()
