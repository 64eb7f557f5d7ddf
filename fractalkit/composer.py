"""The composer: checks ``(partitioner, level config)`` pairs and a leaf config, builds the chain.

Shape letters: N instances, k children per instance.

:func:`compose` validates the pairs against the declared contracts
(:class:`fractalkit.config.LevelConfig`, :class:`fractalkit.config.LeafConfig`), gives every
level its value normalisation and condition sizes, and builds the levels bottom-up, handing
each ``config.build`` one :class:`fractalkit.config.BuildContext`; :func:`level_plans` resolves
a user's per-level settings (``orders``, ``steps``) once into one
:class:`fractalkit.protocol.LevelPlan` per level, which the contexts then hand each level as its
own (``ctx.down()``).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import Tensor

from fractalkit.config import BuildContext, LeafConfig, LevelConfig, build_component, check_contract
from fractalkit.levels.base import Level
from fractalkit.normalisation import ValueNormalisation
from fractalkit.partition import Partitioner
from fractalkit.protocol import AbstractGenerator, LevelPlan, OrderSpec
from fractalkit.validation import check_declared_elements

LevelPairs = list[tuple[Partitioner, LevelConfig]]


def check_levels(levels: Sequence[tuple[Partitioner, LevelConfig]], leaf: LeafConfig) -> LevelPairs:
    """The pairs as a list, after checking types, contracts and that the shapes chain.

    Raises:
        TypeError: a pair is not ``(Partitioner, LevelConfig)`` or the leaf not a
            ``LeafConfig`` (the message names what is missing).
        ValueError: no levels, a partitioner whose ``merge(split(x))`` is not ``x`` (not a
            bijection), or a level's child shape differs from the next one's event shape.
    """
    levels = list(levels)
    if not levels:
        raise ValueError("Fractal: levels must hold at least one (partitioner, config) pair")
    for i, pair in enumerate(levels):
        if not (isinstance(pair, tuple | list) and len(pair) == 2):
            raise TypeError(f"Fractal: levels[{i}] must be a (partitioner, config) pair")
        if not isinstance(pair[0], Partitioner):
            raise TypeError(f"Fractal: levels[{i}][0] must be a Partitioner, got {type(pair[0])}")
        check_contract(pair[1], LevelConfig, f"levels[{i}][1]")
        check_bijection(pair[0], f"levels[{i}][0]")
    check_contract(leaf, LeafConfig, "leaf")
    for i in range(len(levels) - 1):
        above, below = levels[i][0], levels[i + 1][0]
        if tuple(above.child_shape) != tuple(below.event_shape):
            raise ValueError(
                f"Fractal: level {i} hands down children of shape {list(above.child_shape)} "
                f"but level {i + 1} expects instances of shape {list(below.event_shape)}"
            )
    return [(p, c) for p, c in levels]


def check_bijection(partitioner: Partitioner, where: str) -> None:
    """Refuse a partitioner whose ``merge(split(x))`` is not ``x``, tried on ``x = arange(E)``.

    Every element must land in exactly one child position and come back: a split that drops or
    repeats elements would make likelihoods wrong and decoding crash far from the cause.

    Raises:
        ValueError: naming the partitioner and the first wrong element.
        fractalkit.validation.DeclaredSizeError: while a file is loaded, an event larger than
            the file can describe (the check allocates one integer per element).
    """
    shape = tuple(partitioner.event_shape)
    check_declared_elements(f"{where}'s event shape {list(shape)}", math.prod(shape))
    # On the CPU even while Fractal.load builds on the meta device (no values there).
    with torch.device("cpu"):
        index = torch.arange(math.prod(shape)).view(1, *shape)  # [1, *event]
        try:
            back = partitioner.merge(partitioner.split(index))
        except (RuntimeError, ValueError, IndexError) as err:
            raise ValueError(
                f"Fractal: {where}, {partitioner!r}: merge(split(x)) fails on x = arange "
                f"{list(shape)}: {err}"
            ) from err
    if back.shape != index.shape or not torch.equal(back, index):
        wrong = (back != index).flatten().nonzero() if back.shape == index.shape else None
        first = "" if wrong is None or not len(wrong) else f" (first at flat element {int(wrong[0])})"
        raise ValueError(
            f"Fractal: {where}, {partitioner!r}, is not a bijection: merge(split(x)) differs from "
            f"x on x = arange over {list(shape)}{first}; split must put every element in exactly "
            "one child position and merge must be its exact inverse"
        )


def compose(levels: LevelPairs, leaf: LeafConfig, normalisation: ValueNormalisation) -> Level:
    """Build the leaf, then each level around its child, bottom-up; returns the top level.

    Args:
        levels: checked pairs (:func:`check_levels`), top first.
        leaf: the leaf's config.
        normalisation: the top level's instance normalisation.
    """
    # Each level's children share one normalisation; check it for every level up front.
    norms = [normalisation]
    for i, (part, _) in enumerate(levels):
        norms.append(norms[-1].child(part, f"level {i}"))
    last_part, last_cfg = levels[-1]
    child: AbstractGenerator = build_component(
        leaf,
        BuildContext(
            last_cfg.width, last_cfg.out_tokens, tuple(last_part.child_shape),
            normalisation=norms[-1],
        ),
        "leaf",
    )
    for i in reversed(range(len(levels))):
        part, cfg = levels[i]
        parent = levels[i - 1][1] if i > 0 else cfg  # the top level reads the class token
        ctx = BuildContext(
            parent.width, parent.out_tokens, tuple(part.event_shape), partitioner=part,
            child=child, normalisation=norms[i],
        )
        child = build_component(cfg, ctx, "level")
        if not isinstance(child, Level):
            raise TypeError(
                f"Fractal: {type(cfg).__name__}.build must return a fractalkit.Level, got "
                f"{type(child).__name__}"
            )
    return child


def per_level_orders(
    levels: Sequence[Level], orders: OrderSpec | Sequence[OrderSpec]
) -> tuple[OrderSpec, ...]:
    """One order specification per level, top first (None for levels with a fixed order).

    Args:
        levels: the levels, top first (the leaf excluded).
        orders: one specification for every order-dependent level (``None``, ``"identity"``,
            ``"random"``, a permutation tensor), or one entry per level.

    Raises:
        ValueError: wrong number of entries, or an order given for a fixed-order level.
    """
    if orders is None or isinstance(orders, str | Tensor):
        return tuple(orders if level.uses_orders else None for level in levels)
    spec = list(orders)
    if len(spec) != len(levels):
        raise ValueError(
            f"Fractal: orders must have one entry per level ({len(levels)}), got {len(spec)}"
        )
    for i, (o, level) in enumerate(zip(spec, levels, strict=True)):
        if o is not None and not level.uses_orders and not (isinstance(o, str) and o == "identity"):
            raise ValueError(
                f"Fractal: orders[{i}] is given but level {i} ({type(level).__name__}) has a "
                "fixed raster order; use None there"
            )
    return tuple(spec)


def per_level_steps(
    levels: Sequence[Level], steps: Sequence[int | None] | None
) -> tuple[int | None, ...]:
    """One decoding step count per level, top first (None: one child per step).

    Args:
        levels: the levels, top first (the leaf excluded).
        steps: ``SampleOptions.steps``: at most one entry per level, top first (levels past its
            end decide one child per step), or None. AR levels ignore their entry.

    Raises:
        ValueError: more entries than levels.
    """
    given = tuple(steps) if steps is not None else ()
    if len(given) > len(levels):
        raise ValueError(
            f"steps: expected at most one entry per level ({len(levels)}), got {len(given)}"
        )
    return given + (None,) * (len(levels) - len(given))


def level_plans(
    levels: Sequence[Level],
    orders: OrderSpec | Sequence[OrderSpec] = None,
    steps: Sequence[int | None] | None = None,
) -> tuple[LevelPlan, ...]:
    """The one plan per level, top first, that a scoring or decoding context hands down.

    Orders and steps are resolved the same way: checked against the levels once, one entry per
    level (:func:`per_level_orders`, :func:`per_level_steps`).

    Args:
        levels: the levels, top first (the leaf excluded).
        orders: as :func:`per_level_orders` takes them.
        steps: ``SampleOptions.steps`` (None when scoring).

    Returns:
        ``len(levels)`` :class:`fractalkit.protocol.LevelPlan`.

    Raises:
        ValueError: as :func:`per_level_orders` and :func:`per_level_steps` say.
    """
    return tuple(
        LevelPlan(order=o, steps=s)
        for o, s in zip(per_level_orders(levels, orders), per_level_steps(levels, steps), strict=True)
    )
