"""Persistence of a :class:`fractalkit.Fractal`: its versioned JSON config, and safetensors files.

A model is described by a JSON-serialisable dict (:func:`model_config`): the format name, its
version, each level's partitioner and level config, the leaf config, the class count, label
dropout and value normalisation. :func:`save` writes the weights as safetensors with that dict in
the file's metadata; :func:`load` rebuilds the model from it. The training checkpoints
(:mod:`fractalkit.training.checkpoint`) store their models through the same two functions.

Versions: 1 (fractalkit 0.1); 2 adds ``guide_input`` to MAR level configs. Version-1 configs
load unchanged (the new field takes its default).
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from fractalkit.config import config_from_dict
from fractalkit.filemodes import apply_umask
from fractalkit.partition import partitioner_from_config
from fractalkit.validation import checked_model_file, nonfinite_tensors

if TYPE_CHECKING:
    from fractalkit.fractal import Fractal

FORMAT = "fractalkit.Fractal"
FORMAT_VERSION = 2
#: versions this fractalkit reads
READABLE_VERSIONS = (1, 2)
_KEYS = {"format", "version", "levels", "leaf", "num_classes", "label_drop", "value_mean", "value_std"}


def model_config(model: Fractal) -> dict[str, Any]:
    """The versioned, JSON-serialisable description of ``model`` (see :attr:`Fractal.config`)."""
    spec = model._spec

    def plain(v):
        return v if isinstance(v, int | float) else [float(t) for t in v]

    return {
        "format": FORMAT,
        "version": FORMAT_VERSION,
        "levels": [{"partitioner": p.config(), "level": c.to_dict()} for p, c in spec["levels"]],
        "leaf": spec["leaf"].to_dict(),
        "num_classes": spec["num_classes"],
        "label_drop": spec["label_drop"],
        "value_mean": plain(spec["value_mean"]),
        "value_std": plain(spec["value_std"]),
    }


def model_from_config(cls: type[Fractal], config: dict[str, Any]) -> Fractal:
    """A freshly initialised ``cls`` from :func:`model_config` output (any readable version).

    Raises:
        ValueError: not a fractalkit config, an unreadable version, or unknown keys.
    """
    if not isinstance(config, dict) or config.get("format") != FORMAT:
        raise ValueError(
            f"Fractal.from_config: expected a dict with format {FORMAT!r}, got "
            f"{config.get('format') if isinstance(config, dict) else type(config)}"
        )
    if config.get("version") not in READABLE_VERSIONS:
        raise ValueError(
            f"Fractal.from_config: config version {config.get('version')} is not supported "
            f"(this fractalkit reads versions {list(READABLE_VERSIONS)})"
        )
    unknown = sorted(set(config) - _KEYS)
    if unknown:
        raise ValueError(f"Fractal.from_config: unknown keys {unknown}")
    levels = [
        (partitioner_from_config(entry["partitioner"]), config_from_dict(entry["level"]))
        for entry in config["levels"]
    ]
    return cls(
        levels,
        config_from_dict(config["leaf"]),
        num_classes=config["num_classes"],
        label_drop=config["label_drop"],
        value_mean=config["value_mean"],
        value_std=config["value_std"],
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
