"""Persistence of a :class:`fractalkit.Fractal`: its config as JSON, and safetensors files.

A model is described by its :class:`fractalkit.FractalConfig` (``model.config``), stored as the
dict of :meth:`fractalkit.FractalConfig.to_dict`: the format name, its version, each level's
partitioner and level config, the leaf config, the conditioner config, the value normalisation
and the modules of plug-in kinds. :func:`save` writes the weights as safetensors with that dict
in the file's metadata; :func:`load` rebuilds the model from it. The training checkpoints
(:mod:`fractalkit.training.checkpoint`) store their models through the same two functions.

Every model is written in one version, 4. Older versions load through the one conversion,
:func:`fractalkit.legacy.upgrade_config`: 1 (fractalkit 0.1); 2 added ``guide_input`` to MAR
level configs; 3 replaced ``num_classes`` and ``label_drop`` by a ``conditioner`` entry (2 was
still written for class-label and unconditional models); 4 writes the ``conditioner`` entry for
every model and adds ``plugins``, and MAR levels write one ``summary`` setting (was
``guiding_pixel``, ``guide`` and ``guide_input``) and ``linked_neighbours`` (was
``graph_neighbours``). Old parameter names (a class-label model's top-level
``null_embedding`` and ``class_embedding.weight``, a level's input network and guiding pixel
before they became the ``inputs`` and ``summary`` parts) load through
:data:`fractalkit.legacy.LEGACY_KEY_RULES` and :data:`fractalkit.legacy.LEGACY_STATE_RULES`.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any, Protocol, TypeVar

import torch
from torch import nn

from fractalkit.config import FORMAT, FORMAT_VERSION, FractalConfig
from fractalkit.filemodes import apply_umask
from fractalkit.legacy import READABLE_VERSIONS
from fractalkit.validation import checked_model_file, nonfinite_tensors


class ConfiguredModel(Protocol):
    """What persistence needs of a model (a :class:`fractalkit.Fractal`): its one description,
    and a constructor from it. Persistence sits below the user API and never imports it; the
    class to build is passed in."""

    config: FractalConfig

    def __init__(self, config: FractalConfig) -> None: ...

    @classmethod
    def from_config(cls, config: FractalConfig | dict[str, Any]) -> Any: ...


#: the model class being saved or loaded (``Fractal`` or a subclass)
M = TypeVar("M", bound=nn.Module)

__all__ = [
    "FORMAT",
    "FORMAT_VERSION",
    "LABEL_FORMAT_VERSION",
    "READABLE_VERSIONS",
    "ConfiguredModel",
    "load",
    "model_config",
    "model_from_config",
    "save",
]

#: the version the converter's and presets' class-label config dicts are written in (they load
#: through :func:`fractalkit.legacy.upgrade_config`); files are always written in FORMAT_VERSION
LABEL_FORMAT_VERSION = 2


def model_config(model: ConfiguredModel) -> dict[str, Any]:
    """The JSON-serialisable dict of ``model.config`` (what :func:`save` stores)."""
    return model.config.to_dict()


def model_from_config(cls: type[M], config: FractalConfig | dict[str, Any]) -> M:
    """A freshly initialised ``cls`` from a :class:`fractalkit.FractalConfig` or its dict (any
    readable version).

    Raises:
        ValueError: not a fractalkit config, an unreadable version, missing or unknown keys.
    """
    return cls(FractalConfig.from_dict(config))


def save(model: ConfiguredModel, path: str | os.PathLike) -> None:
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


def load(cls: type[M], path: str | os.PathLike, *, device: str | torch.device = "cpu") -> M:
    """Rebuild a model written by :func:`save`, in the saved precision, on ``device``.

    Raises:
        FileNotFoundError: no such file.
        ValueError: the file is not a fractalkit safetensors file, is truncated or corrupt,
            or its tensors do not match its config (each names the file); a config that
            declares more than the file holds is refused while its meta build is bounded by
            the file's header (:func:`fractalkit.validation.bounded_by_file`).
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
