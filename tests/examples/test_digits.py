"""The quick start (examples/digits): its default path trains, scores and writes its pictures
and a loadable model folder, at a tiny budget."""

from __future__ import annotations

import importlib.util
import json
import math
from pathlib import Path

import pytest
import torch

from fractalkit import Fractal

ROOT = Path(__file__).resolve().parents[2]


def load_example():
    spec = importlib.util.spec_from_file_location("digits_example", ROOT / "examples" / "digits" / "train.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_data_ships_with_scikit_learn():
    pytest.importorskip("sklearn", reason="scikit-learn (the examples extra) is not installed")
    x, y = load_example().load_data()
    assert x.shape == (1797, 1, 8, 8) and x.dtype == torch.int64
    assert int(x.min()) == 0 and int(x.max()) == 16 and sorted(y.unique().tolist()) == list(range(10))


def test_quick_start_runs_at_a_tiny_budget(tmp_path):
    pytest.importorskip("sklearn", reason="scikit-learn (the examples extra) is not installed")
    example = load_example()
    out = tmp_path / "results"
    example.main(["--steps", "3", "--per-class", "2", "--out", str(out), "--model-out", str(tmp_path / "model")])
    results = json.loads((out / "results.json").read_text())
    assert results["train_steps"] == 3
    assert 0 < results["held_out_bits_per_dim"] < 2 * math.log2(17)
    for name in ("samples.png", "completion.png"):
        from PIL import Image

        with Image.open(out / name) as img:
            assert img.size[0] > 100 and img.size[1] > 40
    model = Fractal.from_pretrained(tmp_path / "model")  # a save_pretrained folder
    assert model.pretrained_options == example.SAMPLING
    assert model.event_shape == (1, 8, 8) and model.num_values == 17


@pytest.mark.slow
def test_default_run_learns_the_digits(tmp_path):
    """The documented default (1,500 steps, seed 0) reaches the README's held-out bits/dim
    (1.790 measured twice; far below the 4.09 of a uniform guess)."""
    pytest.importorskip("sklearn", reason="scikit-learn (the examples extra) is not installed")
    results = load_example().main(["--out", str(tmp_path), "--model-out", str(tmp_path / "model")])
    assert results["train_steps"] == 1500
    assert results["held_out_bits_per_dim"] < 1.85
