"""examples/imagenet_pixels/evaluate.py --fid --reference: samples are drawn, featurised and
scored against a reference file (a stand-in feature network replaces Inception-v3)."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import pytest
import torch

from fractalkit import ARLevelConfig, Fractal, ImagePatches, RGBLeafConfig
from fractalkit.imagenet import metrics

ROOT = Path(__file__).resolve().parents[2]


def _stand_in(images):
    x = images.float() / 255
    f = torch.cat([x.mean((2, 3)), x.std((2, 3))], 1)  # [N, 6]
    return f, (f @ torch.ones(6, 4)).softmax(-1)


def test_evaluate_fid_flag(tmp_path, monkeypatch):
    pytest.importorskip("skimage", reason="scikit-image (the examples extra) is not installed")
    sys.path.insert(0, str(ROOT / "examples" / "imagenet_pixels"))
    spec = importlib.util.spec_from_file_location("pixels_evaluate", ROOT / "examples" / "imagenet_pixels" / "evaluate.py")
    evaluate = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(evaluate)
    torch.manual_seed(0)
    model = Fractal([(ImagePatches(8, 4), ARLevelConfig(width=16, depth=1, heads=2)),
                     (ImagePatches(4, 1), ARLevelConfig(width=16, depth=1, heads=2))],
                    leaf=RGBLeafConfig(width=8, depth=1, heads=2), num_classes=0)
    model.save(tmp_path / "model.safetensors")
    real = torch.randint(0, 256, (40, 3, 8, 8), generator=torch.Generator().manual_seed(1))
    metrics.save_reference(tmp_path / "ref.npz", metrics.extract_features(_stand_in, real).features)
    monkeypatch.setattr(metrics, "InceptionV3", lambda *a, **k: _stand_in)
    args = ["--checkpoint", str(tmp_path / "model.safetensors"), "--max-images", "2", "--batch-size", "4",
            "--heatmap-images", "0", "--fid", "--reference", str(tmp_path / "ref.npz"),
            "--num-samples", "8", "--samples-dir", str(tmp_path / "samples")]
    results = evaluate.main(args)
    assert results["num_samples"] == 8 and results["fid"] > 0 and results["inception_score"] >= 1
    assert len(list((tmp_path / "samples").glob("samples_*.npz"))) == 2
    with pytest.raises(SystemExit):
        evaluate.parse_args(["--checkpoint", "x", "--fid"])  # no --reference
