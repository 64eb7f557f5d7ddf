"""Atomic, verified, crash-consistent training checkpoints.

A checkpoint is a folder::

    checkpoint/
        model.safetensors    the model, written by Fractal.save (weights + JSON config)
        ema.safetensors      optional: the EMA weights, same format (loads with Fractal.load)
        trainer.pt           optimizer, schedule, step, random-stream states, extra JSON-able data
        MANIFEST.json        written last: size and SHA-256 of every file above

A save writes ``checkpoint.tmp-<random>/`` completely (every file and the folder flushed to
disk, the manifest last), moves the previous ``checkpoint/`` aside to ``checkpoint.old/``,
renames the new folder into place and only then deletes ``checkpoint.old/``. A crash at any
filesystem step therefore leaves at least one *complete* folder among ``checkpoint/``,
``checkpoint.old/`` and ``checkpoint.tmp-*/``: :func:`resolve_checkpoint` (used by
:func:`load_checkpoint`, :func:`load_model` and every resume) picks the newest complete one,
and the next save first puts it back in place. A save deletes a leftover folder only when it
is incomplete or when ``checkpoint/`` itself is complete, so it never deletes the only complete
copy. A save holds the run folder's writer lock (:func:`fractalkit.filelock.writer_lock`): a
second writer is refused, so every leftover it removes belongs to a writer that has exited.
Loading checks the manifest (its names stay inside the folder and it lists every file
a load reads), then every file's size and checksum, and names the offending
file in its error. Folders and files are created with the user's umask (readable by a team
when the umask allows it).
"""

from __future__ import annotations

import json
import os
import secrets
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from fractalkit.filelock import writer_lock
from fractalkit.fractal import Fractal
from fractalkit.legacy import upgrade_config, upgrade_optimizer_state, upgrade_state_dict
from fractalkit.validation import file_sha256, nonfinite_tensors, read_json_file

__all__ = [
    "Checkpoint",
    "CheckpointError",
    "load_checkpoint",
    "load_model",
    "resolve_checkpoint",
    "save_checkpoint",
]

MANIFEST = "MANIFEST.json"
CHECKPOINT_FORMAT = "fractalkit.checkpoint"
CHECKPOINT_VERSION = 1
#: Files a load reads that the manifest must list (``ema.safetensors`` too whenever present).
_REQUIRED = ("model.safetensors", "trainer.pt")
_OPTIONAL = ("ema.safetensors",)


class CheckpointError(ValueError):
    """A checkpoint is incomplete, truncated or corrupt (the message names the file)."""


@dataclass
class Checkpoint:
    """What :func:`load_checkpoint` returns.

    Attributes:
        path: the checkpoint folder.
        model: the model (:class:`fractalkit.Fractal`), weights loaded, on the requested device.
        step: optimizer steps taken when it was saved.
        config: the model's config dict (:meth:`fractalkit.FractalConfig.to_dict`, in today's version;
            older checkpoints' through :func:`fractalkit.legacy.upgrade_config`).
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


def _fsync(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _fsync_dir(path: Path) -> None:
    """Flush a folder's entries (a rename or a new file in it) to disk."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _siblings(final: Path) -> list[Path]:
    """Folders a save of ``final`` may leave beside it: the previous copy and new copies."""
    old = [final.with_name(f"{final.name}.old"), final.with_name(f"{final.name}.tmp-old")]
    return [p for p in old if p.is_dir()] + sorted(
        p for p in final.parent.glob(f"{final.name}.tmp-*") if p.is_dir() and p not in old
    )


def _complete_step(folder: Path) -> int | None:
    """The step of ``folder`` if its manifest is readable and every listed file has the listed
    size (a quick check: the manifest is written last, after every file is flushed), else None."""
    try:
        manifest = json.loads((folder / MANIFEST).read_text())
        _manifest_problem(folder, manifest["files"])  # never stat a file outside the folder
        for name, info in manifest["files"].items():
            if (folder / name).stat().st_size != info["bytes"]:
                return None
        return int(manifest["step"])
    except (OSError, ValueError, KeyError, TypeError, CheckpointError):
        return None


def _manifest_problem(folder: Path, files: Any) -> None:
    """Refuse a manifest whose names leave ``folder`` or that leaves out a file a load reads.

    A manifest is a file this process did not necessarily write: a name such as
    ``../../outside.txt``, an absolute path or a symbolic link out of the folder would make the
    check stat and hash a file elsewhere, and a manifest silent about ``model.safetensors``
    would let an unverified model load. Raises :class:`CheckpointError` naming the manifest.
    """
    mpath = folder / MANIFEST
    if not isinstance(files, dict):
        raise CheckpointError(f"load_checkpoint: {mpath} has no 'files' table: not a checkpoint manifest")
    root = folder.resolve()
    for name in files:
        p = Path(name) if isinstance(name, str) else None
        if (p is None or not name or p.is_absolute() or ".." in p.parts or "\\" in name
                or name == MANIFEST or not (folder / p).resolve().is_relative_to(root)):
            raise CheckpointError(
                f"load_checkpoint: {mpath} lists {name!r}, which is not a file inside {folder} "
                "(absolute path, '..' or a link out of the folder); the checkpoint was edited or "
                "is not from fractalkit: do not load it"
            )
        info = files[name]
        if not (isinstance(info, dict) and type(info.get("bytes")) is int
                and isinstance(info.get("sha256"), str)):
            raise CheckpointError(
                f"load_checkpoint: {mpath} gives {name!r} no size and SHA-256 ({info!r}); the "
                "checkpoint was edited or is not from fractalkit: do not load it"
            )
    present = [n for n in _OPTIONAL if (folder / n).exists()]
    missing = [n for n in (*_REQUIRED, *present) if n not in files]
    if missing:
        raise CheckpointError(
            f"load_checkpoint: {mpath} does not list {', '.join(missing)}, so "
            f"{'it' if len(missing) == 1 else 'they'} cannot be verified; the checkpoint was "
            "edited or is not from fractalkit: do not load it"
        )


def resolve_checkpoint(path: str | os.PathLike) -> Path:
    """The complete checkpoint folder to load for ``path``.

    ``path`` is a checkpoint folder or a run folder holding ``checkpoint/``. When the folder
    itself is complete it is the answer; when a save was interrupted (``checkpoint/`` missing
    or incomplete) it is the newest complete ``checkpoint.old/`` or ``checkpoint.tmp-*/``.
    When nothing is complete, ``path`` itself is returned (loading it then says what is wrong).

    Args:
        path: a checkpoint folder or a run folder.

    Returns:
        The folder to read.
    """
    p = Path(path)
    if p.is_dir() and not (p / MANIFEST).exists() and (
        (p / "checkpoint").exists() or _siblings(p / "checkpoint")
    ):
        p = p / "checkpoint"
    if _complete_step(p) is not None:
        return p
    complete = [(step, q) for q in _siblings(p) if (step := _complete_step(q)) is not None]
    if complete:
        return max(complete, key=lambda item: item[0])[1]
    return p


def _recover(final: Path) -> bool:
    """Put the newest complete copy back at ``final`` after an interrupted save and delete the
    leftovers that are incomplete or superseded; returns whether ``final`` is complete."""
    best = resolve_checkpoint(final)
    if best != final:
        if final.exists():  # an incomplete folder: keep it aside, removed below
            os.replace(final, final.with_name(f"{final.name}.tmp-broken-{secrets.token_hex(4)}"))
        os.replace(best, final)
        _fsync_dir(final.parent)
    final_complete = _complete_step(final) is not None
    for leftover in _siblings(final):
        if final_complete or _complete_step(leftover) is None:  # never the only complete copy
            shutil.rmtree(leftover, ignore_errors=True)
    return final_complete


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

    Raises:
        fractalkit.filelock.FolderInUseError: another live process writes the same run folder
            (``path``'s parent; the message names it). Leftover temporary folders of writers
            that have exited are removed; a live writer's never are.
    """
    if not isinstance(model, Fractal):
        raise TypeError(f"save_checkpoint: model must be a fractalkit.Fractal, got {type(model).__name__}")
    if not isinstance(step, int) or step < 0:
        raise ValueError(f"save_checkpoint: step must be a non-negative int, got {step!r}")
    final = Path(path)
    bad = nonfinite_tensors(model.state_dict().items())
    if ema is not None:
        bad += [f"ema.{name}" for name in nonfinite_tensors(ema.state_dict().items())]
    if bad:
        raise CheckpointError(
            f"save_checkpoint: refusing to write non-finite weights at step {step}: {len(bad)} "
            f"tensor(s) hold NaN/inf, e.g. {bad[:3]}; the checkpoint at {final} is left as it was"
        )
    # One writer per run folder: the lock also makes the recovery below safe, as every
    # leftover temporary folder then belongs to a writer that has exited.
    with writer_lock(final.parent, what="save_checkpoint"):
        return _write(final, model, step, optimizer, scheduler, ema, rng, extra)


def _write(final: Path, model: Fractal, step: int, optimizer: Any, scheduler: Any, ema: Any,
           rng: dict[str, Any] | None, extra: dict[str, Any] | None) -> Path:
    """The body of :func:`save_checkpoint`, run under the run folder's writer lock."""
    _recover(final)
    tmp = final.with_name(f"{final.name}.tmp-{secrets.token_hex(6)}")
    tmp.mkdir()  # plain mkdir: the user's umask decides who may read it
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
            files[f.name] = {"bytes": f.stat().st_size, "sha256": file_sha256(f)}
        manifest = {
            "format": CHECKPOINT_FORMAT,
            "version": CHECKPOINT_VERSION,
            "step": step,
            "config": model.config.to_dict(),
            "extra": extra or {},
            "files": files,
        }
        with open(tmp / MANIFEST, "w") as f:
            json.dump(manifest, f, indent=1)
            f.flush()
            os.fsync(f.fileno())
        _fsync_dir(tmp)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    # Swap into place. At every instant a complete copy exists under one of the three names
    # `final`, `final.old`, `tmp`, and resolve_checkpoint finds the newest.
    old = final.with_name(f"{final.name}.old")
    if final.exists():
        os.replace(final, old)
        _fsync_dir(final.parent)
    os.replace(tmp, final)
    _fsync_dir(final.parent)
    shutil.rmtree(old, ignore_errors=True)
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
    manifest = read_json_file(
        mpath, owner="load_checkpoint", error=CheckpointError,
        fix=f"the checkpoint is corrupt: load an older copy (e.g. {folder.name}.old) or start again",
    )
    if not isinstance(manifest, dict) or manifest.get("format") != CHECKPOINT_FORMAT:
        raise CheckpointError(f"load_checkpoint: {mpath} is not a fractalkit checkpoint manifest")
    if manifest.get("version") != CHECKPOINT_VERSION:
        raise CheckpointError(
            f"load_checkpoint: {mpath} has version {manifest.get('version')}; this fractalkit "
            f"reads version {CHECKPOINT_VERSION}"
        )
    _manifest_problem(folder, manifest.get("files"))
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
        if file_sha256(f) != info["sha256"]:
            raise CheckpointError(f"load_checkpoint: {f} is corrupt (its SHA-256 does not match {mpath})")
    return manifest


def load_checkpoint(path: str | os.PathLike, *, device: str | torch.device = "cpu") -> Checkpoint:
    """Read and verify a checkpoint written by :func:`save_checkpoint`.

    Args:
        path: the checkpoint folder, or a run folder holding ``checkpoint/`` (after an
            interrupted save, the newest complete copy is read: see :func:`resolve_checkpoint`).
        device: where to put the model and the tensors of the trainer state.

    Returns:
        A :class:`Checkpoint`.

    Raises:
        FileNotFoundError: no such folder.
        CheckpointError: (a ValueError) missing manifest or file, wrong size, bad checksum or
            unreadable content; the message names the file.
    """
    folder = resolve_checkpoint(path)
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

        # Older parameter names through the one key map, as every load path
        ema = upgrade_state_dict(load_file(str(folder / "ema.safetensors"), device=str(device)))
        ema = {k: v for k, v in ema.items() if k in dict(model.named_parameters())}
    return Checkpoint(
        path=folder,
        model=model,
        step=int(trainer["step"]),
        config=upgrade_config(manifest["config"]),
        # positions of older class-label / unconditional models' parameters (fractalkit.legacy)
        optimizer=upgrade_optimizer_state(
            trainer.get("optimizer"), [n for n, _ in model.named_parameters()],
            manifest["config"].get("version"),
        ),
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
    if p.is_file():
        return Fractal.load(p, device=device)
    p = resolve_checkpoint(p)
    _verify(p)
    name = "ema.safetensors" if ema and (p / "ema.safetensors").is_file() else "model.safetensors"
    try:
        return Fractal.load(p / name, device=device)
    except ValueError as err:
        raise CheckpointError(str(err)) from err
