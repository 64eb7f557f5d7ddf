"""Partitioners: how an instance becomes k children and back (pure tensor code, no parameters).

Shape letters: N batch, k children per instance, ``*event_shape`` one instance,
``*child_shape`` one child.

``split(x)``: ``[N, *event_shape] -> [N, k, *child_shape]``; ``merge`` is its exact inverse.
``PARTITIONERS`` maps each ``kind`` to its class; a plug-in partitioner joins it with the
:func:`register_partitioner` decorator, and ``partitioner_from_config`` rebuilds any registered
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

PARTITIONERS: dict[str, type[Partitioner]] = {}
"""Registry of partitioner classes by their ``kind`` (the key in ``config()``)."""


def register_partitioner(cls: type[Partitioner]) -> type[Partitioner]:
    """Class decorator: make ``cls`` loadable from a config whose ``"kind"`` is ``cls.kind``.

    The same style as :func:`fractalkit.register_config` for level and leaf configs: decorate a
    :class:`Partitioner` subclass and ``partitioner_from_config``, ``Fractal.from_config`` and
    ``Fractal.load`` rebuild it by its ``kind``. Registering the same class twice is harmless
    (a module imported again); another class under a taken ``kind`` is refused.

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
    taken = PARTITIONERS.get(kind)
    if taken is not None and taken is not cls:
        raise ValueError(
            f"register_partitioner: kind {kind!r} is already registered to "
            f"{taken.__module__}.{taken.__qualname__}; give {cls.__name__} another kind"
        )
    PARTITIONERS[kind] = cls
    return cls


for _builtin in (ImagePatches, Channels, SequenceChunks, GraphSubsets):
    register_partitioner(_builtin)


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
