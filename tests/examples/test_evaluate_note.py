"""Issue 22 (smaller): ``evaluate.py`` says when the images it scores are not held-out.

Without ``--data`` it scores new crops of the photographs the default training run learnt from,
and with ``--part all``/``train`` the images a run on that data trained on; before the change
it printed such a figure exactly like a held-out one. Now a note goes to stderr before scoring,
the printed figure says "NOT held-out images" and the JSON carries the note.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
EXAMPLE = ROOT / "examples" / "imagenet_pixels"
CIFAR = str(ROOT / "tests" / "data" / "cifar10-32" / "train.parquet")  # 32x32 images with labels


def script(name: str):
    spec = importlib.util.spec_from_file_location(f"evaluate_note_{name}", EXAMPLE / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def run(tmp_path_factory) -> Path:
    """The README's default run, one step: tiny-in32 on scikit-image crops."""
    pytest.importorskip("skimage", reason="scikit-image (the examples extra) is not installed")
    out = tmp_path_factory.mktemp("evaluate_note") / "run"
    script("train").main(["--batch-size", "2", "--natural-count", "8", "--no-progress", "--threads", "1",
                          "--steps", "1", "--out", str(out)])
    return out


CASES = {
    # name: (arguments, words of the note or None for held-out images)
    "default data: crops of the training photographs": ([], "new random crops"),
    "--part all": (["--data", CIFAR, "--holdout", "0.5", "--part", "all"], "--part all"),
    "--part train": (["--data", CIFAR, "--holdout", "0.5", "--part", "train"], "--part train"),
    "no --holdout: the whole split": (["--data", CIFAR], "--part all"),
    "held-out part": (["--data", CIFAR, "--holdout", "0.5", "--part", "heldout"], None),
    "held-out by default with --holdout": (["--data", CIFAR, "--holdout", "0.5"], None),
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_evaluate_says_whether_the_images_are_held_out(run: Path, case: str, capsys) -> None:
    argv, words = CASES[case]
    results = script("evaluate").main(["--checkpoint", str(run), "--max-images", "2", "--batch-size", "2",
                                       "--heatmap-images", "0", "--no-progress", "--threads", "1", *argv])
    out, err = capsys.readouterr()
    figure = next(line for line in out.splitlines() if "bits/dim" in line)
    if words is None:
        assert "NOT HELD-OUT" not in err and "note" not in results
        assert "held-out images" in figure and "NOT" not in figure
    else:
        assert "NOT HELD-OUT" in err and words in err, err
        assert "NOT held-out images" in figure, figure
        assert words in results["note"]
