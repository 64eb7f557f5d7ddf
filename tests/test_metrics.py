"""FID, Inception Score, precision/recall (fractalkit.imagenet.metrics) with a small stand-in feature network;
the real Inception-v3 path runs when its weights file is present."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from fractalkit.imagenet import metrics


class StandIn:
    """A fixed random conv net: uint8 images -> (16 features, 10-class probabilities)."""

    def __init__(self, seed: int = 0):
        g = torch.Generator().manual_seed(seed)
        self.conv = torch.randn(16, 3, 3, 3, generator=g) * 0.1
        self.head = torch.randn(16, 10, generator=g)

    def __call__(self, images):
        x = images.double().float() / 255
        f = torch.nn.functional.conv2d(x, self.conv).relu().mean((2, 3))
        return f, (f @ self.head * 10).softmax(-1)


def _images(n: int, seed: int, size: int = 8) -> torch.Tensor:
    return torch.randint(0, 256, (n, 3, size, size), generator=torch.Generator().manual_seed(seed), dtype=torch.uint8)


def test_fid_of_a_set_against_itself_is_zero():
    feats = metrics.extract_features(StandIn(), _images(200, 0), batch=64)
    assert feats.features.shape == (200, 16) and feats.probs.shape == (200, 10)
    assert abs(metrics.fid_from_features(feats.features, feats.features)) < 1e-6
    other = metrics.extract_features(StandIn(), _images(200, 1) // 2, batch=64)  # darker images
    assert metrics.fid_from_features(feats.features, other.features) > 1e-3


def test_fid_of_gaussians_equals_the_closed_form():
    """Two large Gaussian samples: FID of their fitted Gaussians = the Fréchet distance of the
    true ones (commuting diagonal covariances: |mu1-mu2|^2 + sum (s1 - s2)^2), to sampling error;
    and frechet_distance itself equals the closed form exactly."""
    rng = np.random.default_rng(0)
    d = 4
    mu1, mu2 = np.zeros(d), np.array([1.0, -0.5, 0.0, 2.0])
    s1, s2 = np.array([1.0, 2.0, 0.5, 1.5]), np.array([0.5, 1.0, 1.0, 3.0])  # standard deviations
    exact = float(((mu1 - mu2) ** 2).sum() + ((s1 - s2) ** 2).sum())
    assert metrics.frechet_distance(mu1, np.diag(s1**2), mu2, np.diag(s2**2)) == pytest.approx(exact, abs=1e-9)
    a = mu1 + s1 * rng.standard_normal((200_000, d))
    b = mu2 + s2 * rng.standard_normal((200_000, d))
    assert metrics.fid_from_features(a, b) == pytest.approx(exact, rel=0.01)
    # A full (non-diagonal) case against scipy-free arithmetic: for S1 = I, sqrt(S1 S2) = sqrt(S2).
    q = np.linalg.qr(rng.standard_normal((d, d)))[0]
    sigma2 = q @ np.diag(s2**2) @ q.T
    assert metrics.frechet_distance(mu1, np.eye(d), mu2, sigma2) == pytest.approx(
        float(((mu1 - mu2) ** 2).sum() + d + (s2**2).sum() - 2 * s2.sum()), abs=1e-8)


def test_inception_score_of_uniform_predictions_is_one():
    assert metrics.inception_score(np.full((100, 10), 0.1)) == pytest.approx(1.0, abs=1e-12)
    # Confident and evenly spread over K classes: IS = K.
    assert metrics.inception_score(np.eye(10)[np.arange(100) % 10]) == pytest.approx(10.0, rel=1e-9)
    with pytest.raises(ValueError, match="rows summing to 1"):
        metrics.inception_score(np.full((4, 10), 0.2))


def test_precision_recall_of_identical_sets_is_one():
    feats = metrics.extract_features(StandIn(), _images(100, 2)).features
    assert metrics.precision_recall(feats, feats) == (1.0, 1.0)
    far = feats + 100.0  # a disjoint set: nothing inside the other's manifold
    assert metrics.precision_recall(feats, far) == (0.0, 0.0)


def test_reference_files_round_trip_and_feed_evaluate(tmp_path):
    net = StandIn()
    real = _images(150, 3)
    ref_feats = metrics.extract_features(net, real).features
    # The original's format: mu and sigma.
    metrics.save_reference(tmp_path / "stats.npz", ref_feats)
    ref = metrics.load_reference(tmp_path / "stats.npz")
    assert ref.features is None and ref.mu.shape == (16,) and ref.sigma.shape == (16, 16)
    # ADM's reference batch: images [N, H, W, 3] as arr_0 (precision/recall need them).
    np.savez(tmp_path / "batch.npz", arr_0=real.permute(0, 2, 3, 1).numpy())
    batch = metrics.load_reference(tmp_path / "batch.npz", net)
    np.testing.assert_allclose(batch.mu, ref.mu, rtol=1e-6)  # float32 features, other batches
    same = metrics.evaluate(metrics.extract_features(net, real), batch, split_size=50)
    assert abs(same["fid"]) < 1e-6 and same["precision"] == same["recall"] == 1.0
    assert same["num_samples"] == 150 and same["inception_score"] >= 1.0
    np.savez(tmp_path / "empty.npz", other=np.zeros(3))
    with pytest.raises(ValueError, match="neither mu/sigma nor arr_0"):
        metrics.load_reference(tmp_path / "empty.npz")
    with pytest.raises(FileNotFoundError, match="adm_in64_stats"):
        metrics.load_reference(tmp_path / "missing.npz")


@pytest.mark.parametrize("bad", [
    torch.full((2, 3, 8, 8), 300.0), torch.full((2, 3, 8, 8), float("nan")), torch.zeros(2, 1, 8, 8),
], ids=["range", "nan", "channels"])
def test_bad_images_are_refused(bad):
    with pytest.raises(ValueError, match="extract_features"):
        metrics.extract_features(StandIn(), bad)


def test_frechet_distance_refuses_mismatched_or_nonfinite_inputs():
    with pytest.raises(ValueError, match="shapes disagree"):
        metrics.frechet_distance(np.zeros(3), np.eye(3), np.zeros(4), np.eye(4))
    with pytest.raises(ValueError, match="non-finite"):
        metrics.frechet_distance(np.array([np.nan]), np.eye(1), np.zeros(1), np.eye(1))


def test_missing_inception_weights_say_where_to_get_them(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"nvlabs-fi-cdn\.nvidia\.com"):
        metrics.InceptionV3(tmp_path / "none.pt")


def test_real_inception_features():
    path = metrics.InceptionV3.default_path()
    if not path.is_file():
        pytest.skip(f"Inception-v3 weights file absent: {path} (set ${metrics.INCEPTION_ENV} or "
                    f"download {metrics.INCEPTION_URL})")
    net = metrics.InceptionV3(path)
    feats = metrics.extract_features(net, _images(4, 5, size=64))
    assert feats.features.shape == (4, 2048) and feats.probs.shape == (4, 1008)
    np.testing.assert_allclose(feats.probs.sum(1), 1.0, atol=1e-4)
    assert abs(metrics.fid_from_features(np.tile(feats.features, (3, 1)), np.tile(feats.features, (3, 1)))) < 1e-3


def _tiny_rgb_model():
    from fractalkit import ARLevelConfig, Fractal, ImagePatches, RGBLeafConfig

    torch.manual_seed(0)
    return Fractal([(ImagePatches(4, 2), ARLevelConfig(width=16, depth=1, heads=2)),
                    (ImagePatches(2, 1), ARLevelConfig(width=16, depth=1, heads=2))],
                   leaf=RGBLeafConfig(width=8, depth=1, heads=2), num_classes=3).eval()


def test_sample_images_resumes_from_its_folder(tmp_path, monkeypatch):
    model = _tiny_rgb_model()
    first = metrics.sample_images(model, 5, batch=2, folder=tmp_path / "s", progress=False)
    assert first.dtype == torch.uint8 and first.shape == (5, 3, 4, 4)
    assert sorted(p.name for p in (tmp_path / "s").iterdir()) == [
        "samples_000000_2.npz", "samples_000002_2.npz", "samples_000004_1.npz"]
    (tmp_path / "s" / "samples_000002_2.npz").unlink()  # as if interrupted before that batch
    calls = []
    inner = model.sample
    monkeypatch.setattr(model, "sample", lambda *a, **k: calls.append(a) or inner(*a, **k))
    again = metrics.sample_images(model, 5, batch=2, folder=tmp_path / "s", progress=False)
    assert len(calls) == 1 and torch.equal(first, again)  # only the missing batch, same images


def test_table4_script_end_to_end_with_a_stand_in_network(tmp_path, monkeypatch):
    import importlib.util
    from pathlib import Path

    root = Path(__file__).resolve().parents[1]
    spec = importlib.util.spec_from_file_location("table4", root / "benchmarks" / "table4.py")
    table4 = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(table4)
    folder = _tiny_rgb_model().save_pretrained(tmp_path / "model")
    net = StandIn()
    metrics.save_reference(tmp_path / "ref.npz", metrics.extract_features(net, _images(50, 9, 4)).features)
    monkeypatch.setattr(metrics, "InceptionV3", lambda *a, **k: net)
    result = table4.main([
        "--model", str(folder), "--reference", str(tmp_path / "ref.npz"), "--num-samples", "6",
        "--batch", "3", "--samples-dir", str(tmp_path / "s"), "--device", "cpu", "--out", str(tmp_path / "out"),
    ])
    assert result["num_samples"] == 6 and result["fid"] > 0 and "SHORT RUN" in result["label"]
    assert (tmp_path / "out" / "table4_model_6.json").is_file()
