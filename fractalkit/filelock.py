"""Folder locks: one process at a time in a folder (the download cache, a run folder).

Both locks are an advisory ``flock`` on ``<folder>/.lock``. The operating system releases a
``flock`` when its holder exits for any reason (including SIGKILL), so a lock of a dead process
never blocks anyone: there is nothing stale to clean up by hand and no pid guessing.

- :func:`waiting_lock`: wait for the folder (the download cache: the others then find the model
  cached).
- :func:`writer_lock`: refuse at once when another process writes the folder, with a
  :class:`FolderInUseError` naming it (pid, host, since when, command). The holder's details are
  written into the lock file after it is acquired. Re-entrant within one process (a
  :class:`fractalkit.training.Trainer` holds its run folder and its checkpoint saves take the
  same lock).

On a system without ``fcntl`` (Windows) both are no-ops: concurrent writers are not detected.
Network filesystems honour ``flock`` only where the server supports it.
"""

from __future__ import annotations

import json
import os
import socket
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

__all__ = ["LOCK_FILE", "FolderInUseError", "waiting_lock", "writer_lock"]

LOCK_FILE = ".lock"

try:
    import fcntl
except ImportError:  # not POSIX
    fcntl = None  # type: ignore[assignment]


class FolderInUseError(RuntimeError):
    """Another live process is writing the folder (the message names it)."""


# lock file -> [fd, depth]: this process's writer locks, so nested takers share one flock
_held: dict[str, list[int]] = {}
_guard = threading.Lock()


def _open(path: Path) -> int:
    # no O_TRUNC: a waiter must not wipe the holder's details
    return os.open(path, os.O_RDWR | os.O_CREAT, 0o666)


@contextmanager
def waiting_lock(folder: str | os.PathLike) -> Iterator[None]:
    """Hold ``folder``'s lock, waiting for another holder to finish (the folder is created).

    Args:
        folder: the folder to lock.
    """
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    if fcntl is None:  # no advisory lock: concurrent first calls may both do the work
        yield
        return
    fd = _open(folder / LOCK_FILE)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fd, fcntl.LOCK_UN)
    finally:
        os.close(fd)


def _holder(path: Path) -> str:
    """The holder's details as written into the lock file, in words."""
    try:
        info = json.loads(path.read_text())
        return (
            f"process {info['pid']} on host {info['host']}, since {info['since']} "
            f"({info.get('command') or 'unknown command'})"
        )
    except (OSError, ValueError, KeyError, TypeError):
        return "a process that has not written its details yet"


@contextmanager
def writer_lock(folder: str | os.PathLike, *, what: str = "fractalkit") -> Iterator[None]:
    """Be the only writer of ``folder`` (created if missing) while the block runs.

    Args:
        folder: the run folder.
        what: who asks, for the error message (e.g. ``"save_checkpoint"``).

    Raises:
        FolderInUseError: another live process holds the folder; the message names its pid,
            host, start time and command. A dead holder's lock is released by the system, so
            the next writer simply proceeds.
    """
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    if fcntl is None:
        yield
        return
    path = folder / LOCK_FILE
    key = str(path.resolve())
    with _guard:
        entry = _held.get(key)
        if entry is not None:
            entry[1] += 1
        else:
            fd = _open(path)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                os.close(fd)
                raise FolderInUseError(
                    f"{what}: the run folder {folder} is in use by another writer: "
                    f"{_holder(path)}. Two writers would overwrite each other's checkpoints; "
                    "wait for it to finish, stop it, or use another folder (a lock of a process "
                    "that has exited is released automatically)"
                ) from None
            except BaseException:
                os.close(fd)
                raise
            info = {
                "pid": os.getpid(),
                "host": socket.gethostname(),
                "since": time.strftime("%Y-%m-%d %H:%M:%S %z"),
                "command": " ".join(sys.argv)[:200],
            }
            os.ftruncate(fd, 0)
            os.pwrite(fd, json.dumps(info).encode(), 0)
            _held[key] = entry = [fd, 1]
    try:
        yield
    finally:
        with _guard:
            entry[1] -= 1
            if entry[1] == 0:
                del _held[key]
                try:
                    os.ftruncate(fd := entry[0], 0)  # the details are no longer true
                finally:
                    fcntl.flock(fd, fcntl.LOCK_UN)
                    os.close(fd)
