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

import copy
import re
from collections.abc import Callable, Mapping
from typing import Any, TypeVar

__all__ = [
    "CONFIG_UPGRADES",
    "LEGACY_KEY_RULES",
    "LEGACY_STATE_RULES",
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


# ---- issue 20, level parts (branch core) --------------------------------------------------------
# A level's input network became the part ``inputs`` (fractalkit.levels.inputs.ChildInputs) and
# its guiding pixel the part ``summary`` (fractalkit.levels.summary.SummaryPrefix). A level's keys
# are ``root`` followed by one ``.child`` per level above it.
_LEVEL = r"^(root(?:\.child)*)\."
LEGACY_KEY_RULES += [
    (re.compile(_LEVEL + r"(patch_emb|patch_emb_ln|cond_emb)\."), r"\1.inputs.\2."),
    (re.compile(_LEVEL + r"pix_proj\."), r"\1.summary.proj."),
    (re.compile(_LEVEL + r"guide\."), r"\1.summary.leaf."),
    # MAR's graph_neighbours became linked_neighbours, its layer the child-token strategy's.
    (re.compile(_LEVEL + r"graph_proj\."), r"\1.tokens.proj."),
]

#: The default ``guide`` of ``MARLevelConfig`` before issue 20 (the paper's guiding-pixel leaf),
#: for configs that set ``guiding_pixel`` without writing ``guide``.
_OLD_DEFAULT_GUIDE: dict[str, Any] = {
    "kind": "rgb", "width": 128, "depth": 3, "heads": 4, "num_values": 256,
    "channel_weights": [5.0, 1.0, 1.0],
}
_OLD_SUMMARY_FIELDS = ("guiding_pixel", "guide", "guide_input")


def _mar_summary(config: dict[str, Any]) -> dict[str, Any]:
    """MAR levels' ``guiding_pixel``, ``guide`` and ``guide_input`` as the one ``summary`` entry
    (a ``SummaryConfig`` dict, or None when ``guiding_pixel`` was false)."""
    levels = config.get("levels")
    if not isinstance(levels, list):
        return config

    def old(entry: Any) -> bool:
        level = entry.get("level") if isinstance(entry, dict) else None
        return isinstance(level, dict) and level.get("kind") == "mar" and any(
            k in level for k in _OLD_SUMMARY_FIELDS
        )

    if not any(old(entry) for entry in levels):
        return config
    config = copy.deepcopy(config)
    for entry in config["levels"]:
        if not old(entry):
            continue
        level = entry["level"]
        on = level.pop("guiding_pixel", False)
        leaf = level.pop("guide", None)
        mode = level.pop("guide_input", "rounded")
        level["summary"] = (
            {"kind": "summary", "leaf": leaf if leaf is not None else dict(_OLD_DEFAULT_GUIDE), "input": mode}
            if on
            else None
        )
    return config


def _mar_linked_neighbours(config: dict[str, Any]) -> dict[str, Any]:
    """MAR levels' ``graph_neighbours`` as ``linked_neighbours`` (the links now come from the
    partitioner, :meth:`fractalkit.Partitioner.links`; same model)."""
    levels = config.get("levels")
    if not isinstance(levels, list) or not any(
        isinstance(e, dict) and isinstance(e.get("level"), dict) and "graph_neighbours" in e["level"]
        for e in levels
    ):
        return config
    config = copy.deepcopy(config)
    for entry in config["levels"]:
        level = entry.get("level") if isinstance(entry, dict) else None
        if isinstance(level, dict) and level.get("kind") == "mar" and "graph_neighbours" in level:
            on = level.pop("graph_neighbours")
            if on:  # left out when false, as today's configs write it
                level["linked_neighbours"] = on
    return config


CONFIG_UPGRADES += [_mar_summary, _mar_linked_neighbours]


# A rename that a key alone cannot decide: the slot-kinds leaf became a wrapper
# (fractalkit.leaves.SlotKindsLeaf) around the leaf it restricts, so a slot-kinds leaf's own
# parameters (``<leaf>.norm.*``, ``<leaf>.head.*`` beside ``<leaf>.slot_embed.weight``) moved to
# ``<leaf>.leaf.*``; a plain categorical leaf keeps ``<leaf>.head.*``. Such rules see the whole
# dict (after LEGACY_KEY_RULES) and must leave today's dicts unchanged.
def _slot_kinds_wrapper(state: dict[str, T]) -> dict[str, T]:
    """Move the wrapped leaf's parameters of every old slot-kinds leaf under ``leaf.``."""
    owners = [k[: -len("slot_embed.weight")] for k in state if k.endswith("slot_embed.weight")]
    if not owners:
        return state
    out: dict[str, T] = {}
    for key, value in state.items():
        owner = next((o for o in owners if key.startswith(o)), None)
        rest = key[len(owner):] if owner is not None else ""
        if owner is not None and not rest.startswith(("slot_embed.", "leaf.")):
            key = f"{owner}leaf.{rest}"
        out[key] = value
    return out


#: ``state dict -> state dict`` conversions that need several keys at once, applied in order
#: after :data:`LEGACY_KEY_RULES` by :func:`upgrade_state_dict`.
LEGACY_STATE_RULES: list[Callable[[dict[str, Any]], dict[str, Any]]] = [_slot_kinds_wrapper]
# ---- end of issue 20, level parts ----------------------------------------------------------------


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
    for rule in LEGACY_STATE_RULES:  # issue 20 (branch core): renames a key alone cannot decide
        out = rule(out)
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
