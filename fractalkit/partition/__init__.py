"""Partitioners: how an instance becomes k children and back (pure tensor code, no parameters).

Shape letters: N batch, k children per instance, ``*event_shape`` one instance,
``*child_shape`` one child.

``split(x)``: ``[N, *event_shape] -> [N, k, *child_shape]``; ``merge`` is its exact inverse.
``PARTITIONERS`` maps each ``kind`` to its class; ``partitioner_from_config`` rebuilds a
partitioner from ``p.config()``.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from fractalkit.partition.base import Partitioner
from fractalkit.partition.channels import Channels
from fractalkit.partition.chunks import SequenceChunks
from fractalkit.partition.graph import Graph, GraphEncoding, GraphSubsets, bfs_order
from fractalkit.partition.patches import ImagePatches

__all__ = [
    "PARTITIONERS",
    "Channels",
    "Graph",
    "GraphEncoding",
    "GraphSubsets",
    "ImagePatches",
    "Partitioner",
    "SequenceChunks",
    "bfs_order",
    "partitioner_from_config",
]

PARTITIONERS: dict[str, type[Partitioner]] = {
    cls.kind: cls for cls in (ImagePatches, Channels, SequenceChunks, GraphSubsets)
}
"""Registry of partitioner classes by their ``kind`` (the key in ``config()``)."""


def partitioner_from_config(config: Mapping[str, Any]) -> Partitioner:
    """Rebuild a partitioner from its ``config()``.

    Args:
        config: A mapping with ``"kind"`` (a key of ``PARTITIONERS``) and the constructor
            arguments of that class, as returned by ``Partitioner.config()``.

    Returns:
        A new partitioner equal to the one that produced ``config``.

    Raises:
        ValueError: if ``"kind"`` is missing or unknown, or the arguments do not fit the class.
    """
    if not isinstance(config, Mapping) or "kind" not in config:
        raise ValueError(f"partitioner_from_config: config needs a 'kind' key, got {config!r}")
    kind = config["kind"]
    if kind not in PARTITIONERS:
        raise ValueError(
            f"partitioner_from_config: unknown kind {kind!r}; known kinds: {sorted(PARTITIONERS)}"
        )
    cls = PARTITIONERS[kind]
    kwargs = {k: v for k, v in config.items() if k != "kind"}
    try:
        return cls(**kwargs)
    except TypeError as err:  # unexpected or missing keyword: say which class and what it got
        raise ValueError(
            f"partitioner_from_config: bad arguments for {cls.__name__} ({kind!r}): "
            f"{sorted(kwargs)}: {err}"
        ) from err
