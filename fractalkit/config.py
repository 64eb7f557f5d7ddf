"""Configuration dataclasses and their registry: how a level or leaf is described and rebuilt.

A component's config is a frozen dataclass with a ``kind`` and a ``build`` method. Configs
serialise to plain JSON dicts (``to_dict``) and back (``config_from_dict``); a plug-in level or
leaf joins by decorating its config with :func:`register_config`.
"""

from __future__ import annotations

import dataclasses
from typing import Any, ClassVar

CONFIG_REGISTRY: dict[str, type[ComponentConfig]] = {}


def register_config(cls: type[ComponentConfig]) -> type[ComponentConfig]:
    """Class decorator: make ``cls`` loadable from a dict whose ``"kind"`` is ``cls.kind``."""
    if cls.kind in CONFIG_REGISTRY and CONFIG_REGISTRY[cls.kind] is not cls:
        raise ValueError(f"register_config: kind {cls.kind!r} is already registered")
    CONFIG_REGISTRY[cls.kind] = cls
    return cls


@dataclasses.dataclass(frozen=True)
class ComponentConfig:
    """Base of level and leaf configs.

    Subclasses set ``kind`` and define their fields; ``to_dict`` and :func:`config_from_dict`
    round-trip them exactly.
    """

    kind: ClassVar[str] = ""

    def to_dict(self) -> dict[str, Any]:
        """A JSON-serialisable dict with ``"kind"`` plus every field (nested configs as dicts)."""
        out: dict[str, Any] = {"kind": self.kind}
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            if isinstance(value, ComponentConfig):
                value = value.to_dict()
            elif isinstance(value, tuple):
                value = list(value)
            out[f.name] = value
        return out


def config_from_dict(data: dict[str, Any]) -> ComponentConfig:
    """Rebuild a config from :meth:`ComponentConfig.to_dict` output.

    Raises:
        ValueError: unknown ``kind`` or unknown field names (nothing is silently dropped).
    """
    if not isinstance(data, dict) or "kind" not in data:
        raise ValueError(f"config: expected a dict with a 'kind' entry, got {data!r}")
    kind = data["kind"]
    if kind not in CONFIG_REGISTRY:
        raise ValueError(
            f"config: unknown kind {kind!r}; registered kinds are {sorted(CONFIG_REGISTRY)}"
        )
    cls = CONFIG_REGISTRY[kind]
    fields = {f.name: f for f in dataclasses.fields(cls)}
    unknown = sorted(set(data) - set(fields) - {"kind"})
    if unknown:
        raise ValueError(f"config: unknown field(s) {unknown} for kind {kind!r}")
    values = {}
    for name, value in data.items():
        if name == "kind":
            continue
        if isinstance(value, dict) and "kind" in value:
            value = config_from_dict(value)
        elif isinstance(value, list):
            value = tuple(value)
        values[name] = value
    return cls(**values)
