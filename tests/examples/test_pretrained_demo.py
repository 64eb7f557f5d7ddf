"""examples/pretrained/demo.py draws samples and inpaints a photograph from a pretrained folder."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import torch

from fractalkit import (
    ARLevelConfig,
    Fractal,
    ImagePatches,
    MARLevelConfig,
    RGBLeafConfig,
    SampleOptions,
)

ROOT = Path(__file__).resolve().parents[2]


def test_demo_samples_and_inpaints(tmp_path):
    spec = importlib.util.spec_from_file_location("pretrained_demo", ROOT / "examples" / "pretrained" / "demo.py")
    demo = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(demo)
    torch.manual_seed(0)
    model = Fractal([(ImagePatches(8, 4), MARLevelConfig(width=16, depth=1, heads=2)),
                     (ImagePatches(4, 1), ARLevelConfig(width=16, depth=1, heads=2))],
                    leaf=RGBLeafConfig(width=8, depth=1, heads=2), num_classes=5)
    folder = model.save_pretrained(tmp_path / "model", sampling=SampleOptions(guidance=2.0, steps=(2, None)))
    summary = demo.main(["--model", str(folder), "--classes", "1,4", "--out", str(tmp_path / "demo")])
    assert summary["classes"] == [1, 4]
    for name in ("samples.png", "inpainting.png"):
        assert (tmp_path / "demo" / name).stat().st_size > 100
