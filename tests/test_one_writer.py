"""Issue 21, class 4: one run folder, one writer.

A first writer runs in another process (tests/writer_child.py: a ``Trainer.fit`` with a run
folder, or a ``save_checkpoint`` stopped halfway with its temporary folder on disk). A second
writer of the same folder (``save_checkpoint`` or ``Trainer.fit`` here) is refused with a
message naming the first (pid, host, since when, command), and the first's temporary folder is
left alone. Once the first has exited, normally or by SIGKILL (its lock is then stale), the next
writer proceeds, and a killed writer's half-written temporary folder is cleaned up.

Before the change the second writer went ahead, and its recovery deleted the live writer's
temporary folder. One case (a Trainer first, a save_checkpoint second, a normal exit) runs under
the slow marker.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from fractalkit.filelock import FolderInUseError, writer_lock
from fractalkit.testing import tiny_fractal
from fractalkit.training import Trainer, load_checkpoint, save_checkpoint

ROOT = Path(__file__).resolve().parents[1]


def _start(run: Path, mode: str) -> subprocess.Popen:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    child = subprocess.Popen(
        [sys.executable, str(ROOT / "tests" / "writer_child.py"), str(run), mode],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env,
    )
    deadline = time.monotonic() + 120
    while not (run.parent / "ready").exists():
        if child.poll() is not None:
            raise AssertionError(f"the first writer exited early: {child.communicate()[1][-3000:]}")
        if time.monotonic() > deadline:
            child.kill()
            raise AssertionError("the first writer never took the run folder")
        time.sleep(0.02)
    return child


def _write(run: Path, how: str, step: int) -> None:
    """A second writer of ``run`` in this process."""
    torch.manual_seed(1)
    model = tiny_fractal()
    if how == "save_checkpoint":
        save_checkpoint(run / "checkpoint", model, step=step)
    else:
        opt = torch.optim.SGD(model.parameters(), lr=1e-3)
        trainer = Trainer(model, opt, generator=torch.Generator(), steps=step, out=run)
        trainer.fit(lambda g: torch.randint(0, 3, (4, 4), generator=g))


def _temporaries(run: Path) -> list[Path]:
    return sorted(run.glob("checkpoint.tmp-*"))


@pytest.mark.parametrize(
    ("first", "second", "end"),
    [
        # each case starts a Python process (~3 s); this one adds little to the three below
        pytest.param("trainer", "save_checkpoint", "exit", marks=pytest.mark.slow),
        ("trainer", "trainer", "sigkill"),
        ("save", "save_checkpoint", "sigkill"),
        ("save", "trainer", "exit"),
    ],
)
def test_a_second_writer_is_refused_until_the_first_is_gone(
    tmp_path: Path, first: str, second: str, end: str
) -> None:
    run = tmp_path / "run"
    child = _start(run, first)
    try:
        live = _temporaries(run)
        assert len(live) == (1 if first == "save" else 0)
        with pytest.raises(FolderInUseError) as err:
            _write(run, second, step=2)
        message = str(err.value)
        assert f"the run folder {run} is in use by another writer: process {child.pid} " in message
        assert f"on host {socket.gethostname()}, since " in message
        assert "writer_child.py" in message  # its command line
        assert _temporaries(run) == live  # the live writer's temporary folder is untouched
        assert child.poll() is None
    finally:
        if end == "exit":
            (tmp_path / "release").write_text("go")
        else:
            child.kill()  # SIGKILL: no cleanup of its own, its lock is left behind
        _, stderr = child.communicate(timeout=120)
    if end == "exit":
        assert child.returncode == 0, stderr[-3000:]
    else:
        assert child.returncode == -9
    _write(run, second, step=2)  # the lock of an exited process does not block the next writer
    assert load_checkpoint(run).step == 2
    assert _temporaries(run) == []  # a dead writer's temporary folder is cleaned up


def test_one_process_may_nest_its_own_writer_lock(tmp_path: Path) -> None:
    # a Trainer holds its run folder, and its checkpoint saves take the same lock
    with writer_lock(tmp_path, what="outer"), writer_lock(tmp_path, what="inner"):
        save_checkpoint(tmp_path / "checkpoint", tiny_fractal(), step=0)
    assert load_checkpoint(tmp_path).step == 0


def test_the_quick_start_refuses_a_run_folder_in_use_before_touching_its_log(tmp_path: Path) -> None:
    """examples/digits --run-dir: a new run removes the folder's older log.jsonl; with another
    writer in the folder it is refused first, and the log stays."""
    pytest.importorskip("sklearn", reason="scikit-learn (the examples extra) is not installed")
    import importlib.util

    spec = importlib.util.spec_from_file_location("digits_example", ROOT / "examples" / "digits" / "train.py")
    example = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(example)
    run = tmp_path / "run"
    run.mkdir()
    (run / "log.jsonl").write_text('{"step": 1}\n')
    child = _start(run, "trainer")
    try:
        with pytest.raises(FolderInUseError, match=rf"--run-dir: the run folder .* process {child.pid} "):
            example.run(tmp_path / "out", model_out=tmp_path / "model", steps=1, per_class=1,
                        progress=False, run_dir=run)
        assert (run / "log.jsonl").read_text() == '{"step": 1}\n'
    finally:
        child.kill()
        child.communicate(timeout=120)
