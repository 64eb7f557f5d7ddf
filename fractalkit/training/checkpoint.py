"""Atomic, verified training checkpoints.

A checkpoint is a folder::

    checkpoint/
        model.safetensors    the model, written by Fractal.save (weights + JSON config)
        ema.safetensors      optional: the EMA weights, same format (loads with Fractal.load)
        trainer.pt           optimizer, schedule, step, random-stream states, extra JSON-able data
        MANIFEST.json        written last: size and SHA-256 of every file above

The folder is written under a temporary name and renamed into place only after every file is
complete and flushed, so an interrupted write never leaves a folder that loads as valid (a
leftover ``*.tmp-*`` folder is ignored and removed by the next save). Loading checks the
manifest, then every file's size and checksum, and names the offending file in its error.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from fractalkit.fractal import Fractal

__all__ = ["Checkpoint", "CheckpointError", "load_checkpoint", "load_model", "save_checkpoint"]

MANIFEST = "MANIFEST.json"
CHECKPOINT_FORMAT = "fractalkit.checkpoint"
CHECKPOINT_VERSION = 1


class CheckpointError(ValueError):
    """A checkpoint is incomplete, truncated or corrupt (the message names the file)."""


@dataclass
class Checkpoint:
    """What :func:`load_checkpoint` returns.

    Attributes:
        path: the checkpoint folder.
        model: the model (:class:`fractalkit.Fractal`), weights loaded, on the requested device.
        step: optimizer steps taken when it was saved.
        config: the model's config (``Fractal.from_config`` format).
        optimizer: the optimizer's ``state_dict`` or None.
        scheduler: the schedule's ``state_dict`` or None.
        ema: the EMA shadow tensors by parameter name, or None.
        rng: random-stream states by name (e.g. ``torch.Generator.get_state()`` tensors).
        extra: whatever JSON-able data the trainer stored (arguments, epoch, ...).
    """

    path: Path
    model: Fractal
    step: int
    config: dict[str, Any]
    optimizer: dict[str, Any] | None = None
    scheduler: dict[str, Any] | None = None
    ema: dict[str, Tensor] | None = None
    rng: dict[str, Any] = field(default_factory=dict)
    extra: dict[str, Any] = field(default_factory=dict)


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def _fsync(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def save_checkpoint(
    path: str | os.PathLike,
    model: Fractal,
    *,
    step: int,
    optimizer: torch.optim.Optimizer | None = None,
    scheduler: Any | None = None,
    ema: Any | None = None,
    rng: dict[str, Any] | None = None,
    extra: dict[str, Any] | None = None,
) -> Path:
    """Write a checkpoint folder atomically (replacing an older one at ``path``).

    Args:
        path: the folder to write (its parent is created if needed).
        model: the :class:`fractalkit.Fractal` (unwrap DistributedDataParallel first).
        step: optimizer steps taken.
        optimizer: saved with ``state_dict()`` if given.
        scheduler: anything with ``state_dict()`` (e.g. :class:`fractalkit.training.WarmupCosine`).
        ema: an :class:`fractalkit.training.EMA`; its weights also go to ``ema.safetensors``.
        rng: random-stream states, e.g. ``{"data": generator.get_state()}`` (tensors, ints,
            strings, lists and dicts of them).
        extra: JSON-serialisable data (arguments, epoch counters, ...).

    Returns:
        The checkpoint folder's path.
    """
    if not isinstance(model, Fractal):
        raise TypeError(f"save_checkpoint: model must be a fractalkit.Fractal, got {type(model).__name__}")
    if not isinstance(step, int) or step < 0:
        raise ValueError(f"save_checkpoint: step must be a non-negative int, got {step!r}")
    final = Path(path)
    final.parent.mkdir(parents=True, exist_ok=True)
    for stale in final.parent.glob(f"{final.name}.tmp-*"):  # debris of an interrupted save
        shutil.rmtree(stale, ignore_errors=True)
    tmp = Path(tempfile.mkdtemp(prefix=f"{final.name}.tmp-", dir=final.parent))
    try:
        model.save(tmp / "model.safetensors")
        if ema is not None:
            with ema.applied(model):
                model.save(tmp / "ema.safetensors")
        trainer = {
            "step": step,
            "optimizer": optimizer.state_dict() if optimizer is not None else None,
            "scheduler": scheduler.state_dict() if scheduler is not None else None,
            "ema_decay": ema.decay if ema is not None else None,
            "rng": rng or {},
        }
        torch.save(trainer, tmp / "trainer.pt")
        files = {}
        for f in sorted(tmp.iterdir()):
            _fsync(f)
            files[f.name] = {"bytes": f.stat().st_size, "sha256": _sha256(f)}
        manifest = {
            "format": CHECKPOINT_FORMAT,
            "version": CHECKPOINT_VERSION,
            "step": step,
            "config": model.config,
            "extra": extra or {},
            "files": files,
        }
        with open(tmp / MANIFEST, "w") as f:
            json.dump(manifest, f, indent=1)
            f.flush()
            os.fsync(f.fileno())
        # Swap into place: the old folder moves aside first, so `final` is either the old
        # complete checkpoint, absent for an instant, or the new complete one.
        old = None
        if final.exists():
            old = final.with_name(f"{final.name}.tmp-old")
            if old.exists():
                shutil.rmtree(old)
            os.replace(final, old)
        os.replace(tmp, final)
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return final


def _verify(folder: Path) -> dict[str, Any]:
    """The manifest of ``folder`` after checking every file's size and checksum."""
    if not folder.exists():
        raise FileNotFoundError(f"load_checkpoint: no checkpoint at {folder}")
    if not folder.is_dir():
        raise CheckpointError(
            f"load_checkpoint: {folder} is a file, not a checkpoint folder (for a bare model "
            "file use fractalkit.Fractal.load or fractalkit.training.load_model)"
        )
    mpath = folder / MANIFEST
    if not mpath.is_file():
        raise CheckpointError(
            f"load_checkpoint: {mpath} is missing: {folder} is incomplete (an interrupted "
            "save?) or not a fractalkit checkpoint"
        )
    try:
        manifest = json.loads(mpath.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise CheckpointError(f"load_checkpoint: {mpath} is corrupt: {err}") from err
    if not isinstance(manifest, dict) or manifest.get("format") != CHECKPOINT_FORMAT:
        raise CheckpointError(f"load_checkpoint: {mpath} is not a fractalkit checkpoint manifest")
    if manifest.get("version") != CHECKPOINT_VERSION:
        raise CheckpointError(
            f"load_checkpoint: {mpath} has version {manifest.get('version')}; this fractalkit "
            f"reads version {CHECKPOINT_VERSION}"
        )
    for name, info in manifest["files"].items():
        f = folder / name
        if not f.is_file():
            raise CheckpointError(f"load_checkpoint: {f} is missing (listed in {mpath})")
        size = f.stat().st_size
        if size != info["bytes"]:
            raise CheckpointError(
                f"load_checkpoint: {f} is {size} bytes but was written with {info['bytes']} "
                "(truncated or overwritten?)"
            )
        if _sha256(f) != info["sha256"]:
            raise CheckpointError(f"load_checkpoint: {f} is corrupt (its SHA-256 does not match {mpath})")
    return manifest


def load_checkpoint(path: str | os.PathLike, *, device: str | torch.device = "cpu") -> Checkpoint:
    """Read and verify a checkpoint written by :func:`save_checkpoint`.

    Args:
        path: the checkpoint folder.
        device: where to put the model and the tensors of the trainer state.

    Returns:
        A :class:`Checkpoint`.

    Raises:
        FileNotFoundError: no such folder.
        CheckpointError: (a ValueError) missing manifest or file, wrong size, bad checksum or
            unreadable content; the message names the file.
    """
    folder = Path(path)
    manifest = _verify(folder)
    try:
        model = Fractal.load(folder / "model.safetensors", device=device)
    except ValueError as err:
        raise CheckpointError(str(err)) from err
    tpath = folder / "trainer.pt"
    try:
        trainer = torch.load(tpath, map_location=device, weights_only=True)
    except Exception as err:
        raise CheckpointError(f"load_checkpoint: {tpath} could not be read: {err}") from err
    ema = None
    if (folder / "ema.safetensors").is_file():
        from safetensors.torch import load_file

        ema = load_file(str(folder / "ema.safetensors"), device=str(device))
        ema = {k: v for k, v in ema.items() if k in dict(model.named_parameters())}
    return Checkpoint(
        path=folder,
        model=model,
        step=int(trainer["step"]),
        config=manifest["config"],
        optimizer=trainer.get("optimizer"),
        scheduler=trainer.get("scheduler"),
        ema=ema,
        rng=trainer.get("rng") or {},
        extra=manifest.get("extra") or {},
    )


def load_model(
    path: str | os.PathLike, *, ema: bool = True, device: str | torch.device = "cpu"
) -> Fractal:
    """A model from a checkpoint folder (its EMA weights when present and ``ema``) or from a
    bare ``.safetensors`` file written by :meth:`fractalkit.Fractal.save`.

    Args:
        path: a checkpoint folder, a run folder holding ``checkpoint/``, or a model file.
        ema: prefer the EMA weights of a checkpoint folder.
        device: where to put the model.

    Returns:
        The :class:`fractalkit.Fractal` (in training mode; call ``.eval()``).

    Raises:
        FileNotFoundError: nothing at ``path``.
        CheckpointError / ValueError: corrupt or truncated files (naming the file).
    """
    p = Path(path)
    if p.is_dir() and not (p / MANIFEST).exists() and (p / "checkpoint").is_dir():
        p = p / "checkpoint"
    if p.is_file():
        return Fractal.load(p, device=device)
    _verify(p)
    name = "ema.safetensors" if ema and (p / "ema.safetensors").is_file() else "model.safetensors"
    try:
        return Fractal.load(p / name, device=device)
    except ValueError as err:
        raise CheckpointError(str(err)) from err
