"""Persistence of a :class:`fractalkit.Fractal`: its versioned JSON config, and safetensors files.

A model is described by a JSON-serialisable dict (:func:`model_config`): the format name, its
version, each level's partitioner and level config, the leaf config, what it is conditioned on
(the class count and label dropout, or a conditioner's config) and value normalisation. :func:`save` writes the weights as safetensors with that dict in
the file's metadata; :func:`load` rebuilds the model from it. The training checkpoints
(:mod:`fractalkit.training.checkpoint`) store their models through the same two functions.

Versions: 1 (fractalkit 0.1); 2 adds ``guide_input`` to MAR level configs; 3 replaces
``num_classes`` and ``label_drop`` by a ``conditioner`` entry (a registered
:class:`fractalkit.conditioners.ConditionerConfig`'s dict). Version-1 and -2 configs load
unchanged (new fields take their defaults). A model is written in the oldest version that
holds it: class-conditional and unconditional models still write version 2 (so files they
write stay readable by fractalkit versions before conditioners), models with any other
conditioner write version 3.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from fractalkit.conditioners import ClassLabel, Unconditional
from fractalkit.config import config_from_dict
from fractalkit.filemodes import apply_umask
from fractalkit.legacy import upgrade_config
from fractalkit.partition import partitioner_from_config
from fractalkit.validation import checked_model_file, nonfinite_tensors

if TYPE_CHECKING:
    from fractalkit.fractal import Fractal

FORMAT = "fractalkit.Fractal"
#: the newest version this fractalkit writes (for models with a non-class-label conditioner)
FORMAT_VERSION = 3
#: the version written for class-conditional and unconditional models
LABEL_FORMAT_VERSION = 2
#: versions this fractalkit reads
READABLE_VERSIONS = (1, 2, 3)
_COMMON_KEYS = {"format", "version", "levels", "leaf", "value_mean", "value_std"}
_KEYS = {
    1: _COMMON_KEYS | {"num_classes", "label_drop"},
    2: _COMMON_KEYS | {"num_classes", "label_drop"},
    3: _COMMON_KEYS | {"conditioner"},
}


def model_config(model: Fractal) -> dict[str, Any]:
    """The versioned, JSON-serialisable description of ``model`` (see :attr:`Fractal.config`)."""
    spec = model._spec

    def plain(v):
        return v if isinstance(v, int | float) else [float(t) for t in v]

    conditioner = spec["conditioner"]
    labels = isinstance(conditioner, ClassLabel | Unconditional)
    condition: dict[str, Any] = (
        {"num_classes": model.num_classes, "label_drop": spec["label_drop"]}
        if labels
        else {"conditioner": conditioner.to_dict()}
    )
    return {
        "format": FORMAT,
        "version": LABEL_FORMAT_VERSION if labels else FORMAT_VERSION,
        "levels": [{"partitioner": p.config(), "level": c.to_dict()} for p, c in spec["levels"]],
        "leaf": spec["leaf"].to_dict(),
        **condition,
        "value_mean": plain(spec["value_mean"]),
        "value_std": plain(spec["value_std"]),
    }


def model_from_config(cls: type[Fractal], config: dict[str, Any]) -> Fractal:
    """A freshly initialised ``cls`` from :func:`model_config` output (any readable version).

    Raises:
        ValueError: not a fractalkit config, an unreadable version, missing or unknown keys.
    """
    if not isinstance(config, dict) or config.get("format") != FORMAT:
        raise ValueError(
            f"Fractal.from_config: expected a dict with format {FORMAT!r}, got "
            f"{config.get('format') if isinstance(config, dict) else type(config)}"
        )
    config = upgrade_config(config)  # older spellings, through the one conversion
    if config.get("version") not in READABLE_VERSIONS:
        raise ValueError(
            f"Fractal.from_config: config version {config.get('version')} is not supported "
            f"(this fractalkit reads versions {list(READABLE_VERSIONS)})"
        )
    keys = _KEYS[config["version"]]
    unknown, missing = sorted(set(config) - keys), sorted(keys - set(config))
    if missing:
        names = ", ".join(repr(k) for k in missing)
        raise ValueError(
            f"Fractal.from_config: a version-{config['version']} config lacks the required "
            f"key{'s' if len(missing) > 1 else ''} {names}"
        )
    if unknown:
        raise ValueError(
            f"Fractal.from_config: unknown keys {unknown} for a version-{config['version']} config"
        )
    levels = [
        (partitioner_from_config(entry["partitioner"]), config_from_dict(entry["level"]))
        for entry in config["levels"]
    ]
    if config["version"] >= 3:
        condition: dict[str, Any] = {"conditioner": config_from_dict(config["conditioner"])}
    else:
        condition = {"num_classes": config["num_classes"], "label_drop": config["label_drop"]}
    return cls(
        levels,
        config_from_dict(config["leaf"]),
        value_mean=config["value_mean"],
        value_std=config["value_std"],
        **condition,
    )


def save(model: Fractal, path: str | os.PathLike) -> None:
    """Write weights (safetensors) with the JSON config in the file's metadata, atomically.

    Args:
        model: the model.
        path: file to write, conventionally ``*.safetensors``.
    """
    from safetensors.torch import save_file

    path = Path(path)
    tmp = path.with_name(path.name + ".tmp")
    state = {k: v.detach().contiguous() for k, v in model.state_dict().items()}
    save_file(state, str(tmp), metadata={"fractalkit_config": json.dumps(model_config(model))})
    apply_umask(tmp)  # safetensors writes 0600; teammates may need to read it
    os.replace(tmp, path)


def load(cls: type[Fractal], path: str | os.PathLike, *, device: str | torch.device = "cpu") -> Fractal:
    """Rebuild a model written by :func:`save`, in the saved precision, on ``device``.

    Raises:
        FileNotFoundError: no such file.
        ValueError: the file is not a fractalkit safetensors file, is truncated or corrupt,
            or its tensors do not match its config (each names the file).
    """
    from safetensors.torch import load_file

    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"Fractal.load: no file at {path}")
    # Names and shapes are checked on the meta device before anything is allocated.
    config = checked_model_file("Fractal.load", path, "fractalkit_config", cls.from_config)
    try:
        state = load_file(str(path), device=str(device))
    except Exception as err:  # safetensors raises its own error types for bad data
        raise ValueError(
            f"Fractal.load: {path} is not a readable safetensors file (truncated or corrupt?): {err}"
        ) from err
    bad = nonfinite_tensors(state.items())
    if bad:
        raise ValueError(
            f"Fractal.load: {path} holds NaN/inf values in {len(bad)} tensor(s), e.g. {bad[:3]} "
            "(saved from a diverged run?); load an earlier checkpoint"
        )
    model = cls.from_config(config)
    dtypes = {t.dtype for t in state.values() if t.is_floating_point()}
    if len(dtypes) == 1:  # keep the saved precision (load_state_dict would cast to float32)
        model = model.to(dtypes.pop())
    missing, unexpected = model.load_state_dict(state, strict=False)
    if missing or unexpected:
        raise ValueError(
            f"Fractal.load: {path} does not match its config: missing {missing[:5]}, "
            f"unexpected {unexpected[:5]}"
        )
    return model.to(device)
