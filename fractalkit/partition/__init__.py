"""Partitioners: how an instance becomes k children and back (pure tensor code, no parameters).

Shape letters: N batch, k children per instance, ``*event_shape`` one instance,
``*child_shape`` one child.

``split(x)``: ``[N, *event_shape] -> [N, k, *child_shape]``; ``merge`` is its exact inverse.
``PARTITIONERS`` maps each ``kind`` to its class; a plug-in partitioner joins it with the
one registration decorator of every component, ``@fractalkit.config.register("kind")`` (or the
older :func:`register_partitioner`), and ``partitioner_from_config`` rebuilds any registered
partitioner from ``p.config()`` (which is how ``Fractal.load`` finds it).

Graphs, their node-row encoding and node orders are the graph wing's (:mod:`fractalkit.graphs`:
``Graph``, ``GraphEncoding``, ``bfs_order``, ``random_bfs_order``, ...); only the partitioner
:class:`GraphSubsets` is here.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from fractalkit.partition.base import Partitioner
from fractalkit.partition.channels import Channels
from fractalkit.partition.chunks import SequenceChunks
from fractalkit.partition.graph import GraphSubsets
from fractalkit.partition.patches import ImagePatches
from fractalkit.registry import KindView, lookup, register

__all__ = [
    "PARTITIONERS",
    "Channels",
    "GraphSubsets",
    "ImagePatches",
    "Partitioner",
    "SequenceChunks",
    "partitioner_from_config",
    "register_partitioner",
]

PARTITIONERS: Mapping[str, type[Partitioner]] = KindView(lambda cls: issubclass(cls, Partitioner))
"""The registered partitioner classes by ``kind`` (a live view of the one registry,
:data:`fractalkit.registry.REGISTRY`)."""


def register_partitioner(cls: type[Partitioner]) -> type[Partitioner]:
    """Class decorator (the older spelling of :func:`fractalkit.config.register` for
    partitioners): register ``cls`` under the ``kind`` its class body sets.

    ``@register("my_kind")`` is the one style for every component; this alias keeps existing
    plug-ins working. Registering the same class twice is harmless (a module imported again);
    another class under a taken ``kind`` is refused.

    Args:
        cls: a concrete :class:`Partitioner` subclass with a non-empty string ``kind``.

    Returns:
        ``cls`` unchanged.

    Raises:
        TypeError: ``cls`` is not a Partitioner subclass.
        ValueError: ``kind`` is missing or empty, or already registered to another class.

    Example:
        >>> @register_partitioner
        ... class Halves(SequenceChunks):
        ...     kind = "halves_doc_example"
        >>> PARTITIONERS["halves_doc_example"] is Halves
        True
    """
    if not (isinstance(cls, type) and issubclass(cls, Partitioner)):
        raise TypeError(f"register_partitioner: expected a Partitioner subclass, got {cls!r}")
    kind = getattr(cls, "kind", None)
    if not isinstance(kind, str) or not kind:
        raise ValueError(
            f"register_partitioner: {cls.__name__} needs a non-empty string class attribute "
            f"'kind' (the key its config() saves), got {kind!r}"
        )
    return register(cls)


def partitioner_from_config(config: Mapping[str, Any]) -> Partitioner:
    """Rebuild a partitioner from its ``config()``.

    Args:
        config: A mapping with ``"kind"`` (a registered partitioner kind) and the constructor
            arguments of that class, as returned by ``Partitioner.config()``.

    Returns:
        A new partitioner equal to the one that produced ``config``.

    Raises:
        ValueError: if ``"kind"`` is missing or unknown, or the arguments do not fit the class.
    """
    if not isinstance(config, Mapping) or "kind" not in config:
        raise ValueError(f"partitioner_from_config: config needs a 'kind' key, got {config!r}")
    cls = lookup(config["kind"], "partitioner_from_config")
    if not issubclass(cls, Partitioner):
        raise ValueError(
            f"partitioner_from_config: kind {config['kind']!r} is a {cls.__name__}, not a partitioner"
        )
    return cls.from_dict(config)
