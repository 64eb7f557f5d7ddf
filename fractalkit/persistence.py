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

import itertools
import json
import math
import os
import struct
import sys
import threading
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Protocol, TypeVar

import torch
from torch import Tensor, nn

from fractalkit.config import FORMAT, FORMAT_VERSION, FractalConfig
from fractalkit.filemodes import apply_umask
from fractalkit.legacy import READABLE_VERSIONS, upgrade_state_dict
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
    "assign_state",
    "load",
    "model_config",
    "model_from_config",
    "parameters_on_meta",
    "read_safetensors",
    "save",
    "write_safetensors",
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


# ---- safetensors files, one tensor at a time -------------------------------------------------
# The format (https://huggingface.co/docs/safetensors): an 8-byte little-endian header length,
# the JSON header (``"__metadata__"``, then per tensor its dtype, shape and ``data_offsets``
# relative to the end of the header, padded with spaces to a multiple of 8 bytes), then the raw
# little-endian bytes of each tensor in header order. safetensors' Python API has no streaming
# writer (``save_file`` of older versions, 0.4 among those this package accepts, serialises
# every tensor to ``bytes`` first: a second copy of the model) and ``load_file`` maps the file, so every page read stays resident
# beside the copy a model makes of it. The two functions below write and read tensor by tensor
# instead: the file ``save_file`` writes, byte for byte (same order: dtypes from 8-byte to
# 1-byte types as safetensors ranks them, names in order within each; same JSON; several metadata
# entries aside, which safetensors orders by a hash map), and reads
# the same files into memory the caller owns.

#: torch dtype -> (safetensors name, rank); ``save_file`` orders tensors by descending rank
#: (its ``Dtype`` enum), then by name.
_ST_DTYPES: dict[torch.dtype, tuple[str, int]] = {
    torch.bool: ("BOOL", 0), torch.uint8: ("U8", 1), torch.int8: ("I8", 2),
    torch.float8_e5m2: ("F8_E5M2", 3), torch.float8_e4m3fn: ("F8_E4M3", 4),
    torch.int16: ("I16", 5), torch.uint16: ("U16", 6), torch.float16: ("F16", 7),
    torch.bfloat16: ("BF16", 8), torch.int32: ("I32", 9), torch.uint32: ("U32", 10),
    torch.float32: ("F32", 11), torch.complex64: ("C64", 12), torch.float64: ("F64", 13),
    torch.int64: ("I64", 14), torch.uint64: ("U64", 15),
}
_ST_NAMES: dict[str, torch.dtype] = {name: dtype for dtype, (name, _) in _ST_DTYPES.items()}


def _as_bytes(t: Tensor) -> Any:
    """The raw bytes of a contiguous CPU tensor as a writable numpy uint8 array (no copy)."""
    return t.reshape(-1).view(torch.uint8).numpy()


def write_safetensors(
    path: str | os.PathLike, tensors: Mapping[str, Tensor], metadata: Mapping[str, str] | None = None
) -> None:
    """Write ``tensors`` as a safetensors file, one tensor at a time (no copy of the whole set).

    The bytes are those ``safetensors.torch.save_file(tensors, path, metadata)`` writes. A
    tensor is read (e.g. from a memory-mapped checkpoint), made contiguous on the CPU if it is
    not, and written, one at a time: memory beyond the tensors themselves stays at one tensor.

    Args:
        path: the file to write (replaced; write to a temporary name and rename for atomicity).
        tensors: name -> tensor, any shape, a dtype safetensors stores, on any device.
        metadata: string -> string, stored as the header's ``"__metadata__"``.

    Raises:
        ValueError: a dtype safetensors cannot store, or two entries sharing memory (as
            ``save_file``; store one and tie them after loading).
    """
    if sys.byteorder != "little":  # the format is little-endian; let safetensors swap bytes
        from safetensors.torch import save_file

        save_file({k: v.detach().contiguous() for k, v in tensors.items()}, str(path),
                  metadata=None if metadata is None else dict(metadata))
        return
    for name, t in tensors.items():
        if t.dtype not in _ST_DTYPES:
            raise ValueError(f"write_safetensors: {name!r} has dtype {t.dtype}, which safetensors cannot store")
    _refuse_shared(tensors)
    order = sorted(tensors, key=lambda k: (-_ST_DTYPES[tensors[k].dtype][1], k))
    header: dict[str, Any] = {}
    if metadata is not None:
        header["__metadata__"] = dict(metadata)
    offset = 0
    for name in order:
        t = tensors[name]
        size = t.numel() * t.element_size()
        header[name] = {"dtype": _ST_DTYPES[t.dtype][0], "shape": list(t.shape),
                        "data_offsets": [offset, offset + size]}
        offset += size
    text = json.dumps(header, separators=(",", ":"), ensure_ascii=False).encode()
    text += b" " * (-len(text) % 8)
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(text)))
        f.write(text)
        for name in order:
            t = tensors[name].detach()
            if t.numel() == 0:
                continue
            if t.device.type != "cpu":
                t = t.cpu()
            f.write(memoryview(_as_bytes(t.contiguous())))
        f.flush()
        os.fsync(f.fileno())


def _refuse_shared(tensors: Mapping[str, Tensor]) -> None:
    spans = sorted(
        (str(t.device), t.data_ptr(), t.data_ptr() + t.numel() * t.element_size(), name)
        for name, t in tensors.items() if t.numel() and t.device.type != "meta"
    )
    for (d1, _, end, a), (d2, start, _, b) in itertools.pairwise(spans):
        if d1 == d2 and start < end:
            raise ValueError(
                f"write_safetensors: {a!r} and {b!r} share memory (tied weights?); safetensors "
                "stores each tensor once: save one and tie them again after loading"
            )


def read_safetensors(path: str | os.PathLike) -> tuple[dict[str, Tensor], dict[str, str]]:
    """A safetensors file's tensors, read one at a time into memory the caller owns (no map).

    Args:
        path: the file.

    Returns:
        ``(tensors, metadata)``: name -> CPU tensor in the file's dtype and shape, and the
        header's ``"__metadata__"`` (empty if none).

    Raises:
        ValueError: the header is not a safetensors header, names a dtype this reader does not
            know, or its offsets do not fit the shapes or the file (truncated?).
    """
    path = Path(path)
    size = path.stat().st_size
    with open(path, "rb") as f:
        head = f.read(8)
        if len(head) < 8:
            raise ValueError(f"{path}: shorter than a safetensors header (8 bytes)")
        (n,) = struct.unpack("<Q", head)
        if n > size - 8:
            raise ValueError(f"{path}: its header claims {n:,} bytes, the file has {size:,}")
        try:
            header = json.loads(f.read(n))
        except (json.JSONDecodeError, UnicodeDecodeError) as err:
            raise ValueError(f"{path}: the header is not JSON ({err})") from err
        if not isinstance(header, dict):
            raise ValueError(f"{path}: the header is not a JSON object")
        metadata = header.pop("__metadata__", None) or {}
        begin = 8 + n
        entries = []
        for name, info in header.items():
            try:
                dtype = _ST_NAMES[info["dtype"]]
                shape = [int(d) for d in info["shape"]]
                start, end = (int(o) for o in info["data_offsets"])
            except (KeyError, TypeError, ValueError) as err:
                raise ValueError(f"{path}: the header entry of {name!r} is not readable: {info!r}") from err
            need = math.prod(shape) * torch.empty((), dtype=dtype).element_size()
            if min(shape, default=0) < 0 or end - start != need or start < 0 or begin + end > size:
                raise ValueError(
                    f"{path}: {name!r} ({info['dtype']} {shape}) spans bytes {start}..{end} of the data, "
                    f"which {'the file does not hold (truncated?)' if begin + end > size else 'do not fit its shape'}"
                )
            entries.append((start, name, dtype, shape))
        tensors: dict[str, Tensor] = {}
        for start, name, dtype, shape in sorted(entries, key=lambda e: e[0]):
            t = torch.empty(shape, dtype=dtype)
            if t.numel():
                f.seek(begin + start)
                view, done = memoryview(_as_bytes(t)), 0
                while done < len(view):
                    got = f.readinto(view[done:])
                    if not got:
                        raise ValueError(f"{path}: ends inside {name!r} (truncated?)")
                    done += got
            tensors[name] = t
    return tensors, {str(k): str(v) for k, v in metadata.items()}


# ---- building a model without allocating its weights ------------------------------------------

_meta_params = threading.local()
_patch_lock = threading.Lock()
_patch_users = 0
_register_parameter = nn.Module.register_parameter


def _register_on_meta(module: nn.Module, name: str, param: nn.Parameter | None) -> None:
    _register_parameter(module, name, param)
    if getattr(_meta_params, "depth", 0) and type(param) is nn.Parameter and not param.is_meta:
        module._parameters[name] = nn.Parameter(param.to("meta"), requires_grad=param.requires_grad)


@contextmanager
def parameters_on_meta() -> Iterator[None]:
    """Within the block, parameters that modules built in this thread register live on the meta
    device (shapes and dtypes only, no memory, initialisation a no-op); buffers are built as usual.

    :func:`assign_state` then gives the model its weights without a second copy. Unlike
    ``with torch.device("meta")``, buffers that are not saved (normalisation constants, RoPE
    tables, neighbour lists) keep their values. Other threads are not affected.
    """
    global _patch_users
    with _patch_lock:
        if _patch_users == 0:
            nn.Module.register_parameter = _register_on_meta  # type: ignore[method-assign]
        _patch_users += 1
    _meta_params.depth = getattr(_meta_params, "depth", 0) + 1
    try:
        yield
    finally:
        _meta_params.depth -= 1
        with _patch_lock:
            _patch_users -= 1
            if _patch_users == 0:
                nn.Module.register_parameter = _register_parameter  # type: ignore[method-assign]


def assign_state(model: nn.Module, state: Mapping[str, Tensor]) -> tuple[list[str], list[str]]:
    """Make ``state``'s tensors ``model``'s parameters and buffers, without copying them.

    Old parameter names are renamed first (:func:`fractalkit.legacy.upgrade_state_dict`); a
    tensor whose dtype differs from the model's entry is cast (as ``load_state_dict`` would
    when copying), every other tensor becomes the model's own (``load_state_dict(assign=True)``).

    Args:
        model: a model built under :func:`parameters_on_meta` (or any model).
        state: name -> tensor, shapes as the model's.

    Returns:
        ``(missing, unexpected)`` names, as ``load_state_dict(strict=False)`` reports them;
        ``missing`` also names any parameter or buffer still on the meta device afterwards.
    """
    state = upgrade_state_dict(state)
    want = {k: v.dtype for k, v in model.state_dict().items()}
    state = {k: v.to(want[k]) if k in want and v.dtype != want[k] else v for k, v in state.items()}
    missing, unexpected = model.load_state_dict(state, strict=False, assign=True)
    missing = list(missing)
    for name, t in itertools.chain(model.named_parameters(), model.named_buffers()):
        if t.is_meta and name not in missing:
            missing.append(name)
    return missing, list(unexpected)


def save(model: ConfiguredModel, path: str | os.PathLike) -> None:
    """Write weights (safetensors) with the JSON config in the file's metadata, atomically.

    The file is written tensor by tensor (:func:`write_safetensors`): saving needs no memory
    beyond the model's own, whether its weights are in memory or mapped from a file.

    Args:
        model: the model.
        path: file to write, conventionally ``*.safetensors``.
    """
    path = Path(path)
    tmp = path.with_name(path.name + ".tmp")
    metadata = {"fractalkit_config": json.dumps(model_config(model))}
    write_safetensors(tmp, model.state_dict(), metadata)
    apply_umask(tmp)  # teammates may need to read it
    os.replace(tmp, path)


def load(cls: type[M], path: str | os.PathLike, *, device: str | torch.device = "cpu") -> M:
    """Rebuild a model written by :func:`save`, in the saved precision, on ``device``.

    Memory: the tensors are read once, into memory that becomes the model's parameters (the
    model is built under :func:`parameters_on_meta`, no initial weights): the peak is about the
    file's size above what the process used before.

    Raises:
        FileNotFoundError: no such file.
        ValueError: the file is not a fractalkit safetensors file, is truncated or corrupt,
            or its tensors do not match its config (each names the file); a config that
            declares more than the file holds is refused while its meta build is bounded by
            the file's header (:func:`fractalkit.validation.bounded_by_file`).
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"Fractal.load: no file at {path}")
    # Names and shapes are checked on the meta device before anything is allocated.
    config = checked_model_file("Fractal.load", path, "fractalkit_config", cls.from_config)
    try:
        state, _ = read_safetensors(path)
    except (ValueError, OSError) as err:
        raise ValueError(
            f"Fractal.load: {path} is not a readable safetensors file (truncated or corrupt?): {err}"
        ) from err
    bad = nonfinite_tensors(state.items())
    if bad:
        raise ValueError(
            f"Fractal.load: {path} holds NaN/inf values in {len(bad)} tensor(s), e.g. {bad[:3]} "
            "(saved from a diverged run?); load an earlier checkpoint"
        )
    dtypes = {t.dtype for t in state.values() if t.is_floating_point()}
    dtype = dtypes.pop() if len(dtypes) == 1 else None  # keep the saved precision
    with parameters_on_meta():
        model = cls.from_config(config)
    if dtype is not None:  # the buffers follow; no weights exist yet
        model = model.to(dtype)
    missing, unexpected = assign_state(model, state)
    if missing or unexpected:
        # A plug-in that derives a buffer from a parameter while it is built has that buffer
        # on the meta device: build it with its initial weights and copy, as before.
        model = cls.from_config(config)
        if dtype is not None:
            model = model.to(dtype)
        missing, unexpected = model.load_state_dict(state, strict=False)
    if missing or unexpected:
        raise ValueError(
            f"Fractal.load: {path} does not match its config: missing {missing[:5]}, "
            f"unexpected {unexpected[:5]}"
        )
    return model.to(device)
