"""Orders of a MAR level's children: drawn per instance, or given explicitly.

Shape letters: N instances, L children.
"""

from __future__ import annotations

import torch
from torch import Tensor

from fractalkit.protocol.contexts import OrderSpec
from fractalkit.sampling.rng import random_orders
from fractalkit.validation import check_integer_tensor


def resolve_orders(
    spec: OrderSpec, n: int, length: int, *, generator: torch.Generator | None, device
) -> Tensor:
    """Turn an order specification into permutations, int64 ``[N, L]`` (row = children in order).

    Args:
        spec: None or ``"random"`` (one uniform permutation per instance from ``generator``),
            ``"identity"`` (children in index order), an int64 ``[L]`` permutation shared by all
            instances, or ``[N, L]`` permutations, one per instance.
        n: N.
        length: L.
        generator: random stream for ``"random"``.
        device: where the result lives.

    Raises:
        ValueError: a tensor of the wrong shape, or rows that are not permutations of range(L).
    """
    if spec is None or (isinstance(spec, str) and spec == "random"):
        return random_orders(n, length, generator=generator, device=device)
    if isinstance(spec, str):
        if spec == "identity":
            return torch.arange(length, device=device).expand(n, length)
        raise ValueError(f"orders: expected 'random', 'identity' or a tensor, got {spec!r}")
    if not isinstance(spec, Tensor):
        raise TypeError(f"orders: expected a string or an int64 tensor, got {type(spec)}")
    orders = check_integer_tensor("orders", "a permutation", spec).to(device=device, dtype=torch.long)
    if orders.dim() == 1:
        orders = orders.expand(n, -1)
    if tuple(orders.shape) != (n, length):
        raise ValueError(
            f"orders: expected a permutation of shape [{length}] or [{n}, {length}], "
            f"got {list(spec.shape)}"
        )
    if n and not bool((orders.sort(dim=-1).values == torch.arange(length, device=device)).all()):
        raise ValueError(f"orders: every row must be a permutation of range({length})")
    return orders


def masked_subset(orders: Tensor, count: Tensor) -> Tensor:
    """The first ``count[i]`` children of row i's order, as a bool mask ``[N, L]``."""
    ranks = orders.argsort(dim=-1)  # rank of each child in its row's order
    return ranks < count[:, None]
