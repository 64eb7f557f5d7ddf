"""save_pretrained replaces a folder atomically (issue 21 class 3): a full disk at any file write,
or a crash between the renames, leaves the old model or the new one loadable.

The ENOSPC family saves a model of another architecture over a folder holding a saved model and
fails the i-th file write of the save (the weights through safetensors, then each JSON and the
model card through ``open``), writing half of it first as a full disk does; the old folder must
still load with its old weights and sampling settings, and nothing may be left beside it.
"""

from __future__ import annotations

import builtins
import errno
from pathlib import Path

import pytest
import safetensors.torch
import torch
from test_hub import TINY_HEADS, _fixture

from fractalkit import Fractal, SampleOptions, hub
from fractalkit.imagenet import convert as fg

OLD_OPTIONS = SampleOptions(guidance=2.0, temperature=0.9, steps=(4, 2))
#: the file writes of one save_pretrained with sampling settings, in order
WRITES = ["model.safetensors", "config.json", "sampling.json", "README.md"]


@pytest.fixture(scope="module")
def models():
    old = fg.load_fractalgen(_fixture("tiny_mar_16")[0], heads=TINY_HEADS)
    new = fg.load_fractalgen(_fixture("tiny_ar_16")[0], heads=TINY_HEADS)
    return old, new


def _same_weights(a, b) -> bool:
    sa, sb = a.state_dict(), b.state_dict()
    return sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)


class DiskFull:
    """Fail the ``at``-th file write (0-based) with ENOSPC after writing half of it."""

    def __init__(self, at: int):
        self.at, self.seen = at, []
        self.real_open, self.real_save_file = builtins.open, safetensors.torch.save_file

    def _turn(self, name: str) -> bool:
        self.seen.append(name)
        return len(self.seen) - 1 == self.at

    def save_file(self, tensors, filename, metadata=None):
        if self._turn(Path(filename).name.removesuffix(".tmp")):
            self.real_save_file(tensors, filename, metadata=metadata)
            data = Path(filename).read_bytes()
            Path(filename).write_bytes(data[: len(data) // 2])
            raise OSError(errno.ENOSPC, "No space left on device", str(filename))
        return self.real_save_file(tensors, filename, metadata=metadata)

    def open(self, file, mode="r", *args, **kwargs):
        f = self.real_open(file, mode, *args, **kwargs)
        if any(c in mode for c in "wax+") and self._turn(Path(file).name.removesuffix(".tmp")):
            real_write = f.write

            def write(data):
                real_write(data[: len(data) // 2])
                raise OSError(errno.ENOSPC, "No space left on device", str(file))

            f.write = write
        return f


@pytest.mark.parametrize("at", range(len(WRITES)), ids=WRITES)
def test_a_full_disk_at_any_write_leaves_the_old_model(models, tmp_path, monkeypatch, at):
    old, new = models
    folder = hub.save_pretrained(old, tmp_path / "model", sampling=OLD_OPTIONS)
    (folder / "notes.txt").write_text("the user's own file\n")
    before = sorted(p.name for p in tmp_path.iterdir())
    disk = DiskFull(at)
    with monkeypatch.context() as m:
        m.setattr(safetensors.torch, "save_file", disk.save_file)
        m.setattr(builtins, "open", disk.open)
        with pytest.raises(OSError, match="No space left") as err:
            hub.save_pretrained(new, folder, sampling=SampleOptions(guidance=1.5))
    assert err.value.errno == errno.ENOSPC
    assert disk.seen[: at + 1] == WRITES[: at + 1]  # the failure hit the write it was meant for
    loaded = Fractal.from_pretrained(folder)
    assert _same_weights(loaded, old) and loaded.config == old.config
    assert loaded.pretrained_options == OLD_OPTIONS
    assert (folder / "notes.txt").read_text() == "the user's own file\n"
    assert sorted(p.name for p in tmp_path.iterdir()) == before  # no temporary folder left
    # and with space again, the new model replaces it whole
    hub.save_pretrained(new, folder)
    loaded = Fractal.from_pretrained(folder)
    assert _same_weights(loaded, new) and loaded.pretrained_options is None
    assert not (folder / "sampling.json").exists()  # the old model's settings went with it
    assert (folder / "notes.txt").read_text() == "the user's own file\n"


def test_the_family_counts_every_write(models, tmp_path, monkeypatch):
    """One save with sampling settings makes exactly these writes (the family covers each)."""
    disk = DiskFull(-1)
    with monkeypatch.context() as m:
        m.setattr(safetensors.torch, "save_file", disk.save_file)
        m.setattr(builtins, "open", disk.open)
        hub.save_pretrained(models[0], tmp_path / "m", sampling=OLD_OPTIONS)
    assert disk.seen == WRITES


@pytest.mark.parametrize("exchange", [True, False], ids=["renameat2", "two-renames"])
def test_replacing_a_folder_keeps_other_files_and_leaves_nothing_beside(models, tmp_path, monkeypatch, exchange):
    old, new = models
    if not exchange:
        monkeypatch.setattr(hub, "_exchange", lambda a, b: False)
    folder = hub.save_pretrained(old, tmp_path / "model", sampling=OLD_OPTIONS)
    (folder / "logs").mkdir()
    (folder / "logs" / "run.txt").write_text("kept\n")
    hub.save_pretrained(new, folder)
    assert _same_weights(Fractal.from_pretrained(folder), new)
    assert (folder / "logs" / "run.txt").read_text() == "kept\n"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model"]


def test_a_crash_between_the_renames_says_where_the_old_model_is(models, tmp_path):
    folder = hub.save_pretrained(models[0], tmp_path / "model")
    aside = tmp_path / ".model.old-abc123"
    folder.rename(aside)  # what the two-rename fallback leaves after a crash at that instant
    with pytest.raises(hub.PretrainedError, match=r"\.model\.old-abc123 holds the model") as err:
        Fractal.from_pretrained(folder)
    assert "rename that folder back" in str(err.value)
    aside.rename(folder)
    assert _same_weights(Fractal.from_pretrained(folder), models[0])


def test_save_pretrained_onto_a_file_is_refused(models, tmp_path):
    (tmp_path / "f").write_text("x")
    with pytest.raises(NotADirectoryError, match="is a file"):
        hub.save_pretrained(models[0], tmp_path / "f")


def test_a_folder_that_cannot_be_renamed_is_replaced_file_by_file(models, tmp_path, monkeypatch):
    """A mount point cannot be renamed (EBUSY): the files are replaced one by one instead."""
    old, new = models
    folder = hub.save_pretrained(old, tmp_path / "model", sampling=OLD_OPTIONS)
    real_replace = hub.os.replace

    def busy(src, dst):
        if Path(src) == folder:
            raise OSError(errno.EBUSY, "Device or resource busy", str(src))
        return real_replace(src, dst)

    monkeypatch.setattr(hub, "_exchange", lambda a, b: False)
    monkeypatch.setattr(hub.os, "replace", busy)
    hub.save_pretrained(new, folder)
    monkeypatch.undo()
    loaded = Fractal.from_pretrained(folder)
    assert _same_weights(loaded, new) and loaded.pretrained_options is None
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model"]


def test_a_folder_in_a_parent_that_may_not_be_written_is_replaced_file_by_file(models, tmp_path, monkeypatch):
    old, new = models
    folder = hub.save_pretrained(old, tmp_path / "model", sampling=OLD_OPTIONS)
    real_mkdtemp = hub.tempfile.mkdtemp

    def mkdtemp(prefix=None, dir=None):
        if Path(dir) == tmp_path:
            raise PermissionError(13, "Permission denied", str(dir))
        return real_mkdtemp(prefix=prefix, dir=dir)

    monkeypatch.setattr(hub.tempfile, "mkdtemp", mkdtemp)
    hub.save_pretrained(new, folder)
    monkeypatch.undo()
    loaded = Fractal.from_pretrained(folder)
    assert _same_weights(loaded, new) and loaded.pretrained_options is None
    assert sorted(p.name for p in folder.iterdir()) == ["README.md", "config.json", "model.safetensors"]
