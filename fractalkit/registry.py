"""The one registry of component kinds: levels, leaves, conditioners and partitioners alike.

Every component a saved model names (a level, leaf or conditioner config, a partitioner) is a
class registered under a ``kind`` string with the one decorator :func:`register`::

    @register("my_level")
    @dataclasses.dataclass(frozen=True)
    class MyLevelConfig(LevelConfig): ...

A saved model stores each component as ``{"kind": ..., **fields}`` and, for kinds defined outside
fractalkit, the module the class comes from (:func:`plugin_modules`), so that loading a file
whose plug-in is not imported fails with an error naming that module (:func:`lookup`).
Installed plug-in packages may declare their modules under the entry-point group
``fractalkit.components``; :func:`load_entry_points` imports them. Importing a module runs its
code, so this never happens by itself: it is an explicit call (or
``Fractal.load(path, import_plugins=True)``).

This module sits at the bottom of the package (it imports nothing of fractalkit), so every layer
may register into it.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping
from typing import Any, TypeVar

__all__ = [
    "ENTRY_POINT_GROUP",
    "REGISTRY",
    "KindView",
    "UnknownKindError",
    "load_entry_points",
    "lookup",
    "plugin_modules",
    "register",
]

C = TypeVar("C", bound=type)

#: The entry-point group installed plug-in packages declare their component modules under.
ENTRY_POINT_GROUP = "fractalkit.components"

#: kind -> class, for every registered component (configs and partitioners share one namespace).
REGISTRY: dict[str, type] = {}


class UnknownKindError(ValueError):
    """A saved model names a component kind that no imported module registered."""


def _register(cls: C, kind: str) -> C:
    if not isinstance(cls, type):
        raise TypeError(f"register: expected a class, got {cls!r}")
    if not isinstance(kind, str) or not kind:
        raise ValueError(
            f"register: {cls.__name__} needs a non-empty string kind (the key its saved dict "
            f"holds), got {kind!r}"
        )
    taken = REGISTRY.get(kind)
    # The same class registered again (a module imported twice) is harmless.
    if taken is not None and taken is not cls:
        raise ValueError(
            f"register: kind {kind!r} is already registered to {_qualname(taken)}; give "
            f"{cls.__name__} another kind"
        )
    cls.kind = kind  # type: ignore[attr-defined]  # a class attribute, never a dataclass field
    REGISTRY[kind] = cls
    return cls


def _qualname(cls: type) -> str:
    return f"{cls.__module__}.{cls.__qualname__}"


def register(kind: str | type | None = None) -> Any:
    """Class decorator: make a component loadable from a saved dict whose ``"kind"`` is ``kind``.

    The one registration style for every component: level, leaf and conditioner configs and
    partitioners. ``@register("name")`` sets the class attribute ``kind`` and registers the
    class; bare ``@register`` registers under the ``kind`` the class already defines (the older
    spelling ``kind = "name"`` in the class body). Registering the same class twice is harmless;
    another class under a taken kind is refused.

    Args:
        kind: the kind (a non-empty string); or, used bare, the class itself.

    Returns:
        The decorator (or, used bare, the class unchanged).

    Raises:
        ValueError: an empty or missing kind, or a kind already taken by another class.

    Example:
        >>> import dataclasses
        >>> from fractalkit.config import ComponentConfig
        >>> @register("doc_example_thing")
        ... @dataclasses.dataclass(frozen=True)
        ... class Thing(ComponentConfig):
        ...     size: int = 1
        >>> Thing.kind, REGISTRY["doc_example_thing"] is Thing
        ('doc_example_thing', True)
    """
    if isinstance(kind, type):  # bare @register
        return _register(kind, getattr(kind, "kind", None))

    def decorate(cls: C) -> C:
        return _register(cls, kind if kind is not None else getattr(cls, "kind", None))

    return decorate


class KindView(Mapping[str, type]):
    """A live, read-only view of :data:`REGISTRY` restricted to classes that pass ``accepts``
    (e.g. the partitioners, or the configs): what ``PARTITIONERS`` and ``CONFIG_REGISTRY`` are.

    Args:
        accepts: class -> whether it belongs to the view.
    """

    def __init__(self, accepts: Callable[[type], bool]) -> None:
        self._accepts = accepts

    def __getitem__(self, kind: str) -> type:
        cls = REGISTRY[kind]
        if not self._accepts(cls):
            raise KeyError(kind)
        return cls

    def __delitem__(self, kind: str) -> None:
        """Unregister ``kind`` (tests that register throw-away components clean up this way)."""
        self[kind]  # KeyError unless registered here
        del REGISTRY[kind]

    def __iter__(self) -> Iterator[str]:
        return iter([k for k, cls in REGISTRY.items() if self._accepts(cls)])

    def __len__(self) -> int:
        return sum(1 for cls in REGISTRY.values() if self._accepts(cls))

    def __repr__(self) -> str:
        return f"KindView({sorted(self)})"


def plugin_modules(kinds: list[str] | set[str] | tuple[str, ...]) -> dict[str, str]:
    """``kind -> module`` for the given kinds whose classes live outside fractalkit.

    What a saved model records so that loading it without the plug-in can name the module.
    """
    out = {}
    for kind in sorted(set(kinds)):
        cls = REGISTRY.get(kind)
        if cls is not None and not (cls.__module__ == "fractalkit" or cls.__module__.startswith("fractalkit.")):
            out[kind] = cls.__module__
    return out


def lookup(kind: Any, where: str, modules: Mapping[str, str] | None = None) -> type:
    """The class registered under ``kind``.

    Args:
        kind: the saved ``"kind"``.
        where: how the caller names the entry, for the message (e.g. ``"levels[1].level"``).
        modules: the saved ``kind -> module`` record of plug-in kinds, if any.

    Raises:
        UnknownKindError: nothing registered ``kind``; the message names the module the file
            says it comes from and how to import it.
    """
    if isinstance(kind, str) and kind in REGISTRY:
        return REGISTRY[kind]
    module = (modules or {}).get(kind) if isinstance(kind, str) else None
    if module:
        hint = (
            f"the file says it comes from the module {module!r}: `import {module}` (which "
            f"registers it) before loading"
        )
    else:
        hint = "import the module that defines it (which registers it) before loading"
    raise UnknownKindError(
        f"{where}: unknown kind {kind!r}; {hint}. Plug-ins installed as packages can "
        f"be imported with fractalkit.config.load_entry_points() or Fractal.load(path, "
        f"import_plugins=True), which import every module declared under the entry-point group "
        f"{ENTRY_POINT_GROUP!r}; importing runs that code, so it never happens by itself: do it "
        f"only for packages you trust. Registered kinds: {sorted(REGISTRY)}"
    )


def load_entry_points(group: str = ENTRY_POINT_GROUP) -> list[str]:
    """Import every installed plug-in module declared under the entry-point group ``group``.

    A plug-in package declares, in its ``pyproject.toml``::

        [project.entry-points."fractalkit.components"]
        my_plugin = "my_plugin.components"

    and importing ``my_plugin.components`` registers its kinds. This runs the code of every
    installed package that declares such an entry point, so it is an explicit opt-in, never
    done when fractalkit is imported or a file is loaded.

    Args:
        group: the entry-point group (default ``"fractalkit.components"``).

    Returns:
        The names of the entry points loaded.

    Raises:
        ImportError: an entry point failed to import (the message names it).
    """
    from importlib.metadata import entry_points

    loaded = []
    for ep in entry_points(group=group):
        try:
            ep.load()
        except Exception as err:
            raise ImportError(
                f"load_entry_points: the plug-in entry point {ep.name!r} ({ep.value}) of group "
                f"{group!r} failed to import: {err}"
            ) from err
        loaded.append(ep.name)
    return loaded
