"""Component configs, their one registry and build context, and the model's description.

Every component a model is made of is described by a frozen, JSON-serialisable object
registered under a ``kind`` with the one decorator :func:`register` (levels, leaves and
conditioners by frozen-dataclass configs derived from :class:`ComponentConfig`; partitioners,
which are their own description, by their class). Every config builds its module from one
:class:`BuildContext` (``config.build(ctx)``). A whole model is a :class:`FractalConfig`: the
levels (``(partitioner, level config)`` pairs), the leaf config, the conditioner config and the
value normalisation; it is what ``Fractal.config`` returns and what files store
(:meth:`FractalConfig.to_dict`, :meth:`FractalConfig.from_dict`).

A plug-in level or leaf joins by deriving from :class:`LevelConfig` or :class:`LeafConfig` (the
contracts :class:`fractalkit.Fractal` checks) and decorating its config with ``@register("kind")``.
"""

from __future__ import annotations

import abc
import dataclasses
import inspect
import math
import warnings
from collections.abc import Mapping
from typing import Any, ClassVar

from fractalkit import legacy
from fractalkit.registry import (
    ENTRY_POINT_GROUP,
    REGISTRY,
    KindView,
    UnknownKindError,
    load_entry_points,
    lookup,
    register,
)

__all__ = [
    "CONFIG_REGISTRY",
    "ENTRY_POINT_GROUP",
    "FORMAT",
    "FORMAT_VERSION",
    "BuildContext",
    "ComponentConfig",
    "FractalConfig",
    "LeafConfig",
    "LevelConfig",
    "UnknownKindError",
    "build_component",
    "check_contract",
    "config_from_dict",
    "load_entry_points",
    "register",
    "register_config",
]

#: the ``"format"`` entry of a model's config dict
FORMAT = "fractalkit.Fractal"
#: the one version every model is written in (older versions load through
#: :func:`fractalkit.legacy.upgrade_config`)
FORMAT_VERSION = 4


def register_config(cls: type[ComponentConfig]) -> type[ComponentConfig]:
    """Class decorator (the older spelling of bare :func:`register`): register ``cls`` under
    the ``kind`` its class body sets."""
    return register(cls)


@dataclasses.dataclass(frozen=True)
class BuildContext:
    """Everything a component's ``build`` may need, handed to every ``config.build(ctx)``.

    Attributes:
        cond_dim: D of the condition the component reads (a conditioner: produces), per token.
        cond_tokens: T, condition tokens the component reads (a conditioner: produces).
        event_shape: shape of one instance the component models (a level: its partitioner's
            event shape; a leaf: the last level's child shape; a conditioner: the model's).
        partitioner: a level's partitioner (None for leaves and conditioners).
        child: a level's already built next generator down (None for leaves and conditioners).
        normalisation: a :class:`fractalkit.normalisation.ValueNormalisation` of one instance's
            values (a level's children's is ``normalisation.child(partitioner)``); None for
            conditioners.
    """

    cond_dim: int
    cond_tokens: int
    event_shape: tuple[int, ...] = ()
    partitioner: Any = None
    child: Any = None
    normalisation: Any = None


@dataclasses.dataclass(frozen=True)
class ComponentConfig:
    """Base of level, leaf and conditioner configs.

    Subclasses are frozen dataclasses registered with ``@register("kind")`` (which sets
    ``kind``); ``to_dict`` and :meth:`from_dict` (or :func:`config_from_dict`) round-trip them
    exactly.
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

    @classmethod
    def from_dict(cls, data: Mapping[str, Any], modules: Mapping[str, str] | None = None) -> Any:
        """This class's config from ``to_dict`` output (the ``"kind"`` entry is not checked).

        Raises:
            ValueError: unknown field names (nothing is silently dropped).
        """
        fields = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - fields - {"kind"})
        if unknown:
            raise ValueError(f"config: unknown field(s) {unknown} for kind {cls.kind!r}")
        values = {}
        for name, value in data.items():
            if name == "kind":
                continue
            if isinstance(value, dict) and "kind" in value:
                value = config_from_dict(value, modules=modules, where=f"{cls.kind}.{name}")
            elif isinstance(value, list):
                value = tuple(value)
            values[name] = value
        return cls(**values)


#: The registered configs (a live view of :data:`fractalkit.registry.REGISTRY`).
CONFIG_REGISTRY: Mapping[str, type[ComponentConfig]] = KindView(
    lambda cls: issubclass(cls, ComponentConfig)
)


class LevelConfig(ComponentConfig, abc.ABC):
    """The contract of a level's config: what :class:`fractalkit.Fractal` relies on.

    Subclasses are frozen dataclasses registered with ``@register("kind")``.

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
    def build(self, ctx: BuildContext) -> Any:
        """The level (a :class:`fractalkit.Level`) over ``ctx.partitioner``'s children,
        delegating each to ``ctx.child``, reading ``[N, ctx.cond_tokens, ctx.cond_dim]``
        conditions, with ``ctx.normalisation`` for its instance values."""


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
    def build(self, ctx: BuildContext) -> Any:
        """The leaf (a :class:`fractalkit.Leaf`) for instances of ``ctx.event_shape`` under
        ``[N, ctx.cond_tokens, ctx.cond_dim]`` conditions."""


def vars_of(cls: type, name: str) -> Any:
    """``name`` as defined on ``cls`` or a base class (None if nowhere), without instances."""
    for klass in cls.__mro__:
        if name in vars(klass):
            return vars(klass)[name]
    return None


def _takes_context(build: Any) -> bool:
    """Whether a bound ``build`` takes one argument (the :class:`BuildContext`)."""
    try:
        params = list(inspect.signature(build).parameters.values())
    except (TypeError, ValueError):  # builtins and the like: assume today's signature
        return True
    positional = [p for p in params if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)]
    required_kw = [p for p in params if p.kind == p.KEYWORD_ONLY and p.default is p.empty]
    return len(positional) >= 1 and not required_kw and all(
        p.default is not p.empty for p in positional[1:]
    )


def build_component(config: Any, ctx: BuildContext, role: str) -> Any:
    """``config.build(ctx)``, also accepting plug-in configs written for the older signatures.

    Before the one build context, levels were built with ``build(partitioner, child, *,
    cond_dim, cond_tokens, normalisation)``, leaves with ``build(event_shape, cond_dim,
    cond_tokens)`` and conditioners with ``build(width, tokens)``; configs that still define
    those are called that way, with a DeprecationWarning.

    Args:
        config: a level, leaf or conditioner config.
        ctx: the build context.
        role: ``"level"``, ``"leaf"`` or ``"conditioner"``.
    """
    build = config.build
    if _takes_context(build):
        return build(ctx)
    warnings.warn(
        f"{type(config).__name__}.build uses the signature of fractalkit before the one build "
        "context; define build(self, ctx: fractalkit.config.BuildContext) instead",
        DeprecationWarning,
        stacklevel=3,
    )
    if role == "level":
        return build(
            ctx.partitioner, ctx.child, cond_dim=ctx.cond_dim, cond_tokens=ctx.cond_tokens,
            normalisation=ctx.normalisation,
        )
    if role == "leaf":
        return build(tuple(ctx.event_shape), ctx.cond_dim, ctx.cond_tokens)
    return build(ctx.cond_dim, ctx.cond_tokens)


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


def config_from_dict(
    data: dict[str, Any], *, modules: Mapping[str, str] | None = None, where: str = "config"
) -> Any:
    """Rebuild a registered component (a config, or a partitioner) from its saved dict.

    Args:
        data: ``to_dict()`` output (a partitioner's ``config()``), with a ``"kind"`` entry.
        modules: the saved ``kind -> module`` record of plug-in kinds (for the error message).
        where: how the caller names the entry, for messages.

    Raises:
        ValueError: no ``kind``, unknown field names (nothing is silently dropped);
            :class:`UnknownKindError` (a ValueError) for a kind nothing registered, naming the
            module the file says it comes from.
    """
    if not isinstance(data, Mapping) or "kind" not in data:
        raise ValueError(f"{where}: expected a dict with a 'kind' entry, got {data!r}")
    cls = lookup(data["kind"], where, modules)
    return cls.from_dict(data, modules) if issubclass(cls, ComponentConfig) else cls.from_dict(data)


def _component_dict(component: Any, where: str) -> dict[str, Any]:
    """``component``'s saved dict, refusing a subclass that inherited a registered kind (it
    would load back as its parent, silently without its behaviour)."""
    registered = REGISTRY.get(component.kind)
    if registered is not None and registered is not type(component):
        raise ValueError(
            f"FractalConfig: {where} is a {type(component).__qualname__}, which inherits the kind "
            f"{component.kind!r} of {registered.__qualname__}: a file would rebuild a "
            f"{registered.__qualname__}. Register the subclass under its own kind "
            f"(@fractalkit.config.register('my_kind'))"
        )
    return component.to_dict() if hasattr(component, "to_dict") else component.config()


def _plain(value: Any, name: str) -> float | tuple[float, ...]:
    """A normalisation constant as a float or a tuple of floats (what files hold)."""
    try:
        if hasattr(value, "__len__") or hasattr(value, "__iter__"):
            if getattr(value, "ndim", 1) == 0:
                return float(value)
            return tuple(float(v) for v in value)
        return float(value)
    except (TypeError, ValueError) as err:
        raise ValueError(f"FractalConfig: {name} must be a number or a list of numbers, got {value!r}") from err


@dataclasses.dataclass(frozen=True)
class FractalConfig:
    """The one description of a fractal model: what ``Fractal.config`` returns and files store.

    Frozen and comparable; :meth:`to_dict` gives the JSON a file stores and :meth:`from_dict`
    reads it back (any older format version too, through :func:`fractalkit.legacy.upgrade_config`);
    the two round-trip exactly.

    Attributes:
        levels: ``(partitioner, level config)`` pairs, top first.
        leaf: the leaf's config.
        conditioner: what the model is conditioned on (a conditioner config); None means
            unconditional (stored as the registered ``"unconditional"`` config).
        value_mean, value_std: the value normalisation, ``(v / (V - 1) - mean) / std``: a
            number or one per entry of the data's leading axis (stored as floats).
    """

    levels: tuple[tuple[Any, LevelConfig], ...]
    leaf: LeafConfig
    conditioner: ComponentConfig | None = None
    value_mean: float | tuple[float, ...] = 0.5
    value_std: float | tuple[float, ...] = 0.5

    def __post_init__(self) -> None:
        levels = self.levels
        if not isinstance(levels, list | tuple) or not levels:
            raise ValueError("FractalConfig: levels must hold at least one (partitioner, config) pair")
        pairs = []
        for i, pair in enumerate(levels):
            if not (isinstance(pair, tuple | list) and len(pair) == 2):
                raise TypeError(f"Fractal: levels[{i}] must be a (partitioner, config) pair")
            pairs.append((pair[0], pair[1]))
        object.__setattr__(self, "levels", tuple(pairs))
        if self.conditioner is None:
            # looked up by kind: the conditioners sit above this module
            object.__setattr__(self, "conditioner", lookup("unconditional", "FractalConfig")())
        object.__setattr__(self, "value_mean", _plain(self.value_mean, "value_mean"))
        object.__setattr__(self, "value_std", _plain(self.value_std, "value_std"))

    def components(self) -> list[tuple[str, Any]]:
        """``(where, component)`` for every partitioner and config, top first (nested configs
        such as a level's guide leaf included)."""
        out: list[tuple[str, Any]] = []

        def walk(where: str, config: Any) -> None:
            out.append((where, config))
            if dataclasses.is_dataclass(config):
                for f in dataclasses.fields(config):
                    value = getattr(config, f.name)
                    if isinstance(value, ComponentConfig):
                        walk(f"{where}.{f.name}", value)

        for i, (part, cfg) in enumerate(self.levels):
            walk(f"levels[{i}].partitioner", part)
            walk(f"levels[{i}].level", cfg)
        walk("leaf", self.leaf)
        walk("conditioner", self.conditioner)
        return out

    def plugins(self) -> dict[str, str]:
        """``kind -> module`` for the components whose classes live outside fractalkit."""
        out = {}
        for _, component in self.components():
            module = type(component).__module__
            if not (module == "fractalkit" or module.startswith("fractalkit.")):
                out[component.kind] = module
        return dict(sorted(out.items()))

    def to_dict(self) -> dict[str, Any]:
        """The JSON-serialisable dict a file stores (format version :data:`FORMAT_VERSION`).

        ``{"format", "version", "levels": [{"partitioner", "level"}], "leaf", "conditioner",
        "value_mean", "value_std", "plugins"}``; ``plugins`` maps each kind defined outside
        fractalkit to its module, so that loading without it names what to import.

        Raises:
            ValueError: a component is a subclass that inherited a registered kind (it would
                load back as its parent).
        """

        def plain(v: float | tuple[float, ...]) -> float | list[float]:
            return list(v) if isinstance(v, tuple) else v

        for where, component in self.components():
            _component_dict(component, where)  # refuses inherited kinds before anything is written
        return {
            "format": FORMAT,
            "version": FORMAT_VERSION,
            "levels": [
                {"partitioner": _component_dict(p, f"levels[{i}].partitioner"),
                 "level": _component_dict(c, f"levels[{i}].level")}
                for i, (p, c) in enumerate(self.levels)
            ],
            "leaf": _component_dict(self.leaf, "leaf"),
            "conditioner": _component_dict(self.conditioner, "conditioner"),
            "value_mean": plain(self.value_mean),
            "value_std": plain(self.value_std),
            "plugins": self.plugins(),
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> FractalConfig:
        """Read a model config dict: :meth:`to_dict` output, or any older format version
        (1, 2, 3), converted by :func:`fractalkit.legacy.upgrade_config`.

        Raises:
            ValueError: not a fractalkit config, an unreadable version, missing or unknown keys,
                unknown fields; :class:`UnknownKindError` for a kind nothing registered (the
                message names the module the dict says it comes from).
        """
        if isinstance(data, FractalConfig):
            return data
        if not isinstance(data, Mapping) or data.get("format") != FORMAT:
            raise ValueError(
                f"Fractal.from_config: expected a dict with format {FORMAT!r}, got "
                f"{data.get('format') if isinstance(data, Mapping) else type(data)}"
            )
        data = legacy.upgrade_config(dict(data))  # older versions, through the one conversion
        if data.get("version") != FORMAT_VERSION:
            raise ValueError(
                f"Fractal.from_config: config version {data.get('version')} is not supported "
                f"(this fractalkit reads versions {list(legacy.READABLE_VERSIONS)})"
            )
        keys = {"format", "version", "levels", "leaf", "conditioner", "value_mean", "value_std", "plugins"}
        unknown, missing = sorted(set(data) - keys), sorted(keys - set(data))
        if missing:
            names = ", ".join(repr(k) for k in missing)
            raise ValueError(
                f"Fractal.from_config: a version-{data['version']} config lacks the required "
                f"key{'s' if len(missing) > 1 else ''} {names}"
            )
        if unknown:
            raise ValueError(
                f"Fractal.from_config: unknown keys {unknown} for a version-{data['version']} config"
            )
        modules = data["plugins"]
        if not isinstance(modules, Mapping) or not all(
            isinstance(k, str) and isinstance(v, str) for k, v in modules.items()
        ):
            raise ValueError(
                f"Fractal.from_config: 'plugins' must map kinds to module names, got {modules!r:.120}"
            )
        if not isinstance(data["levels"], list) or not data["levels"]:
            raise ValueError("Fractal.from_config: 'levels' must be a non-empty list")
        levels = []
        for i, entry in enumerate(data["levels"]):
            if not isinstance(entry, Mapping) or set(entry) != {"partitioner", "level"}:
                raise ValueError(
                    f"Fractal.from_config: levels[{i}] must be a dict with 'partitioner' and "
                    f"'level', got {entry!r:.120}"
                )
            levels.append((
                config_from_dict(entry["partitioner"], modules=modules, where=f"levels[{i}].partitioner"),
                config_from_dict(entry["level"], modules=modules, where=f"levels[{i}].level"),
            ))
        return cls(
            tuple(levels),
            config_from_dict(data["leaf"], modules=modules, where="leaf"),
            config_from_dict(data["conditioner"], modules=modules, where="conditioner"),
            value_mean=data["value_mean"],
            value_std=data["value_std"],
        )

    def __getitem__(self, key: str) -> Any:
        """Deprecated: ``model.config[key]`` of the dict ``Fractal.config`` used to return."""
        warnings.warn(
            "Fractal.config is a FractalConfig now: use its attributes (config.leaf, "
            "config.levels, ...) or config.to_dict()[key]",
            DeprecationWarning,
            stacklevel=2,
        )
        return self.to_dict()[key]

    @property
    def event_shape(self) -> tuple[int, ...]:
        """Shape of one instance: the top partitioner's event shape."""
        return tuple(self.levels[0][0].event_shape)

    @property
    def num_dims(self) -> int:
        """Elements per instance."""
        return math.prod(self.event_shape)
