"""Configuration dataclasses and their registry: how a level or leaf is described and rebuilt.

A component's config is a frozen dataclass with a ``kind`` and a ``build`` method. Configs
serialise to plain JSON dicts (``to_dict``) and back (``config_from_dict``); a plug-in level or
leaf joins by deriving from :class:`LevelConfig` or :class:`LeafConfig` (the contracts
:class:`fractalkit.Fractal` checks) and decorating its config with :func:`register_config`.
"""

from __future__ import annotations

import abc
import dataclasses
from typing import TYPE_CHECKING, Any, ClassVar

if TYPE_CHECKING:  # only for annotations: the levels and leaves import this module
    from fractalkit.leaves.base import Leaf
    from fractalkit.levels.base import Level
    from fractalkit.normalisation import ValueNormalisation
    from fractalkit.partition import Partitioner
    from fractalkit.protocol import AbstractGenerator

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


class LevelConfig(ComponentConfig, abc.ABC):
    """The contract of a level's config: what :class:`fractalkit.Fractal` relies on.

    Subclasses are frozen dataclasses with a unique ``kind``, decorated with
    :func:`register_config`.

    Attributes:
        width: D, the width of the conditions this level hands its children (a dataclass field
            or a property).

    Whether the level's likelihood depends on an order of its children is the built level's
    :attr:`fractalkit.Level.uses_orders`.
    """

    width: ClassVar[int]

    @property
    @abc.abstractmethod
    def out_tokens(self) -> int:
        """Condition tokens the level hands each child."""

    @abc.abstractmethod
    def build(
        self,
        partitioner: Partitioner,
        child: AbstractGenerator,
        *,
        cond_dim: int,
        cond_tokens: int,
        normalisation: ValueNormalisation,
    ) -> Level:
        """The level over ``partitioner``'s children, delegating each to ``child``.

        Args:
            partitioner: how an instance becomes children.
            child: the already built next generator down.
            cond_dim: D_in of the condition this level receives.
            cond_tokens: T of the condition this level receives.
            normalisation: how this level's instance values become floats (its children's is
                ``normalisation.child(partitioner)``).
        """


class LeafConfig(ComponentConfig, abc.ABC):
    """The contract of a leaf's config: what :class:`fractalkit.Fractal` relies on.

    A :class:`ComponentConfig` dataclass with a ``num_values`` field and a ``build`` method
    also counts as one (``isinstance`` says so): leaf configs written before this contract
    existed keep working.

    Attributes:
        num_values: V, values per element (a dataclass field).
    """

    num_values: ClassVar[int]

    @classmethod
    def __subclasshook__(cls, sub: type) -> bool:
        if cls is not LeafConfig or not issubclass(sub, ComponentConfig):
            return NotImplemented
        fields = {f.name for f in dataclasses.fields(sub)} if dataclasses.is_dataclass(sub) else set()
        return ("num_values" in fields and callable(vars_of(sub, "build"))) or NotImplemented

    @abc.abstractmethod
    def build(self, event_shape: tuple[int, ...], cond_dim: int, cond_tokens: int) -> Leaf:
        """The leaf for instances of ``event_shape`` under ``[*, cond_tokens, cond_dim]`` conditions."""


def vars_of(cls: type, name: str) -> Any:
    """``name`` as defined on ``cls`` or a base class (None if nowhere), without instances."""
    for klass in cls.__mro__:
        if name in vars(klass):
            return vars(klass)[name]
    return None


def check_contract(config: object, contract: type[ComponentConfig], where: str) -> None:
    """Raise a TypeError naming what ``config`` lacks to be a ``contract`` (a level or leaf config).

    Args:
        config: the object given.
        contract: :class:`LevelConfig` or :class:`LeafConfig`.
        where: how the caller names the argument, e.g. ``"levels[1][1]"``.
    """
    if isinstance(config, contract):
        return
    required = ["kind", "to_dict", "build"] + (
        ["width", "out_tokens"] if contract is LevelConfig else ["num_values"]
    )
    missing = [name for name in required if name not in dir(config)]
    detail = f"; it lacks {missing}" if missing else ""
    raise TypeError(
        f"Fractal: {where} must be a {contract.__name__} (derive your config from "
        f"fractalkit.{contract.__name__}), got {type(config).__name__}{detail}"
    )


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
