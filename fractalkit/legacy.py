"""What older fractalkit versions wrote, read by today's code: the one load-time key map and the
one config upgrade.

Files written before a rename (parameters moved into a part, a conditioner that became a
submodule, a config field merged into another) keep loading because every load path passes their
state-dict keys through :func:`upgrade_state_dict` and their config dicts through
:func:`upgrade_config`; nothing else in the package knows old names. A rule is added here, never a
special case at a load site.

- :data:`LEGACY_KEY_RULES`: ``(pattern, replacement)`` pairs applied in order, each with
  :func:`re.sub` semantics on a full state-dict key (no prefix). A rule must not match a key
  today's code writes, so that upgrading is idempotent.
- :data:`CONFIG_UPGRADES`: functions ``dict -> dict`` applied in order to a model config dict
  (the JSON a file stores), each returning the dict unchanged when it does not apply.

The :class:`fractalkit.Fractal` registers :func:`state_dict_pre_hook`, so ``load_state_dict``
of an old dict works, and :func:`fractalkit.validation.checked_model_file` upgrades a file's
tensor names before comparing them with its config.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from typing import Any, TypeVar

__all__ = [
    "CONFIG_UPGRADES",
    "LEGACY_KEY_RULES",
    "state_dict_pre_hook",
    "upgrade_config",
    "upgrade_key",
    "upgrade_state_dict",
]

T = TypeVar("T")

#: ``(compiled pattern, replacement)``, applied in order to every key of an old state dict.
LEGACY_KEY_RULES: list[tuple[re.Pattern[str], str]] = []

#: ``config dict -> config dict`` conversions of older model configs, applied in order.
CONFIG_UPGRADES: list[Callable[[dict[str, Any]], dict[str, Any]]] = []


def upgrade_key(key: str) -> str:
    """A state-dict key as today's code names it (unchanged when no rule applies).

    Args:
        key: a full key relative to the model, e.g. ``"root.patch_emb.proj.weight"``.
    """
    for pattern, replacement in LEGACY_KEY_RULES:
        key = pattern.sub(replacement, key)
    return key


def upgrade_state_dict(state: Mapping[str, T], prefix: str = "") -> dict[str, T]:
    """``state`` with every key under ``prefix`` renamed by :func:`upgrade_key`.

    Args:
        state: name -> tensor (or shape, or anything keyed by parameter name).
        prefix: only keys starting with it are renamed, the prefix kept (e.g. ``"module."``).

    Raises:
        ValueError: two keys would get the same name (an old and a new spelling of one
            parameter in the same dict).
    """
    out: dict[str, T] = {}
    for key, value in state.items():
        new = prefix + upgrade_key(key[len(prefix):]) if key.startswith(prefix) else key
        if new in out:
            raise ValueError(
                f"state dict: {key!r} and another entry both name the parameter {new!r} "
                "(an old and a new spelling of one parameter?)"
            )
        out[new] = value
    return out


def upgrade_config(config: dict[str, Any]) -> dict[str, Any]:
    """A model config dict as today's code reads it (every upgrade in :data:`CONFIG_UPGRADES`).

    Args:
        config: the JSON dict a file stores (not modified).
    """
    for upgrade in CONFIG_UPGRADES:
        config = upgrade(config)
    return config


def state_dict_pre_hook(module: Any, state_dict: dict, prefix: str, *args: Any) -> None:
    """``nn.Module`` load-state-dict pre-hook: rename old keys under ``prefix`` in place."""
    if not LEGACY_KEY_RULES:
        return
    upgraded = upgrade_state_dict(state_dict, prefix)
    if list(upgraded) != list(state_dict):
        state_dict.clear()
        state_dict.update(upgraded)
