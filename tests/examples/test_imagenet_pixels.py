"""The ImageNet pixel example: data, training with exact resumption, checkpoints, sampling,
completion, likelihood maps and multi-process training (tiny models, CPU)."""

from __future__ import annotations

import importlib.util
import json
import math
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from fractalkit.imagenet.data import HFImageDataset, NaturalCrops, load_image_dataset, split_indices
from fractalkit.imagenet.presets import build_preset
from fractalkit.training import CheckpointError, load_checkpoint, load_model, save_checkpoint
from fractalkit.training import checkpoint as checkpoint_module

ROOT = Path(__file__).resolve().parents[2]
EXAMPLE = ROOT / "examples" / "imagenet_pixels"
SAMPLES = ROOT / "tests" / "data"  # tiny slices of the real datasets (README there)
TINY_IMAGENET = SAMPLES / "tiny-imagenet-64" / "train.parquet"  # 40 rows
CIFAR = SAMPLES / "cifar10-32" / "train.parquet"  # 20 rows, labels up to 9


def script(name: str):
    """Import an example script under a unique module name (scripts share generic names)."""
    spec = importlib.util.spec_from_file_location(f"imagenet_pixels_{name}", EXAMPLE / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(autouse=True)
def one_thread():
    """Tiny models run fastest single-threaded (and the machine is shared); restored after."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def write_images(folder: Path, size: int, count: int = 2, classes=("a", "b")) -> None:
    from PIL import Image

    rng = np.random.default_rng(0)
    for c in classes:
        (folder / c).mkdir(parents=True, exist_ok=True)
        for i in range(count):
            arr = rng.integers(0, 256, (size, size, 3), dtype=np.uint8)
            Image.fromarray(arr).save(folder / c / f"{i}.png")


TRAIN_ARGS = ["--batch-size", "2", "--natural-count", "8", "--log-every", "1", "--no-progress", "--threads", "1"]


def read_log(run: Path) -> list[dict]:
    return [json.loads(line) for line in (run / "log.jsonl").read_text().splitlines()]


@pytest.fixture(scope="module")
def trained(tmp_path_factory) -> Path:
    """A tiny run of 2 steps (its checkpoint is reused by the sampling/completion tests)."""
    run = tmp_path_factory.mktemp("run") / "tiny"
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    script("train").main([*TRAIN_ARGS, "--steps", "2", "--out", str(run)])
    torch.set_num_threads(before)
    return run


# ---- data ----------------------------------------------------------------------------------------


def test_default_data_is_natural_crops():
    ds = load_image_dataset(None, 32, natural_count=6)
    assert isinstance(ds, NaturalCrops) and len(ds) == 6 and not ds.has_labels
    x, y = ds[0]
    assert x.dtype == torch.uint8 and x.shape == (3, 32, 32) and int(y) == -1


def test_missing_path():
    with pytest.raises(FileNotFoundError, match="does-not-exist"):
        load_image_dataset("/nonexistent/does-not-exist", 32)


def test_non_image_files(tmp_path):
    write_images(tmp_path, 32)
    (tmp_path / "a" / "notes.txt").write_text("not an image")
    with pytest.raises(ValueError, match=r"non-image file.*notes\.txt"):
        load_image_dataset(tmp_path, 32)
    with pytest.raises(ValueError, match=r"not a \.parquet file"):
        load_image_dataset(tmp_path / "a" / "notes.txt", 32)


def test_corrupt_image_file(tmp_path):
    write_images(tmp_path, 32, count=1)
    (tmp_path / "a" / "0.png").write_bytes(b"garbage, not a png")
    ds = load_image_dataset(tmp_path, 32, flip=False)
    with pytest.raises(ValueError, match="could not be decoded as an image"):
        [ds[i] for i in range(len(ds))]


def test_image_folder_labels_and_small_images(tmp_path):
    write_images(tmp_path, 16)
    ds = load_image_dataset(tmp_path, 16)
    assert ds.has_labels and ds.num_classes == 2 and len(ds) == 4
    assert ds[0][0].shape == (3, 16, 16)
    with pytest.raises(ValueError, match=r"16x16 pixels, smaller than the 32x32 crop"):
        load_image_dataset(tmp_path, 32)[0]
    up = load_image_dataset(tmp_path, 32, small="upsample")
    with pytest.warns(UserWarning, match="upsampling"):
        x, _ = up[0]
    assert x.shape == (3, 32, 32)
    with pytest.raises(ValueError, match=r"labels go up to 1 but the model has 1 classes"):
        load_image_dataset(tmp_path, 16, num_classes=1)


def test_center_crop_resize_and_seeded_flips(tmp_path):
    from PIL import Image

    (tmp_path / "c").mkdir()
    arr = np.zeros((40, 80, 3), dtype=np.uint8)
    arr[:, :40] = 255  # left half white: after a flip the right half is
    Image.fromarray(arr).save(tmp_path / "c" / "wide.png")
    a = load_image_dataset(tmp_path, 20, seed=3)
    b = load_image_dataset(tmp_path, 20, seed=3)
    seen = set()
    for epoch in range(8):
        a.set_epoch(epoch)
        b.set_epoch(epoch)
        xa, xb = a[0][0], b[0][0]
        assert torch.equal(xa, xb)  # same seed and epoch: same flip
        assert xa.shape == (3, 20, 20)
        seen.add(int(xa[0, 10, 0]))  # center crop of the middle: left column white or black
    assert seen == {0, 255}  # both orientations occur over epochs


def test_split_is_disjoint_and_seeded():
    tr, ho = split_indices(100, 0.1, "train", 0), split_indices(100, 0.1, "heldout", 0)
    assert len(ho) == 10 and len(tr) == 90 and not set(tr) & set(ho)
    assert np.array_equal(ho, split_indices(100, 0.1, "heldout", 0))


def test_tiny_imagenet_parquet():
    ds = load_image_dataset(TINY_IMAGENET, 64, num_classes=1000, holdout=0.05, part="heldout")
    assert isinstance(ds, HFImageDataset) and ds.has_labels and len(ds) == 2  # 5% of 40 rows
    x, y = ds[0]
    assert x.shape == (3, 64, 64) and x.dtype == torch.uint8 and 0 <= int(y) < 202
    small = load_image_dataset(TINY_IMAGENET, 32, split="train[:8]")
    assert len(small) == 8 and small[7][0].shape == (3, 32, 32)


def test_save_to_disk_dataset(tmp_path):
    from datasets import DatasetDict, load_dataset

    ds = load_dataset("parquet", data_files=str(CIFAR), split="train[:6]")
    ds.save_to_disk(str(tmp_path / "flat"))
    DatasetDict({"validation": ds}).save_to_disk(str(tmp_path / "dict"))
    flat = load_image_dataset(tmp_path / "flat", 32, num_classes=10)
    assert len(flat) == 6 and flat.has_labels and flat[5][0].shape == (3, 32, 32)
    assert len(load_image_dataset(tmp_path / "dict", 32, split="validation")) == 6
    with pytest.raises(ValueError, match=r"has splits \['validation'\], not 'train'"):
        load_image_dataset(tmp_path / "dict", 32)


def test_labels_beyond_classes_parquet():
    with pytest.raises(ValueError, match=r"labels go up to 9 but the model has 5 classes"):
        load_image_dataset(CIFAR, 32, num_classes=5)


def test_unknown_preset_on_the_command_line(capsys):
    with pytest.raises(SystemExit):
        script("train").parse_args(["--preset", "fractalmar-giant"])
    assert "invalid choice: 'fractalmar-giant'" in capsys.readouterr().err


def test_train_missing_data(tmp_path):
    with pytest.raises(FileNotFoundError, match="nowhere"):
        script("train").main([*TRAIN_ARGS, "--steps", "1", "--data", str(tmp_path / "nowhere"),
                              "--out", str(tmp_path / "run")])


# ---- training ------------------------------------------------------------------------------------


def test_bits_per_dim_falls(tmp_path):
    run = tmp_path / "run"
    script("train").main([*TRAIN_ARGS, "--steps", "8", "--lr", "4e-3", "--warmup-steps", "1",
                          "--natural-count", "6", "--holdout", "0.34", "--eval-every", "5",
                          "--eval-images", "2", "--out", str(run)])
    log = [r for r in read_log(run) if "train_bpd" in r]
    assert len(log) == 8
    held = [r for r in log if "heldout_bpd" in r]
    assert [r["step"] for r in held] == [5, 8] and held[0]["heldout_kind"] == "estimate"
    first, last = log[0]["train_bpd"], np.mean([r["train_bpd"] for r in log[-3:]])
    assert first > 7.9  # about log2(256) = 8 at initialisation
    assert last < first - 0.3, (first, last)
    assert (run / "curve.png").stat().st_size > 1000


def test_resume_gives_the_same_losses(tmp_path):
    train = script("train")
    common = [*TRAIN_ARGS, "--steps", "4", "--lr", "1e-3", "--ema"]
    train.main([*common, "--out", str(tmp_path / "a")])
    train.main([*common, "--out", str(tmp_path / "b"), "--stop-after", "2"])
    assert load_checkpoint(tmp_path / "b" / "checkpoint").step == 2
    train.main([*common, "--out", str(tmp_path / "b"), "--resume", str(tmp_path / "b")])
    a = {r["step"]: r["loss"] for r in read_log(tmp_path / "a") if "loss" in r}
    b = {r["step"]: r["loss"] for r in read_log(tmp_path / "b") if "loss" in r}
    assert set(a) == set(b) == {1, 2, 3, 4}
    for step in (3, 4):
        assert b[step] == a[step], (step, a[step], b[step])
    wa = load_checkpoint(tmp_path / "a" / "checkpoint").model.state_dict()
    wb = load_checkpoint(tmp_path / "b" / "checkpoint").model.state_dict()
    assert all(torch.equal(wa[k], wb[k]) for k in wa)


# ---- checkpoints ---------------------------------------------------------------------------------


def test_checkpoint_round_trip(trained):
    ck = load_checkpoint(trained / "checkpoint")
    assert ck.step == 2 and ck.optimizer is not None and ck.scheduler["last_step"] == 2
    assert ck.extra["preset"] == "tiny-in32" and len(ck.rng["model"]) == 1
    assert ck.config == ck.model.config.to_dict()
    # the model file alone is the library's format
    from fractalkit import Fractal

    model = Fractal.load(trained / "checkpoint" / "model.safetensors")
    assert all(torch.equal(a, b) for a, b in zip(model.parameters(), ck.model.parameters(), strict=True))


def test_truncated_and_corrupt_checkpoints(trained, tmp_path):
    for name, damage in [
        ("model.safetensors", "truncate"),
        ("trainer.pt", "truncate"),
        ("model.safetensors", "flip"),
        ("MANIFEST.json", "delete"),
        ("MANIFEST.json", "garble"),
    ]:
        bad = tmp_path / f"{name}-{damage}"
        shutil.copytree(trained / "checkpoint", bad)
        f = bad / name
        data = f.read_bytes()
        if damage == "truncate":
            f.write_bytes(data[: len(data) // 2])
        elif damage == "flip":
            f.write_bytes(data[:-10] + bytes([data[-10] ^ 0xFF]) + data[-9:])
        elif damage == "delete":
            f.unlink()
        else:
            f.write_text("{not json")
        with pytest.raises(CheckpointError, match=str(bad)) as info:
            load_checkpoint(bad)
        assert name in str(info.value) or "MANIFEST" in str(info.value)
        with pytest.raises(CheckpointError):
            load_model(bad)
    with pytest.raises(FileNotFoundError, match="no checkpoint"):
        load_checkpoint(tmp_path / "absent")


def test_interrupted_write_never_loads_as_valid(trained, tmp_path, monkeypatch):
    model = load_checkpoint(trained / "checkpoint").model
    target = tmp_path / "ck"
    real_dump = json.dump

    def crash(*args, **kwargs):
        raise KeyboardInterrupt("killed while writing the manifest")

    # 1. the first save dies before the manifest: nothing loads at the target
    monkeypatch.setattr(checkpoint_module.json, "dump", crash)
    with pytest.raises(KeyboardInterrupt):
        save_checkpoint(target, model, step=1)
    assert not target.exists()
    with pytest.raises(FileNotFoundError):
        load_checkpoint(target)
    # 2. a later save dies: the previous complete checkpoint is still there and valid
    monkeypatch.setattr(checkpoint_module.json, "dump", real_dump)
    save_checkpoint(target, model, step=5)
    monkeypatch.setattr(checkpoint_module.json, "dump", crash)
    with pytest.raises(KeyboardInterrupt):
        save_checkpoint(target, model, step=6)
    assert load_checkpoint(target).step == 5
    # 3. a process killed outright leaves a temporary folder, which never loads as valid
    monkeypatch.setattr(checkpoint_module.json, "dump", real_dump)
    leftover = tmp_path / "ck.tmp-killed"
    leftover.mkdir()
    shutil.copy(target / "model.safetensors", leftover / "model.safetensors")
    with pytest.raises(CheckpointError, match=r"MANIFEST\.json is missing"):
        load_checkpoint(leftover)
    save_checkpoint(target, model, step=7)  # the next save cleans it up
    assert not leftover.exists() and load_checkpoint(target).step == 7


# ---- sampling, completion, likelihood --------------------------------------------------------------


def test_sample_writes_a_grid_and_the_process(trained, tmp_path):
    from PIL import Image

    out = script("sample").main([
        "--checkpoint", str(trained), "--num-samples", "3", "--batch-size", "3", "--steps", "2,2",
        "--nrow", "3", "--scale", "1", "--out", str(tmp_path / "grid.png"),
        "--gif", str(tmp_path / "p.gif"), "--strip", str(tmp_path / "strip.png"), "--threads", "1",
    ])
    assert out["shape"] == [3, 3, 32, 32] and out["labels"] is None  # trained unconditionally
    with Image.open(tmp_path / "grid.png") as grid:
        assert grid.size == (3 * 34 + 2, 34 + 2) and grid.mode == "RGB"
    with Image.open(tmp_path / "p.gif") as gif:
        assert gif.n_frames >= 2
    with Image.open(tmp_path / "strip.png") as strip:
        assert strip.size == (2 * 34 + 2, 36)  # 2 top-level steps


def test_complete_keeps_known_pixels(trained, tmp_path):
    from PIL import Image

    out = script("complete").main([
        "--checkpoint", str(trained), "--photo", "chelsea", "--mask", "center", "--mask", "left-half",
        "--samples", "1", "--steps", "2,2", "--scale", "1", "--out", str(tmp_path / "c.png"), "--threads", "1",
    ])
    assert out["max_change_on_known_pixels"] == 0 and out["shape"] == [2, 3, 32, 32]
    with Image.open(tmp_path / "c.png") as grid:
        assert grid.size == (3 * 34 + 2, 2 * 34 + 2)
    # directly: a PNG mask, and the library's guarantee
    mask = np.zeros((32, 32), dtype=np.uint8)
    mask[8:24, 8:24] = 255
    Image.fromarray(mask).save(tmp_path / "mask.png")
    common = script("pixels_common")
    unknown = common.load_mask(str(tmp_path / "mask.png"), 32)
    assert int(unknown.sum()) == 256
    model = load_model(trained).eval()
    x = common.photo("astronaut", 32)[None]
    known = (~unknown)[None, None].expand(1, 3, 32, 32)
    y = model.complete(x, known, steps=(2, 2), generator=torch.Generator().manual_seed(0))
    assert torch.equal(y[known], x.long()[known])
    with pytest.raises(ValueError, match="unknown name 'middle'"):
        common.load_mask("middle", 32)
    with pytest.raises(FileNotFoundError, match="no mask file"):
        common.load_mask(str(tmp_path / "absent.png"), 32)


def test_evaluate_reports_kind_and_heatmap(trained, tmp_path):
    res = script("evaluate").main([
        "--checkpoint", str(trained), "--max-images", "4", "--batch-size", "4", "--draws", "2",
        "--heatmap", str(tmp_path / "heat.png"), "--heatmap-images", "1", "--threads", "1",
    ])
    assert res["kind"] == "estimate" and res["stderr"] > 0 and 7 < res["bits_per_dim"] < 9
    assert set(res["per_channel_bits"]) == {"R", "G", "B"}
    assert (tmp_path / "heat.png").stat().st_size > 1000


def test_heatmap_sums_to_the_exact_log_prob():
    evaluate = script("evaluate")
    model = build_preset("tiny-in32", num_classes=3).eval()
    x = torch.randint(0, 256, (2, 3, 32, 32))
    y = torch.tensor([0, 2])
    maps = evaluate.element_nll_map(model, x, y)
    assert maps.shape == (2, 3, 32, 32)
    exact = -model.log_prob(x, y, orders="identity").value.detach() / math.log(2)
    torch.testing.assert_close(maps.sum((1, 2, 3)), exact, rtol=1e-5, atol=1e-3)


# ---- several processes -----------------------------------------------------------------------------


@pytest.mark.slow
def test_torchrun_two_processes_keep_identical_weights(tmp_path):
    run = tmp_path / "ddp"
    env = dict(os.environ, OMP_NUM_THREADS="1", HF_DATASETS_OFFLINE="1")
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
           str(EXAMPLE / "train.py"), "--batch-size", "4", "--natural-count", "8", "--steps", "2",
           "--log-every", "1", "--no-progress", "--threads", "1", "--device", "cpu", "--out", str(run)]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    final = read_log(run)[-1]
    assert final["final"] and final["step"] == 2
    assert len(final["parameter_digests"]) == 2 and final["ranks_identical"]
    ck = load_checkpoint(run / "checkpoint")
    assert ck.step == 2 and len(ck.rng["model"]) == 2
