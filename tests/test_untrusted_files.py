"""Issue 21, class 3 (part): files this process did not make.

Three families and a static check, each failing on the code before the change:

- manifest/name traversal: a checkpoint ``MANIFEST.json`` that names a file outside its folder
  (``..``, an absolute path, a symbolic link out) or leaves out a file that is loaded; release
  names, release cache folders and Hub ids that would leave the cache root.
- not-JSON: every JSON file a loader reads from a folder it did not write (config.json,
  sampling.json, MANIFEST.json), as garbage and as a symbolic link to a binary file, gives an
  error naming the file, saying it is not valid JSON and what to do.
- every ``torch.load`` in fractalkit/, examples/ and benchmarks/ passes ``weights_only=True``.
"""

from __future__ import annotations

import importlib.util
import json
import re
import sys
from pathlib import Path

import pytest

from fractalkit import hub
from fractalkit.hub import PretrainedError
from fractalkit.training import EMA, CheckpointError, load_checkpoint, load_model, save_checkpoint

sys.path.insert(0, str(Path(__file__).resolve().parent))
from checkpoint_faults import tiny_model

ROOT = Path(__file__).resolve().parents[1]
BINARY = Path(sys.executable).resolve()  # some non-JSON, non-UTF-8 file that surely exists


@pytest.fixture(scope="module")
def model():
    return tiny_model()


# ---- manifest / name traversal ---------------------------------------------------------------


def _flip_a_bit(path: Path) -> None:
    data = bytearray(path.read_bytes())
    data[-3] ^= 0x01  # in the tensor data, past the header: still parses, different weights
    path.write_bytes(bytes(data))


def _outside(folder: Path, manifest: dict) -> None:
    manifest["files"]["../../outside.txt"] = {"bytes": 1, "sha256": "0" * 64}


def _absolute(folder: Path, manifest: dict) -> None:
    manifest["files"][str(folder.parent.parent / "outside.txt")] = {"bytes": 1, "sha256": "0" * 64}


def _link_out(folder: Path, manifest: dict) -> None:
    (folder / "notes.txt").symlink_to(folder.parent.parent / "outside.txt")
    manifest["files"]["notes.txt"] = {"bytes": 1, "sha256": "0" * 64}


def _model_left_out(folder: Path, manifest: dict) -> None:
    del manifest["files"]["model.safetensors"]
    _flip_a_bit(folder / "model.safetensors")


def _ema_left_out(folder: Path, manifest: dict) -> None:
    del manifest["files"]["ema.safetensors"]
    _flip_a_bit(folder / "ema.safetensors")


def _trainer_left_out(folder: Path, manifest: dict) -> None:
    del manifest["files"]["trainer.pt"]


HOSTILE_MANIFESTS = {
    "dotdot": (_outside, "not a file inside"),
    "absolute": (_absolute, "not a file inside"),
    "symlink-out": (_link_out, "not a file inside"),
    "model-left-out": (_model_left_out, "does not list model.safetensors"),
    "ema-left-out": (_ema_left_out, "does not list ema.safetensors"),
    "trainer-left-out": (_trainer_left_out, "does not list trainer.pt"),
}


@pytest.mark.parametrize("loader", ["load_checkpoint", "load_model"])
@pytest.mark.parametrize("case", sorted(HOSTILE_MANIFESTS))
def test_manifest_names_stay_inside_and_cover_every_loaded_file(model, tmp_path, case, loader):
    outside = tmp_path / "outside.txt"
    outside.write_text("a secret of 29 bytes, or so\n")
    folder = save_checkpoint(tmp_path / "run" / "checkpoint", model, step=3, ema=EMA(model))
    manifest = json.loads((folder / "MANIFEST.json").read_text())
    edit, expected = HOSTILE_MANIFESTS[case]
    edit(folder, manifest)
    (folder / "MANIFEST.json").write_text(json.dumps(manifest))
    load = load_checkpoint if loader == "load_checkpoint" else load_model
    with pytest.raises(CheckpointError, match=re.escape(expected)) as info:
        load(folder)
    assert "MANIFEST.json" in str(info.value)
    # nothing about the outside file (its size; the temporary folder's own name may hold digits)
    assert str(outside.stat().st_size) not in str(info.value).replace(str(tmp_path), "<tmp>")


@pytest.mark.parametrize("field,value", [
    # (names that are existing folders, like "..", load as folders: from_pretrained's first rule)
    ("name", "../escape"), ("name", "/tmp/no-such-escape"), ("name", "a/../../b"), ("name", "a/b"),
    ("folder", ".."), ("folder", "../.."), ("folder", "/etc"), ("folder", "x/../../y"),
])
def test_release_names_cannot_escape_the_cache_root(tmp_path, monkeypatch, field, value):
    kwargs = {"name": "safe", "folder": "fractalgen", field: value}
    release = hub.Release(kwargs["name"], "http://127.0.0.1:9/x.pth", 100_000,
                          convert=lambda path, cls: None, folder=kwargs["folder"])
    with pytest.raises(ValueError, match="not a plain folder name"):
        hub.register_release(release)
    assert release.name not in hub.RELEASES or hub.RELEASES[release.name] is not release
    # put into the table by hand: from_pretrained refuses it before creating anything
    cache = tmp_path / "deep" / "cache"
    monkeypatch.chdir(tmp_path)
    monkeypatch.setitem(hub.RELEASES, release.name, release)
    with pytest.raises(PretrainedError, match="not a plain folder name"):
        hub.from_pretrained(release.name, cache_dir=cache, offline=False, progress=False)
    assert not any(p.name == ".lock" for p in tmp_path.rglob("*"))


def test_a_cache_folder_linked_out_of_the_cache_is_refused(tmp_path, monkeypatch):
    release = hub.Release("linked", "http://127.0.0.1:9/x.pth", 100_000,
                          convert=lambda path, cls: None, folder="linkedfolder")
    monkeypatch.setitem(hub.RELEASES, release.name, release)
    cache = tmp_path / "cache"
    cache.mkdir()
    (tmp_path / "elsewhere").mkdir()
    (cache / "linkedfolder").symlink_to(tmp_path / "elsewhere")
    with pytest.raises(PretrainedError, match="outside the cache root"):
        hub.from_pretrained("linked", cache_dir=cache, progress=False)
    assert not (tmp_path / "elsewhere" / "linked").exists()


@pytest.mark.parametrize("repo_id", ["owner/..", "owner/.", "a--b/c", "owner/x..y", "own er/x"])
def test_hub_ids_that_are_not_plain_names_are_refused(tmp_path, monkeypatch, repo_id):
    import huggingface_hub

    def snapshot_download(*args, **kwargs):  # must never be reached
        raise AssertionError("snapshot_download was called")

    monkeypatch.setattr(huggingface_hub, "snapshot_download", snapshot_download)
    monkeypatch.chdir(tmp_path)
    with pytest.raises(PretrainedError, match="not a Hugging Face Hub id"):
        hub.from_pretrained(repo_id, cache_dir=tmp_path / "hf")


# ---- not JSON --------------------------------------------------------------------------------


def _pretrained(model, tmp_path: Path, name: str) -> Path:
    from fractalkit import SampleOptions

    folder = tmp_path / "folder"
    hub.save_pretrained(model, folder, sampling=SampleOptions(temperature=1.0))
    return folder / name


def _checkpoint(model, tmp_path: Path, name: str) -> Path:
    return save_checkpoint(tmp_path / "run" / "checkpoint", model, step=1) / name


def _checkpoint_info(path: Path):
    """The imagenet_pixels example's run info (a checkpoint's stored arguments)."""
    import importlib.util

    folder = ROOT / "examples" / "imagenet_pixels"
    sys.path.insert(0, str(folder))
    try:
        spec = importlib.util.spec_from_file_location("pixels_common", folder / "pixels_common.py")
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
    finally:
        sys.path.remove(str(folder))
    return module.checkpoint_info(path.parent)


def _user_error():
    from fractalkit.cli import UserError

    return UserError


NOT_JSON_FILES = {
    # file -> (make the folder, load it, the error class, a word of the fix)
    "config.json": (_pretrained, lambda p: hub.from_pretrained(p.parent), PretrainedError,
                    "save_pretrained"),
    "sampling.json": (_pretrained, lambda p: hub.from_pretrained(p.parent), PretrainedError,
                      "delete it"),
    "MANIFEST.json/load_checkpoint": (_checkpoint, lambda p: load_checkpoint(p.parent),
                                      CheckpointError, "older copy"),
    "MANIFEST.json/load_model": (_checkpoint, lambda p: load_model(p.parent), CheckpointError,
                                 "older copy"),
    "MANIFEST.json/run-info": (_checkpoint, _checkpoint_info, _user_error(), "older copy"),
}


@pytest.mark.parametrize("content", ["garbage", "binary-link"])
@pytest.mark.parametrize("which", sorted(NOT_JSON_FILES))
def test_a_json_file_that_is_not_json_names_the_file_and_the_fix(model, tmp_path, which, content):
    make, load, error, fix = NOT_JSON_FILES[which]
    path = make(model, tmp_path, which.split("/")[0])
    path.unlink()
    if content == "garbage":
        path.write_text("{this is not json")
    else:
        path.symlink_to(BINARY)
    with pytest.raises(error) as info:
        load(path)
    message = str(info.value)
    assert str(path) in message and "not valid JSON" in message and fix in message, message


# ---- torch.load ------------------------------------------------------------------------------

#: The one full unpickle, behind the converter's explicit ``trust_pickle=True`` opt-in (with a
#: warning), for FractalGen files holding more than tensors: file -> number of such calls.
EXPLICIT_TRUST = {"fractalkit/imagenet/convert.py": 1}


def test_every_torch_load_passes_weights_only_true():
    calls, unsafe = 0, []
    for top in ("fractalkit", "examples", "benchmarks"):
        for path in sorted((ROOT / top).rglob("*.py")):
            text = path.read_text()
            rel = str(path.relative_to(ROOT))
            trusted = 0
            for match in re.finditer(r"torch\.load\(", text):
                # the call's arguments: up to the matching closing parenthesis
                depth, i = 1, match.end()
                while depth and i < len(text):
                    depth += {"(": 1, ")": -1}.get(text[i], 0)
                    i += 1
                args = text[match.end():i]
                calls += 1
                if "weights_only=False" in args and trusted < EXPLICIT_TRUST.get(rel, 0):
                    trusted += 1
                elif "weights_only=True" not in args:
                    unsafe.append(f"{rel}: torch.load({args}")
    assert calls >= 3  # the scan sees the calls at all
    assert unsafe == [], unsafe


def test_a_training_log_line_that_is_not_json_names_the_file_and_line(tmp_path):
    pytest.importorskip("matplotlib")  # the plot's own optional dependency
    folder = ROOT / "examples" / "imagenet_pixels"
    sys.path.insert(0, str(folder))
    try:
        spec = importlib.util.spec_from_file_location("imagenet_pixels_train_untrusted", folder / "train.py")
        train = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(train)
    finally:
        sys.path.remove(str(folder))
    log = tmp_path / "log.jsonl"
    log.write_text('{"step": 1, "train_bpd": 3.0}\n{half a line\n')
    with pytest.raises(_user_error(), match=r"log\.jsonl, line 2, is not valid JSON.*delete that line"):
        train.plot_curve(log, tmp_path / "curve.png", "t")
