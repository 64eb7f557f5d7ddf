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
- :data:`LEGACY_STATE_RULES`: functions ``state dict -> state dict`` for renames that need
  several keys at once, applied after the key rules.

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
    "READABLE_VERSIONS",
    "state_dict_pre_hook",
    "upgrade_config",
    "upgrade_key",
    "upgrade_optimizer_state",
    "upgrade_state_dict",
]

T = TypeVar("T")

#: ``(compiled pattern, replacement)``, applied in order to every key of an old state dict.
LEGACY_KEY_RULES: list[tuple[re.Pattern[str], str]] = [
    # Before issue 20 a class-label or unconditional model adopted its conditioner's parameters
    # at the top level; the conditioner is an ordinary submodule now.
    (re.compile(r"^null_embedding$"), "conditioner.null_embedding"),
    (re.compile(r"^class_embedding\."), "conditioner.class_embedding."),
]

#: the model-config versions this fractalkit reads (the last one is the one it writes)
READABLE_VERSIONS = (1, 2, 3, 4)


def _to_version_4(config: dict[str, Any]) -> dict[str, Any]:
    """Versions 1-3 -> 4, the one version written for every model since issue 20.

    1 (fractalkit 0.1) and 2 (adds ``guide_input`` to MAR levels, defaulted when absent) say
    what they are conditioned on by ``num_classes`` and ``label_drop``: a class-label
    conditioner for K > 0, none otherwise (whose ``label_drop`` nothing read). 3 holds a
    ``conditioner`` entry already. Version 4 adds ``plugins`` (kind -> module of kinds
    defined outside fractalkit; older files recorded none). Version 4 also names MAR levels'
    summary prefix and linked neighbours anew; :func:`_mar_summary` and
    :func:`_mar_linked_neighbours`, the next steps of :data:`CONFIG_UPGRADES`, convert those
    fields (of any version: they key on the old field names).
    """
    if config.get("version") not in (1, 2, 3):
        return config
    out = {k: v for k, v in config.items() if k not in ("num_classes", "label_drop")}
    if config["version"] < 3:
        for key in ("num_classes", "label_drop"):
            if key not in config:
                raise ValueError(
                    f"Fractal.from_config: a version-{config['version']} config lacks the "
                    f"required key {key!r}"
                )
        k = config["num_classes"]
        if not isinstance(k, int) or isinstance(k, bool) or k < 0:
            raise ValueError(f"Fractal.from_config: num_classes must be an integer >= 0, got {k!r}")
        out["conditioner"] = (
            {"kind": "class_label", "num_classes": k, "drop": float(config["label_drop"])}
            if k else {"kind": "unconditional"}
        )
    elif "num_classes" in config or "label_drop" in config:
        raise ValueError(
            "Fractal.from_config: unknown keys ['label_drop', 'num_classes'] for a version-3 config"
        )
    out["version"] = 4
    out.setdefault("plugins", {})
    return out


# ---- issue 20, level parts ----------------------------------------------------------------------
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


#: ``config dict -> config dict`` conversions of older model configs, applied in order: one
#: chain to version 4. The version number is set by the first step; the MAR steps look at the
#: old field names instead, so a config of any version (a version-4 one written before the
#: level parts too) with ``guiding_pixel``/``guide``/``guide_input`` or ``graph_neighbours``
#: loads.
CONFIG_UPGRADES: list[Callable[[dict[str, Any]], dict[str, Any]]] = [
    _to_version_4,
    _mar_summary,
    _mar_linked_neighbours,
]


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
    for rule in LEGACY_STATE_RULES:  # renames a key alone cannot decide
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


def _old_parameter_order(names: list[str], version: int) -> list[str]:
    """Today's parameter names in the order a model written as config ``version`` enumerated
    them (``model.named_parameters()``), or ``names`` when the order has not changed.

    Before version 4 a class-label or unconditional model (config versions 1 and 2) held its
    ``null_embedding`` as its own first parameter and its ``class_embedding`` as a submodule
    registered after the levels; today they sit in the ``conditioner`` submodule, after the
    levels.
    """
    if version not in (1, 2):
        return names
    null, labels = "conditioner.null_embedding", "conditioner.class_embedding.weight"
    rest = [n for n in names if n not in (null, labels)]
    return ([null] if null in names else []) + rest + ([labels] if labels in names else [])


def upgrade_optimizer_state(
    state: dict[str, Any] | None, names: list[str], version: Any
) -> dict[str, Any] | None:
    """An optimizer ``state_dict`` saved with a model of config ``version``, renumbered for
    today's parameter order ``names`` (``[n for n, _ in model.named_parameters()]``).

    A ``torch.optim`` state dict refers to parameters by their position. It is renumbered when
    it has one parameter group holding every parameter (``Optimizer(model.parameters())``),
    where positions are the model's order; with several groups the members of each are unknown
    and it is returned unchanged (an optimizer built from groups then resumes with moments of
    the class-label and null embeddings out of place).

    Args:
        state: the optimizer's ``state_dict`` (not modified), or None.
        names: today's parameter names, in ``model.named_parameters()`` order.
        version: the config version of the checkpoint's manifest.
    """
    old = _old_parameter_order(list(names), version)
    if state is None or old == list(names):
        return state
    groups = state.get("param_groups") or []
    if len(groups) != 1 or len(groups[0].get("params", ())) != len(names):
        return state
    ids = groups[0]["params"]
    position = {name: i for i, name in enumerate(old)}
    moved = {}
    for j, name in enumerate(names):
        old_id = ids[position[name]]
        if old_id in state["state"]:
            moved[ids[j]] = state["state"][old_id]
    return {**state, "state": moved}


def state_dict_pre_hook(module: Any, state_dict: dict, prefix: str, *args: Any) -> None:
    """``nn.Module`` load-state-dict pre-hook: rename old keys under ``prefix`` in place."""
    if not LEGACY_KEY_RULES:
        return
    upgraded = upgrade_state_dict(state_dict, prefix)
    if list(upgraded) != list(state_dict):
        state_dict.clear()
        state_dict.update(upgraded)
