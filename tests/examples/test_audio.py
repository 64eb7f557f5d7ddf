"""The plug-in discretised-logistic leaf (exact normalisation) and a smoke test of the audio
example: data loading, one training step of both models, bits per sample, WAV and PNG output."""

from __future__ import annotations

import importlib.util
import itertools
import math
import wave
from pathlib import Path

import numpy as np
import pytest
import torch

from fractalkit import ARLevelConfig, Fractal, SequenceChunks
from fractalkit.config import config_from_dict
from fractalkit.leaves import DiscretizedLogisticLeaf, DiscretizedLogisticLeafConfig
from fractalkit.leaves.logistic import discretized_logistic_log_probs

ROOT = Path(__file__).resolve().parents[2]


def load_example():
    spec = importlib.util.spec_from_file_location("audio_example", ROOT / "examples" / "audio" / "train.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


A = load_example()


@pytest.mark.parametrize("num_values", [2, 5, 256])
def test_discretized_logistic_normalises_exactly(num_values):
    g = torch.Generator().manual_seed(0)
    shape = (64, 3)
    weights = torch.randn(shape, generator=g, dtype=torch.float64) * 3
    means = torch.randn(shape, generator=g, dtype=torch.float64) * 1.5
    log_scales = torch.randn(shape, generator=g, dtype=torch.float64) * 4  # sharp and flat ones
    lp = discretized_logistic_log_probs(weights, means, log_scales, num_values)
    assert lp.shape == (64, num_values) and bool(torch.isfinite(lp).all())
    assert torch.allclose(lp.logsumexp(-1), torch.zeros(64, dtype=torch.float64), atol=1e-12)


def test_discretized_logistic_matches_the_cdf_difference():
    # one component: P(v) = sigmoid((c_v + h - mu) / s) - sigmoid((c_v - h - mu) / s), tails open
    mu, s, v = 0.1, 0.3, 7
    lp = discretized_logistic_log_probs(
        torch.zeros(1, dtype=torch.float64), torch.tensor([mu], dtype=torch.float64),
        torch.tensor([math.log(s)], dtype=torch.float64), v,
    )
    edges = torch.linspace(-1, 1, v, dtype=torch.float64)
    h = 1 / (v - 1)
    cdf = torch.sigmoid((torch.cat([edges - h, edges[-1:] + h]) - mu) / s)
    cdf[0], cdf[-1] = 0.0, 1.0
    assert torch.allclose(lp.exp(), cdf.diff(), atol=1e-12)


def test_leaf_in_a_fractal_normalises_and_round_trips_its_config():
    cfg = DiscretizedLogisticLeafConfig(num_values=4, num_components=3)
    assert config_from_dict(cfg.to_dict()) == cfg
    torch.manual_seed(0)
    model = Fractal(
        [(SequenceChunks(4, 2), ARLevelConfig(width=16, depth=1, heads=2)),
         (SequenceChunks(2, 1), ARLevelConfig(width=16, depth=1, heads=2))],
        leaf=cfg, num_classes=2,
    ).double().eval()
    assert isinstance(model.leaf, DiscretizedLogisticLeaf)
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn(p.shape, generator=g, dtype=p.dtype) * 0.6)
        x = torch.tensor(list(itertools.product(range(4), repeat=4)))  # all 256 sequences
        for label in (0, 1):
            lp = model.log_prob(x, torch.full((256,), label))
            assert lp.kind == "exact"
            assert abs(lp.value.logsumexp(0).exp().item() - 1) < 1e-6
    with pytest.raises(ValueError, match="num_components"):
        DiscretizedLogisticLeaf((1,), 8, 1, 4, num_components=0)


def test_mu_law_round_trip_and_fixed_length():
    values = np.arange(256)
    assert np.array_equal(A.mu_law_encode(A.mu_law_decode(values)), values)
    assert A.mu_law_encode(np.zeros(1))[0] == 128
    assert A.fix_length(np.ones(10), 4).tolist() == [1.0] * 4
    padded = A.fix_length(np.ones(3), 8)
    assert padded.tolist() == [0, 0, 1, 1, 1, 0, 0, 0]


@pytest.fixture(scope="module")
def clips():
    if not A.DATA.exists():
        pytest.skip(f"missing {A.DATA} (Free Spoken Digit Dataset, see ../shared/data/README.md)")
    return A.load_clips(limit=60, length=256)


@pytest.mark.parametrize("kind", ["fractal", "flat"])
def test_one_training_step_bits_per_sample_and_outputs(clips, kind, tmp_path):
    train_x, train_y, test_x, test_y = clips
    assert train_x.shape[1] == 256 and test_x.shape[0] > 0 and int(train_x.max()) < 256
    torch.manual_seed(0)
    model = A.build_model(kind, length=256, small=True)
    log = A.train(model, train_x, train_y, budget_s=60, batch=2, max_steps=1)
    assert log["steps"] == 1 and math.isfinite(log["last_loss_bps"])
    bps = A.bits_per_sample(model, test_x[:2], test_y[:2])
    assert math.isfinite(bps) and bps > 0  # an untrained mixture can be worse than 8 bits
    x, seconds = A.sample_clips(model, torch.tensor([3]))
    assert x.shape == (1, 256) and seconds > 0
    A.write_wav(tmp_path / "a.wav", x[0].numpy())
    with wave.open(str(tmp_path / "a.wav")) as w:
        assert (w.getframerate(), w.getnframes(), w.getsampwidth()) == (8000, 256, 2)
    A.plot(tmp_path / "a.png", {"model": x.numpy()}, [3])
    assert (tmp_path / "a.png").stat().st_size > 0
