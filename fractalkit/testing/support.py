"""Tiny supports: every configuration of a small model's event space, fixed orders, and the
order in which exact decoding visits the elements.

Everything here reads a model through its public surface only (``event_shape``,
``num_values``, ``config``, ``levels``), so it works for plug-in levels, leaves and partitioners.

Shape letters: N instances, E elements of one instance (``prod(event_shape)``), V values per
element, C = V**E configurations, k children of a level.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Sequence

import torch
from torch import Tensor

from fractalkit.data.toy import all_configurations, configuration_index
from fractalkit.fractal import Fractal
from fractalkit.partition import Partitioner, partitioner_from_config

__all__ = [
    "MAX_ENUMERABLE",
    "check_model",
    "decoding_order",
    "enumerable",
    "fixed_orders",
    "float64_copy",
    "num_configurations",
    "partitioners",
    "random_data",
    "random_labels",
    "roughen",
    "support",
    "support_index",
    "top_level_steps",
    "uses_orders",
]

MAX_ENUMERABLE = 4096
"""Most configurations the kit enumerates (normalisation, chi-square): C = V**E <= this."""


def check_model(model: object, where: str) -> None:
    """Refuse what the kit cannot check: not a :class:`fractalkit.Fractal`, or not on the CPU.

    Raises:
        TypeError: ``model`` is not a Fractal.
        ValueError: its parameters are not on the CPU (the kit's supports and laws are CPU
            tensors, and its models are tiny).
    """
    if not isinstance(model, Fractal):
        raise TypeError(
            f"{where}: expected a fractalkit.Fractal, got {type(model).__name__}; build one "
            "around your component (fractalkit.testing.tiny_fractal)"
        )
    devices = {p.device.type for p in model.parameters()}
    if devices - {"cpu"}:
        raise ValueError(
            f"{where}: the kit checks models on the CPU, this one is on {sorted(devices)}; "
            "pass model.cpu() (the models it can enumerate are tiny)"
        )


def num_configurations(model: Fractal) -> int:
    """C = V**E, the number of instances of the model's event space."""
    return model.num_values ** math.prod(model.event_shape)


def enumerable(model: Fractal, limit: int = MAX_ENUMERABLE) -> bool:
    """Whether the model's event space has at most ``limit`` configurations."""
    return num_configurations(model) <= limit


def support(model: Fractal, limit: int = MAX_ENUMERABLE) -> Tensor:
    """Every instance of the model's event space, in lexicographic order.

    Args:
        model: any :class:`fractalkit.Fractal`.
        limit: refuse spaces with more configurations than this.

    Returns:
        int64 ``[C, *event_shape]`` on the CPU; row i holds the base-V digits of i.

    Raises:
        ValueError: the space has more than ``limit`` configurations (say which, and how to
            shrink it).
    """
    count = num_configurations(model)
    if count > limit:
        raise ValueError(
            f"fractalkit.testing: the model's event space {list(model.event_shape)} with "
            f"{model.num_values} values has {count} configurations, more than the kit enumerates "
            f"({limit}); build a smaller model (fewer elements or values) for this check"
        )
    return all_configurations(model.event_shape, model.num_values)


def support_index(x: Tensor, model: Fractal) -> Tensor:
    """Row of :func:`support` equal to each instance: int64 ``[N]`` for ``x [N, *event_shape]``."""
    return configuration_index(x, model.num_values)


def partitioners(model: Fractal) -> list[Partitioner]:
    """The model's partitioners, top first, rebuilt from its public ``config``."""
    return [partitioner_from_config(p.config()) for p, _ in model.config.levels]


def uses_orders(model: Fractal) -> list[bool]:
    """Per level (top first, leaf excluded): whether it takes a decoding order (MAR-like).

    Read from the level's ``uses_orders`` capability flag (or its config's); a level without
    the flag has a fixed raster order.
    """
    configs = [cfg for _, cfg in model.config.levels]
    flags = []
    for level, config in zip(model.levels[:-1], configs, strict=True):
        flag = getattr(level, "uses_orders", None)
        flags.append(bool(getattr(config, "uses_orders", False) if flag is None else flag))
    return flags


def fixed_orders(model: Fractal, *, seed: int) -> list[Tensor | None]:
    """One shared random permutation per order-taking level (None for raster-order levels).

    Under such orders every level is an exact autoregressive model, so ``log_prob`` is exact,
    normalised, and the law of exact-mode sampling (one child per step).

    Returns:
        Per level, top first: int64 ``[k]`` or None.
    """
    g = torch.Generator().manual_seed(seed)
    return [
        torch.randperm(p.num_children, generator=g) if flag else None
        for p, flag in zip(partitioners(model), uses_orders(model), strict=True)
    ]


def _order_of(spec: object, k: int, level: int, flag: bool) -> Tensor:
    """A shared permutation ``[k]`` from one level's order spec ("identity" or a tensor; None
    only at a raster-order level, where it means the raster order)."""
    if (spec is None and not flag) or (isinstance(spec, str) and spec == "identity"):
        return torch.arange(k)
    if isinstance(spec, Tensor) and spec.dim() == 1 and spec.numel() == k:
        if not torch.equal(spec.sort().values.cpu(), torch.arange(k)):
            raise ValueError(f"orders[{level}]: {spec.tolist()} is not a permutation of 0..{k - 1}")
        return spec.long().cpu()
    raise ValueError(
        f"orders[{level}]: the kit needs one shared order per level (None, 'identity' or an int64 "
        f"permutation [{k}]), got {spec!r:.80}; random (None) or per-instance orders have no "
        "single decoding order: pass fractalkit.testing.fixed_orders(model, seed=0)"
    )


def decoding_order(model: Fractal, orders: object = "identity") -> Tensor:
    """The flat element indices in the order exact decoding decides them.

    Exact decoding (one child per step) is depth-first: a level decides its children in its
    order, and each child is decoded completely, down to the leaf, before the next one; the leaf
    decides its elements in flat order (an autoregressive leaf) or all at once (then they are
    independent given the condition, so any order gives the same law).

    Args:
        model: any :class:`fractalkit.Fractal`.
        orders: ``"identity"``/None, or one entry per level (None, ``"identity"`` or a shared
            int64 permutation ``[k]``), as :func:`fixed_orders` returns.

    Returns:
        int64 ``[E]``: a permutation of ``0..E-1`` (indices into the flattened event).
    """
    parts = partitioners(model)
    if orders is None or isinstance(orders, str | Tensor):
        orders = [orders] * len(parts)
    specs = list(orders)
    if len(specs) != len(parts):
        raise ValueError(f"orders: expected one entry per level ({len(parts)}), got {len(specs)}")
    numel = math.prod(model.event_shape)
    index = torch.arange(numel).view(1, *model.event_shape)  # [1, *event]
    flags = uses_orders(model)
    for depth, part in enumerate(parts):
        # Every row is one instance of this level; split, reorder, and stack the children.
        children = part.split(index)  # [R, k, *child]
        order = _order_of(specs[depth], part.num_children, depth, flags[depth])
        index = children[:, order].flatten(0, 1)  # [R * k, *child]
    return index.flatten()


def top_level_steps(model: Fractal, orders: object = "identity") -> Tensor:
    """The step (0-based) at which exact decoding decides each top-level child: int64 ``[k]``."""
    specs = as_orders(model, orders)
    k = partitioners(model)[0].num_children
    return _order_of(specs[0], k, 0, uses_orders(model)[0]).argsort()


def float64_copy(model: Fractal) -> Fractal:
    """A deep copy of ``model`` in float64 and eval mode (the model itself is left alone)."""
    return copy.deepcopy(model).double().eval()


def roughen(model: Fractal, *, seed: int, scale: float = 0.6) -> Fractal:
    """Add N(0, scale^2) noise to every parameter in place (deterministic); returns the model.

    A fresh model's leaf logits are almost flat, and a check that passes on a near-uniform
    model proves little: noise makes the per-element distributions peaked and the conditionals
    differ across orders and classes, so the checks have power.
    """
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn(p.shape, generator=g, dtype=p.dtype).to(p.device) * scale)
    return model


def random_data(model: Fractal, n: int, *, seed: int = 0) -> Tensor:
    """Uniformly random int64 instances ``[n, *event_shape]`` in ``[0, V)``; for a leaf with
    slot kinds (:class:`fractalkit.leaves.SlotKinds`), uniform over each element's allowed
    values (the model's support)."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randint(0, model.num_values, (n, *model.event_shape), generator=g)
    kinds = getattr(model.leaf, "slot_kinds", None)
    if kinds is None:
        return x
    allowed = kinds.allowed_mask(model.num_values).double()  # [K, V]
    per_element = allowed[torch.tensor(kinds.element_kinds)]  # [D, V]
    flat = torch.multinomial(per_element.repeat(n, 1), 1, generator=g)  # [n * D, 1]
    return flat.view(n, *model.event_shape)


def random_labels(model: Fractal, n: int, *, seed: int = 0) -> Tensor | None:
    """Random int64 labels ``[n]`` for a class-conditional model, None for an unconditional one."""
    if not model.num_classes:
        return None
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, model.num_classes, (n,), generator=g)


def labels_of(y: int | None, n: int) -> Tensor | None:
    """``[n]`` copies of label ``y`` (None stays None)."""
    return None if y is None else torch.full((n,), int(y), dtype=torch.long)


def as_orders(model: Fractal, orders: object) -> Sequence[object]:
    """One order entry per level from a spec (a single spec is repeated)."""
    if orders is None or isinstance(orders, str | Tensor):
        return [orders] * len(model.levels[:-1])
    return list(orders)
