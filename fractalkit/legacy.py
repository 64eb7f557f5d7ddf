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
    defined outside fractalkit; older files recorded none).
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


#: ``config dict -> config dict`` conversions of older model configs, applied in order.
CONFIG_UPGRADES: list[Callable[[dict[str, Any]], dict[str, Any]]] = [_to_version_4]


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
