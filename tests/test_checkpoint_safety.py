"""Issue 14, classes 3 and 4 (library side): crash-consistent checkpoints, the user's umask,
and no non-finite weights on disk.

The fault-injection sweep runs tests/checkpoint_faults.py in a fresh process, which kills a
save (os._exit in a forked child) right before and right after each of its filesystem
operations in turn. Before the change a kill between the two renames left no loadable
checkpoint (and the next save deleted both complete copies); folders were created 0700; and
NaN weights were written.
"""

from __future__ import annotations

import json
import os
import stat
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from fractalkit.filelock import LOCK_FILE
from fractalkit.training import EMA, CheckpointError, load_checkpoint, load_model, save_checkpoint

sys.path.insert(0, str(Path(__file__).resolve().parent))
from checkpoint_faults import tiny_model

ROOT = Path(__file__).resolve().parents[1]


def _sweep(tmp_path: Path, *flags: str) -> dict:
    out = tmp_path / "faults.json"
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    proc = subprocess.run(
        [sys.executable, str(ROOT / "tests" / "checkpoint_faults.py"), str(out), *flags],
        capture_output=True, text=True, env=env, timeout=900,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads(out.read_text())


def test_a_kill_at_every_filesystem_step_of_a_save_leaves_a_loadable_checkpoint(tmp_path) -> None:
    result = _sweep(tmp_path)
    ops = result["operations"]
    # the save really goes through the file system: renames, writes and flushes are all counted
    # (the weights are written tensor by tensor through open(), fractalkit.persistence)
    assert {"mkdir", "replace", "fsync", "rmtree", "torch.save", "open-write"} <= set(ops)
    assert result["failures"] == []
    assert result["crashes"] >= 2 * len(ops) - 2  # every step but the no-op mkdir of a parent
    assert result["recovered"] == 2 * len(ops)


@pytest.mark.slow
def test_a_second_crash_during_the_recovering_save_still_leaves_a_checkpoint(tmp_path) -> None:
    result = _sweep(tmp_path, "--pairs")
    assert result["failures"] == []
    assert result["pairs"] >= (2 * len(result["operations"])) ** 2


def test_load_finds_the_previous_copy_when_the_folder_is_missing(tmp_path) -> None:
    """The state a crash between the two renames leaves: only checkpoint.old/ is complete."""
    model = tiny_model()
    save_checkpoint(tmp_path / "checkpoint", model, step=5)
    os.replace(tmp_path / "checkpoint", tmp_path / "checkpoint.old")
    for path in (tmp_path, tmp_path / "checkpoint"):
        assert load_checkpoint(path).step == 5
        assert isinstance(load_model(path), type(model))
    save_checkpoint(tmp_path / "checkpoint", model, step=6)  # recovers, then replaces
    assert sorted(p.name for p in tmp_path.iterdir() if p.name != LOCK_FILE) == ["checkpoint"]
    assert load_checkpoint(tmp_path).step == 6


@pytest.mark.parametrize("umask", [0o022, 0o002, 0o077])
def test_checkpoint_files_and_folders_follow_the_umask(tmp_path, umask: int) -> None:
    previous = os.umask(umask)
    try:
        model = tiny_model()
        ema = EMA(model, 0.9)
        folder = save_checkpoint(tmp_path / "run" / "checkpoint", model, step=1, ema=ema)
    finally:
        os.umask(previous)
    paths = [tmp_path / "run", folder, *folder.iterdir(), tmp_path / "run" / LOCK_FILE]
    assert len(paths) == 2 + 4 + 1  # model, ema, trainer, manifest; the run folder's lock
    for p in paths:
        mode = stat.S_IMODE(p.stat().st_mode)
        expected = (0o777 if p.is_dir() else 0o666) & ~umask
        assert mode == expected, f"{p.name}: {oct(mode)} != {oct(expected)}"


@pytest.mark.parametrize("where", ["first", "last", "ema"])
@pytest.mark.parametrize("bad", [float("nan"), float("inf")])
def test_non_finite_weights_are_never_written(tmp_path, where: str, bad: float) -> None:
    model = tiny_model()
    ema = EMA(model, 0.9)
    save_checkpoint(tmp_path / "checkpoint", model, step=1, ema=ema)
    before = {p.name: p.read_bytes() for p in (tmp_path / "checkpoint").iterdir()}
    params = list(model.parameters())
    with torch.no_grad():
        if where == "ema":
            next(iter(ema.state_dict().values())).view(-1)[0] = bad
        else:
            (params[0] if where == "first" else params[-1]).view(-1)[0] = bad
    with pytest.raises(CheckpointError, match="refusing to write non-finite weights at step 2"):
        save_checkpoint(tmp_path / "checkpoint", model, step=2, ema=ema)
    after = {p.name: p.read_bytes() for p in (tmp_path / "checkpoint").iterdir()}
    assert after == before
    assert sorted(p.name for p in tmp_path.iterdir() if p.name != LOCK_FILE) == ["checkpoint"]
