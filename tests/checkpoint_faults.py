"""Fault injection for save_checkpoint: kill the saving process at each filesystem step in turn.

Run as ``python tests/checkpoint_faults.py OUT_JSON [--pairs]``. The process builds a tiny
model, counts the filesystem operations of one save (mkdir, open for writing, torch.save,
safetensors writes, fsync, rename/replace, unlink, rmtree), then for every operation i and for
"before" and "after" it forks a child that saves and calls ``os._exit`` right before (or right
after) operation i, as SIGKILL or a power cut would stop it. After each crash the parent
checks that ``load_checkpoint`` finds a complete checkpoint (step 1 or 2), that a following
save succeeds and loads, and that no leftover folder remains. With ``--pairs`` the following
save is itself killed at every one of its own steps j (until it runs to completion), and
loading must still succeed.

Forking (not one Python per kill) keeps the sweep to seconds; torch runs single-threaded so
the children never inherit a busy thread pool.
"""

from __future__ import annotations

import builtins
import json
import os
import shutil
import sys
import tempfile
from pathlib import Path

import torch

torch.set_num_threads(1)

import safetensors.torch  # noqa: E402

from fractalkit import Fractal, MARLevelConfig, RGBLeafConfig  # noqa: E402
from fractalkit.filelock import LOCK_FILE  # noqa: E402
from fractalkit.partition import ImagePatches  # noqa: E402
from fractalkit.training import checkpoint as ckpt  # noqa: E402

_real = {
    "os.mkdir": os.mkdir,
    "os.replace": os.replace,
    "os.rename": os.rename,
    "os.unlink": os.unlink,
    "os.remove": os.remove,
    "os.rmdir": os.rmdir,
    "os.fsync": os.fsync,
    "shutil.rmtree": shutil.rmtree,
    "open": builtins.open,
    "torch.save": torch.save,
    "save_file": safetensors.torch.save_file,
}


def install(kill_at: int, when: str, log: list[str]) -> None:
    """Wrap every filesystem operation; exit at operation ``kill_at`` (1-based) ``when``."""

    def wrap(name, fn, *, writes=lambda *a, **k: True):
        def wrapped(*args, **kwargs):
            if not writes(*args, **kwargs):
                return fn(*args, **kwargs)
            log.append(name)
            if len(log) == kill_at and when == "before":
                os._exit(9)
            out = fn(*args, **kwargs)
            if len(log) == kill_at and when == "after":
                os._exit(9)
            return out

        return wrapped

    def writing(file, mode="r", *a, **k):
        return any(c in mode for c in "wax+")

    os.mkdir = wrap("mkdir", _real["os.mkdir"])
    os.replace = wrap("replace", _real["os.replace"])
    os.rename = wrap("rename", _real["os.rename"])
    os.unlink = wrap("unlink", _real["os.unlink"])
    os.remove = wrap("remove", _real["os.remove"])
    os.rmdir = wrap("rmdir", _real["os.rmdir"])
    os.fsync = wrap("fsync", _real["os.fsync"])
    shutil.rmtree = wrap("rmtree", _real["shutil.rmtree"])
    builtins.open = wrap("open-write", _real["open"], writes=writing)
    torch.save = wrap("torch.save", _real["torch.save"])
    safetensors.torch.save_file = wrap("safetensors.save_file", _real["save_file"])


def tiny_model() -> Fractal:
    """A two-level pixel model small enough that a save takes milliseconds."""
    return Fractal(
        [(ImagePatches(4, 2), MARLevelConfig(width=16, depth=1, heads=2))],
        RGBLeafConfig(width=16, depth=1, heads=2),
    )


def run_child(folder: Path, model: Fractal, step: int, kill_at: int, when: str) -> int:
    """Fork a child that saves ``step`` and dies at operation ``kill_at``; its exit status."""
    pid = os.fork()
    if pid == 0:
        log: list[str] = []
        install(kill_at, when, log)
        try:
            ckpt.save_checkpoint(folder / "checkpoint", model, step=step)
        finally:
            os._exit(0 if kill_at > len(log) else 3)
    return os.waitstatus_to_exitcode(os.waitpid(pid, 0)[1])


def loaded_step(folder: Path) -> int:
    """The step load_checkpoint finds in the run folder (raises if none is complete)."""
    return ckpt.load_checkpoint(folder).step


def main() -> None:
    out, pairs = Path(sys.argv[1]), "--pairs" in sys.argv
    model = tiny_model()
    root = Path(tempfile.mkdtemp())
    # Count the operations of one save over an existing checkpoint.
    count_dir = root / "count"
    ckpt.save_checkpoint(count_dir / "checkpoint", model, step=1)
    log: list[str] = []
    install(10**9, "never", log)
    ckpt.save_checkpoint(count_dir / "checkpoint", model, step=2)
    for name, fn in _real.items():  # restore
        if name.startswith("os."):
            setattr(os, name[3:], fn)
    shutil.rmtree, builtins.open, torch.save = _real["shutil.rmtree"], _real["open"], _real["torch.save"]
    safetensors.torch.save_file = _real["save_file"]
    steps = list(log)
    result = {"operations": steps, "crashes": 0, "recovered": 0, "failures": [], "pairs": 0}
    for i in range(1, len(steps) + 1):
        for when in ("before", "after"):
            folder = root / f"run-{i}-{when}"
            ckpt.save_checkpoint(folder / "checkpoint", model, step=1)
            code = run_child(folder, model, 2, i, when)
            result["crashes"] += code == 9
            try:
                found = loaded_step(folder)
            except Exception as err:
                result["failures"].append(f"op {i} ({steps[i - 1]}) {when}: load failed: {err}")
                continue
            if found not in (1, 2):
                result["failures"].append(f"op {i} {when}: loaded step {found}")
                continue
            if pairs:  # kill the recovering save at each of its own steps, until it completes
                j, finished = 0, False
                while not finished:
                    j += 1
                    if j > 200:  # a save that never completes is a failure, not a hang
                        result["failures"].append(f"op {i} {when}: the next save never completed")
                        break
                    finished = True
                    for when2 in ("before", "after"):
                        twin = root / f"pair-{i}-{when}-{j}-{when2}"
                        shutil.copytree(folder, twin)
                        finished &= run_child(twin, model, 3, j, when2) == 0
                        result["pairs"] += 1
                        try:
                            if loaded_step(twin) not in (1, 2, 3):
                                raise ValueError("wrong step")
                        except Exception as err:
                            result["failures"].append(f"op {i} {when} then op {j} {when2}: {err}")
                        shutil.rmtree(twin)
            ckpt.save_checkpoint(folder / "checkpoint", model, step=3)
            # the run folder's writer lock file (fractalkit.filelock) is not a leftover
            left = sorted(p.name for p in folder.iterdir() if p.name != LOCK_FILE)
            if loaded_step(folder) != 3 or left != ["checkpoint"]:
                result["failures"].append(f"op {i} {when}: next save left {left}")
                continue
            result["recovered"] += 1
    shutil.rmtree(root)
    out.write_text(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
