"""Issue 22 item 2 (data by name) and issue 21 class 5 (the example command lines' data and
device arguments).

- Each example's default data is a public dataset's name on the Hugging Face Hub. The download
  is replaced by a fake Hub (``datasets.load_dataset`` patched) that serves, under each name, a
  copy of the slice in ``tests/data`` laid out with that dataset's own columns (CIFAR-10's
  ``img``, the spoken digits' ``audio``/``label`` and file names, one text row per split ...):
  the name must resolve through the column mapping to what the local copy gives. No network.
- Offline without a cache: one message naming the dataset, its page, the local forms and the
  ``--data`` override (real ``datasets``, ``HF_DATASETS_OFFLINE=1``, an empty cache).
- A bad-argument family over every example script that takes data or device arguments: exit
  code 2 and one line naming the argument, never a traceback.
"""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import numpy as np
import pytest

from fractalkit import cli
from fractalkit.data import hub_datasets

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT / "tests" / "data"


def load(path: Path):
    """Import an example script as a module (its folder on sys.path, as when run)."""
    sys.path.insert(0, str(path.parent))
    try:
        spec = importlib.util.spec_from_file_location(f"byname_{path.parent.name}_{path.stem}", path)
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
    finally:
        sys.path.remove(str(path.parent))
    return module


# ---- a fake Hub built from tests/data ------------------------------------------------------------


def _parquet(path: Path):
    import datasets

    return datasets.load_dataset("parquet", data_files=str(path), split="train")


def _hub_layouts() -> dict[str, dict]:
    """name -> {split: datasets.Dataset} in the Hub dataset's own column layout."""
    import datasets

    tiny = _parquet(DATA / "tiny-imagenet-64" / "train.parquet")
    cifar = _parquet(DATA / "cifar10-32" / "train.parquet").rename_column("image", "img")
    fsdd = _parquet(DATA / "fsdd-8k" / "recordings.parquet")
    audio = [{"bytes": b, "path": f"{d}_{s}_{i}.wav"}
             for b, d, s, i in zip(fsdd["audio_wav"], fsdd["digit"], fsdd["speaker"], fsdd["index"], strict=True)]
    spoken = datasets.Dataset.from_dict({"audio": audio, "label": fsdd["digit"]})
    spoken = spoken.cast_column("audio", datasets.Audio())  # the Hub's feature (decoded on access)
    smiles = (DATA / "qm9" / "qm9.csv").read_text().splitlines()[1:]
    qm9 = datasets.Dataset.from_dict({"smiles": smiles, "canonical_smiles": smiles, "qed": [0.5] * len(smiles)})
    text = (DATA / "tinyshakespeare" / "input.txt").read_text(encoding="utf-8")
    a, b = int(0.9 * len(text)), int(0.95 * len(text))
    shakespeare = {split: datasets.Dataset.from_dict({"text": [part]})
                   for split, part in (("train", text[:a]), ("validation", text[a:b]), ("test", text[b:]))}
    npz = np.load(DATA / "graphs" / "ego_small_edges.npz")
    offsets = npz["edge_offsets"]
    graphs = datasets.Dataset.from_dict({
        "edge_index": [npz["edges"][offsets[g]:offsets[g + 1]].T.tolist() for g in range(len(npz["num_nodes"]))],
        "num_nodes": npz["num_nodes"].tolist(),
        "y": [[0]] * len(npz["num_nodes"]),
    })
    return {
        "zh-plus/tiny-imagenet": {"train": tiny, "valid": tiny},
        "uoft-cs/cifar10": {"train": cifar, "test": cifar},
        "silky1708/Free-Spoken-Digit-Dataset": {"train": spoken},
        "yairschiff/qm9": {"train": qm9},
        "karpathy/tiny_shakespeare": shakespeare,
        "graphs-datasets/ego-small-test": {"train": graphs},
    }


@pytest.fixture(scope="module")
def layouts():
    return _hub_layouts()


@pytest.fixture
def fake_hub(monkeypatch, layouts):
    """``datasets.load_dataset(name, split=...)`` served from :func:`_hub_layouts`; other calls
    (parquet files, image folders) go to the real function. Returns the list of names asked."""
    import datasets

    real = datasets.load_dataset
    asked: list[str] = []

    def load_dataset(path, *args, split=None, **kwargs):
        if path not in layouts:
            return real(path, *args, split=split, **kwargs)
        asked.append(path)
        parts = [layouts[path][s] for s in (split or "train").split("+")]
        return datasets.concatenate_datasets(parts) if len(parts) > 1 else parts[0]

    monkeypatch.setattr(datasets, "load_dataset", load_dataset)
    return asked


def test_each_example_default_is_a_known_public_name() -> None:
    text = load(ROOT / "examples" / "text" / "train.py")
    audio = load(ROOT / "examples" / "audio" / "train.py")
    molecules = load(ROOT / "examples" / "molecules" / "train.py")
    levels = load(ROOT / "benchmarks" / "levels_study.py")
    for default in (text.DATA, audio.DATA, molecules.DATA, levels.DATA):
        assert default in hub_datasets.KNOWN and hub_datasets.is_hub_name(default)
        info = hub_datasets.KNOWN[default]
        assert info.url == f"https://huggingface.co/datasets/{default}" and info.local_example.startswith("--data ")


@pytest.mark.parametrize("script", ["text/train.py", "audio/train.py", "molecules/train.py", "molecules/conditional.py"])
def test_each_command_line_defaults_to_its_name(script, monkeypatch) -> None:
    import argparse

    class Stop(Exception):
        pass

    def stop(self, args=None, namespace=None):
        raise Stop(self.get_default("data"))

    module = load(ROOT / "examples" / script)
    monkeypatch.setattr(argparse.ArgumentParser, "parse_args", stop)
    with pytest.raises(Stop) as info:
        module.main([])
    assert info.value.args[0] in hub_datasets.KNOWN


def test_the_text_default_resolves_to_the_whole_text(fake_hub) -> None:
    T = load(ROOT / "examples" / "text" / "train.py")
    data, vocab = T.load_corpus(T.DATA)
    local, local_vocab = T.load_corpus(DATA / "tinyshakespeare" / "input.txt")
    assert fake_hub == [T.DATA] and vocab == local_vocab and data.equal(local)


def test_the_audio_default_resolves_to_the_same_clips(fake_hub) -> None:
    A = load(ROOT / "examples" / "audio" / "train.py")
    hub = A.load_clips(A.DATA, length=256)
    local = A.load_clips(DATA / "fsdd-8k" / "recordings.parquet", length=256)
    assert fake_hub == [A.DATA] and set(hub) == set(local) == {"x", "lengths", "digit", "speaker", "index"}
    for key in local:
        assert hub[key].equal(local[key]), key
    assert A.speaker_names(A.DATA) == A.speaker_names(DATA / "fsdd-8k" / "recordings.parquet")


def test_the_molecules_default_resolves_to_the_smiles_column(fake_hub) -> None:
    M = load(ROOT / "examples" / "molecules" / "train.py")
    assert M.read_smiles(M.DATA, limit=50) == M.read_smiles(DATA / "qm9" / "qm9.csv", limit=50)
    assert fake_hub == [M.DATA]


@pytest.mark.parametrize("name, size, column", [("zh-plus/tiny-imagenet", 64, "image"), ("uoft-cs/cifar10", 32, "img")])
def test_an_image_name_resolves_with_image_and_label(fake_hub, name, size, column) -> None:
    from fractalkit.imagenet.data import load_image_dataset

    local_file = DATA / ("tiny-imagenet-64" if size == 64 else "cifar10-32") / "train.parquet"
    hub = load_image_dataset(name, size, flip=False)
    local = load_image_dataset(local_file, size, flip=False)
    assert fake_hub == [name] and hub.image_column == "image" and hub.label_column == "label"
    assert len(hub) == len(local) and hub.has_labels
    for i in (0, len(hub) - 1):
        assert hub[i][0].equal(local[i][0]) and hub[i][1] == local[i][1]


def test_the_levels_study_default_resolves(fake_hub) -> None:
    L = load(ROOT / "benchmarks" / "levels_study.py")
    train, test = L.load_cifar(12, 4)
    assert fake_hub == [L.DATA] and train.shape == (12, 3, 32, 32) and test.shape == (4, 3, 32, 32)


def test_graphs_take_a_hub_name_in_the_graph_datasets_layout(fake_hub) -> None:
    G = load(ROOT / "examples" / "graphs" / "train.py")
    hub = G.load_graphs("ego_small", data="graphs-datasets/ego-small-test")
    local = G.load_graphs("ego_small", data=DATA / "graphs")
    assert hub.adjacency.equal(local.adjacency) and hub.node_mask.equal(local.node_mask)


# ---- offline without a cache ---------------------------------------------------------------------


@pytest.fixture
def empty_cache(tmp_path, monkeypatch):
    """Real ``datasets`` offline (tests/conftest.py sets HF_DATASETS_OFFLINE=1) over empty caches."""
    import datasets

    monkeypatch.setattr(datasets.config, "HF_DATASETS_OFFLINE", True)
    monkeypatch.setattr(datasets.config, "HF_DATASETS_CACHE", tmp_path / "datasets")
    monkeypatch.setattr(datasets.config, "HF_HUB_OFFLINE", True, raising=False)
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    return tmp_path


@pytest.mark.parametrize("name", sorted(hub_datasets.KNOWN))
def test_offline_without_a_cache_says_what_to_download_and_where(empty_cache, name) -> None:
    info = hub_datasets.KNOWN[name]
    with pytest.raises(hub_datasets.DatasetUnavailableError) as caught:
        hub_datasets.load_hub_dataset(name, kind=info.kind)
    message = str(caught.value)
    assert "\n" not in message and "Traceback" not in message
    assert name in message and info.url in message and info.local_example in message and "offline" in message
    assert isinstance(caught.value, FileNotFoundError)  # callers catching a missing path keep working
    if info.gated:
        assert "huggingface-cli login" in message and "HF_TOKEN" in message


# ---- the bad-argument family -----------------------------------------------------------------------

EX = ROOT / "examples"


def _files(tmp: Path) -> dict[str, str]:
    """Bad inputs: an empty file, a binary one, an empty folder, a file where a folder goes."""
    (tmp / "empty.txt").write_bytes(b"")
    (tmp / "empty.parquet").write_bytes(b"")
    (tmp / "bytes.txt").write_bytes(bytes(range(256)) * 8)
    (tmp / "bytes.csv").write_bytes(bytes(range(256)) * 8)
    (tmp / "notes.txt").write_text("not audio\n")
    (tmp / "emptydir").mkdir()
    (tmp / "afile").write_text("x\n")
    (tmp / "ref.npz").write_bytes(b"x")
    return {"tmp": str(tmp)}


#: (id, script, argv, words the one line must hold)
BAD = [
    ("text-missing", EX / "text/train.py", ["--data", "{tmp}/nothere.txt"], "no such file"),
    ("text-empty", EX / "text/train.py", ["--data", "{tmp}/empty.txt"], "empty file"),
    ("text-binary", EX / "text/train.py", ["--data", "{tmp}/bytes.txt"], "binary"),
    ("text-folder", EX / "text/train.py", ["--data", "{tmp}/emptydir"], "is a folder"),
    ("text-out-file", EX / "text/train.py", ["--out", "{tmp}/afile"], "not a folder"),
    ("text-device-gpu", EX / "text/train.py", ["--device", "gpu"], "not a device"),
    ("text-device-cuda99", EX / "text/train.py", ["--device", "cuda:99"], "--device cuda:99"),
    ("text-offline-default", EX / "text/train.py", [], "karpathy/tiny_shakespeare"),
    ("audio-missing", EX / "audio/train.py", ["--data", "{tmp}/nothere.parquet"], "no such file"),
    ("audio-empty", EX / "audio/train.py", ["--data", "{tmp}/empty.parquet"], "empty file"),
    ("audio-wrong-kind", EX / "audio/train.py", ["--data", "{tmp}/notes.txt"], ".parquet"),
    ("audio-folder", EX / "audio/train.py", ["--data", "{tmp}/emptydir"], "is a folder"),
    ("audio-eval-index-99", EX / "audio/train.py", ["--eval-index", "99"], "--eval-index 99"),
    ("audio-out-file", EX / "audio/train.py",
     ["--data", str(DATA / "fsdd-8k/recordings.parquet"), "--out", "{tmp}/afile"], "not a folder"),
    ("audio-offline-default", EX / "audio/train.py", [], "Free-Spoken-Digit-Dataset"),
    ("molecules-missing", EX / "molecules/train.py", ["--data", "{tmp}/nothere.csv"], "no such file"),
    ("molecules-empty", EX / "molecules/train.py", ["--data", "{tmp}/empty.txt"], "empty file"),
    ("molecules-binary", EX / "molecules/train.py", ["--data", "{tmp}/bytes.csv"], "binary"),
    ("molecules-folder", EX / "molecules/train.py", ["--data", "{tmp}/emptydir"], "is a folder"),
    ("molecules-device-gpu", EX / "molecules/train.py", ["--device", "gpu"], "not a device"),
    ("molecules-device-cuda99", EX / "molecules/train.py", ["--device", "cuda:99"], "--device cuda:99"),
    ("conditional-missing", EX / "molecules/conditional.py", ["--data", "{tmp}/nothere.csv"], "no such file"),
    ("conditional-binary", EX / "molecules/conditional.py", ["--data", "{tmp}/bytes.csv"], "binary"),
    ("conditional-device-gpu", EX / "molecules/conditional.py", ["--device", "gpu"], "not a device"),
    ("graphs-missing", EX / "graphs/train.py", ["--data", "{tmp}/nothere"], "no such file"),
    ("graphs-file", EX / "graphs/train.py", ["--data", "{tmp}/afile"], "is a file"),
    ("graphs-empty-folder", EX / "graphs/train.py", ["--data", "{tmp}/emptydir"], "empty folder"),
    ("graphs-out-file", EX / "graphs/train.py", ["--data", str(DATA / "graphs"), "--out", "{tmp}/afile"],
     "not a folder"),
    ("digits-out-file", EX / "digits/train.py", ["--out", "{tmp}/afile"], "not a folder"),
    ("digits-run-dir-file", EX / "digits/train.py", ["--run-dir", "{tmp}/afile"], "not a folder"),
    ("digits-model-out-file", EX / "digits/train.py", ["--model-out", "{tmp}/afile"], "not a folder"),
    ("pixels-train-missing", EX / "imagenet_pixels/train.py", ["--data", "{tmp}/nothere"], "no such file"),
    ("pixels-train-empty-folder", EX / "imagenet_pixels/train.py", ["--data", "{tmp}/emptydir"], "empty folder"),
    ("pixels-train-empty-file", EX / "imagenet_pixels/train.py", ["--data", "{tmp}/empty.parquet"], "empty file"),
    ("pixels-train-device-gpu", EX / "imagenet_pixels/train.py", ["--device", "gpu"], "not a device"),
    ("pixels-train-device-cuda99", EX / "imagenet_pixels/train.py", ["--device", "cuda:99"], "--device cuda:99"),
    ("pixels-evaluate-device-gpu", EX / "imagenet_pixels/evaluate.py",
     ["--checkpoint", "{tmp}/nothere", "--device", "gpu"], "not a device"),
    ("pixels-evaluate-data-missing", EX / "imagenet_pixels/evaluate.py",
     ["--checkpoint", "{tmp}/nothere", "--data", "{tmp}/nothere"], "no such file"),
    ("pixels-sample-device-gpu", EX / "imagenet_pixels/sample.py",
     ["--checkpoint", "{tmp}/nothere", "--device", "gpu"], "not a device"),
    ("pixels-complete-device-gpu", EX / "imagenet_pixels/complete.py",
     ["--checkpoint", "{tmp}/nothere", "--device", "gpu"], "not a device"),
    ("pixels-benchmark-device-gpu", EX / "imagenet_pixels/benchmark.py", ["--device", "gpu"], "not a device"),
    ("pretrained-demo-device-gpu", EX / "pretrained/demo.py", ["--device", "gpu"], "not a device"),
    ("levels-study-missing", ROOT / "benchmarks/levels_study.py", ["--data", "{tmp}/nothere"], "no such file"),
    ("table4-device-gpu", ROOT / "benchmarks/table4.py",
     ["--model", "x", "--reference", "{tmp}/ref.npz", "--device", "gpu"], "not a device"),
    ("gpu-check-out-folder", ROOT / "benchmarks/gpu_check.py", ["--out", "{tmp}/emptydir"], "is a folder"),
]


@pytest.mark.parametrize("script, argv, words", [pytest.param(s, a, w, id=i) for i, s, a, w in BAD])
def test_a_bad_data_or_device_argument_is_one_line_and_exit_2(
    script: Path, argv: list[str], words: str, tmp_path, capsys, monkeypatch, empty_cache
) -> None:
    fill = _files(tmp_path)
    argv = [a.format(**fill) for a in argv]
    monkeypatch.chdir(tmp_path)  # nothing a script might write lands in the repository
    module = load(script)
    monkeypatch.setattr(sys, "argv", [script.name, *argv])
    with pytest.raises(SystemExit) as info:
        cli.run(module.main, argv)
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if line.strip()]
    assert info.value.code == 2, err
    assert len(lines) == 1 and "Traceback" not in err, err
    assert "error:" in lines[0] and words in lines[0], lines[0]
