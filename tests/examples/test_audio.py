"""The plug-in discretised-logistic leaf (exact normalisation, observed-bin scoring), the
WaveNet plug-in level (the contract kit), and the audio example on variable-length clips:
data loading, the masked likelihood over real samples only, a training step of each model,
the n-gram baseline, WAV and PNG output."""

from __future__ import annotations

import importlib.util
import itertools
import math
import sys
import wave
from pathlib import Path

import numpy as np
import pytest
import torch

from fractalkit import ARLevelConfig, Fractal, SequenceChunks
from fractalkit.config import BuildContext, config_from_dict
from fractalkit.leaves import DiscretizedLogisticLeaf, DiscretizedLogisticLeafConfig, Leaf
from fractalkit.leaves.logistic import (
    discretized_logistic_log_prob_at,
    discretized_logistic_log_probs,
)
from fractalkit.testing import check_component

ROOT = Path(__file__).resolve().parents[2]
#: the first 60 FSDD recordings, each cut to its central 1,024 samples (tests/data/README.md)
CLIPS = ROOT / "tests" / "data" / "fsdd-8k" / "recordings.parquet"


def load_example():
    spec = importlib.util.spec_from_file_location("audio_example", ROOT / "examples" / "audio" / "train.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


A = load_example()
W = sys.modules["wavenet"]  # the plug-in level beside the script (imported by it)


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


@pytest.mark.parametrize("num_values", [2, 5, 300])
def test_observed_bin_path_equals_the_all_bins_path_and_normalises(num_values):
    g = torch.Generator().manual_seed(num_values)
    shape = (40, 4)
    weights, means = torch.randn(shape, generator=g, dtype=torch.float64), torch.randn(shape, generator=g, dtype=torch.float64)
    log_scales = torch.randn(shape, generator=g, dtype=torch.float64) * 4
    every = torch.arange(num_values)
    at = discretized_logistic_log_prob_at(weights[:, None], means[:, None], log_scales[:, None], every, num_values)
    assert torch.allclose(at.logsumexp(-1), torch.zeros(40, dtype=torch.float64), atol=1e-12)
    x = torch.randint(0, num_values, (40,), generator=g)
    one = discretized_logistic_log_prob_at(weights, means, log_scales, x, num_values)
    full = discretized_logistic_log_probs(weights, means, log_scales, num_values)
    assert torch.allclose(one, full.gather(-1, x[:, None])[:, 0], atol=1e-12)


def test_leaf_scores_the_observed_bin_as_the_generic_path_does():
    torch.manual_seed(0)
    leaf = DiscretizedLogisticLeafConfig(num_values=7, num_components=3).build(BuildContext(8, 1, (2,))).double()
    x, cond = torch.randint(0, 7, (5, 2)), torch.randn(5, 1, 8, dtype=torch.float64)
    assert torch.allclose(leaf.observed_log_probs(x, cond), Leaf.observed_log_probs(leaf, x, cond), atol=1e-12)


def test_wavenet_level_passes_the_contract_kit():
    # receptive field 3 < the 4 children: the cached decoding path reads its history
    check_component(level=W.WaveNetLevelConfig(width=8, layers=2, cycle=1))


def test_wavenet_decoding_path_matches_teacher_forcing_past_its_receptive_field():
    torch.manual_seed(0)
    cfg = W.WaveNetLevelConfig(width=8, layers=4, cycle=3)  # dilations 1, 2, 4, 1: field 9
    model = Fractal([(SequenceChunks(40, 1), cfg)], leaf=DiscretizedLogisticLeafConfig(num_values=16, num_components=3),
                    num_classes=3).double().eval()
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.3 * torch.randn_like(p))
        y = torch.tensor([0, 1, 2])
        x = model.sample(y=y, generator=torch.Generator().manual_seed(0))
        assert torch.allclose(model.log_prob(x, y).value, model.stepwise_log_prob(x, y), atol=1e-10)
    assert model.levels[0].receptive_field == 9


def test_mu_law_round_trip_crop_and_16_bit_values():
    values = np.arange(256)
    assert np.array_equal(A.mu_law_encode(A.mu_law_decode(values)), values)
    assert A.mu_law_encode(np.zeros(1))[0] == 128 == A.silence(8)
    assert A.crop(np.arange(10.0), 4).tolist() == [3, 4, 5, 6]
    assert A.crop(np.ones(3), 8).tolist() == [1, 1, 1]  # shorter clips keep their length
    pcm = np.array([-32768, -1, 0, 1, 32767])
    q = A.quantise(pcm / 32768, 16)
    assert q.tolist() == [0, 32767, 32768, 32769, 65535] and A.silence(16) == 32768
    assert np.allclose(A.dequantise(q, 16), pcm / 32768)
    with pytest.raises(ValueError, match="bits"):
        A.quantise(pcm / 32768, 12)


@pytest.fixture(scope="module")
def clips():
    return A.load_clips(CLIPS, limit=60, length=256)


def test_clips_keep_their_length_and_padding_is_never_scored(clips):
    x, n = clips["x"], clips["lengths"]
    assert x.shape == (60, 256) and int(n.max()) <= 256 and bool((x[A.real_mask(n, 256) == 0] == 128).all())
    torch.manual_seed(0)
    model = A.build_model("fractal", length=256, small=True).eval()
    short = A.subset(clips, torch.arange(60) < 4)
    short["lengths"] = torch.tensor([100, 37, 256, 1])
    before = A.bits_per_real_sample(model, short)
    short["x"] = torch.where(A.real_mask(short["lengths"], 256), short["x"], torch.randint(0, 256, (4, 256)))
    assert A.bits_per_real_sample(model, short) == pytest.approx(before, abs=1e-9)


@pytest.mark.parametrize("kind", ["fractal", "wavenet"])
def test_per_sample_scores_are_causal_and_in_time_order(kind):
    torch.manual_seed(0)
    model = A.build_model(kind, length=256, small=True).eval()
    g = torch.Generator().manual_seed(1)
    x, y = torch.randint(0, 256, (2, 256), generator=g), torch.tensor([1, 2])
    with torch.no_grad():
        lp = A.sample_log_probs(model, x, y)
        x2 = x.clone()
        x2[:, 100] = (x2[:, 100] + 50) % 256  # change sample 100: scores from 100 on may change
        lp2 = A.sample_log_probs(model, x2, y)
    assert torch.equal(lp[:, :100], lp2[:, :100]) and not torch.equal(lp[:, 100:], lp2[:, 100:])


@pytest.mark.parametrize("spec", ["fractal", "wavenet", "flat-uncond", "fractal-digit+speaker"])
def test_one_masked_training_step_bits_and_outputs(clips, spec, tmp_path):
    kind, condition = A.parse_spec(spec)
    torch.manual_seed(0)
    model = A.build_model(kind, length=256, small=True, conditional=condition is not None,
                          condition=condition or "digit")
    assert model.num_classes == (A.CONDITIONS[condition] if condition else 0)
    train_part = A.subset(clips, clips["index"] >= 5)
    log = A.train(model, train_part, budget_s=math.inf, batch=2, max_steps=1, condition=condition or "digit")
    assert log["steps"] == 1 and math.isfinite(log["last_loss_bps"])
    test_part = A.subset(clips, clips["index"] < 5)
    bps = A.bits_per_real_sample(model, A.subset(test_part, torch.arange(test_part["x"].shape[0]) < 2),
                                 condition=condition or "digit")
    assert math.isfinite(bps) and bps > 0  # an untrained mixture can be worse than 8 bits
    x, seconds = A.sample_clips(model, torch.tensor([3]))
    assert x.shape == (1, 256) and seconds > 0
    A.write_wav(tmp_path / "a.wav", x[0].numpy())
    with wave.open(str(tmp_path / "a.wav")) as w:
        assert (w.getframerate(), w.getnframes(), w.getsampwidth()) == (8000, 256, 2)
    A.plot(tmp_path / "a.png", {"model": list(x.numpy())}, [3])
    assert (tmp_path / "a.png").stat().st_size > 0


def test_masked_loss_trains_through_the_recorded_scores():
    torch.manual_seed(0)
    model = A.build_model("fractal", length=256, small=True)
    x, n = torch.randint(0, 256, (2, 256)), torch.tensor([256, 10])
    loss = A.RealSampleLoss(model).loss(x, n, torch.tensor([0, 1]))
    loss.total.backward()
    assert model.leaf.head.weight.grad is not None and float(model.leaf.head.weight.grad.abs().sum()) > 0


def test_ngram_baseline_on_real_samples(clips):
    train_part = A.subset(clips, clips["index"] >= 5)
    out = A.ngram_baseline(train_part, {"eval": A.subset(clips, clips["index"] < 5)}, orders=(1, 2, 3))
    assert out["order"] in (1, 2, 3) and set(out["validation_bits"]) == {1, 2, 3}
    assert 0 < out["eval"] < 8


def test_model_specs_and_condition_labels():
    assert A.parse_spec("fractal") == ("fractal", "digit")
    assert A.parse_spec("wavenet-uncond") == ("wavenet", None)
    assert A.parse_spec("fractal-speaker") == ("fractal", "speaker")
    assert A.parse_spec("fractal-digit+speaker") == ("fractal", "digit+speaker")
    with pytest.raises(ValueError, match="suffix"):
        A.parse_spec("fractal-gender")
    clips = {"digit": torch.tensor([0, 9, 3]), "speaker": torch.tensor([0, 5, 2])}
    assert A.condition_labels(clips, None) is None
    assert A.condition_labels(clips, "speaker").tolist() == [0, 5, 2]
    assert A.condition_labels(clips, "digit+speaker").tolist() == [0, 59, 23]  # speaker * 10 + digit
    names = ["a", "b", "c"]
    labels, stems = A.sample_labels("digit+speaker", names)
    assert labels.tolist() == [0, 11, 22] and stems[1] == "speaker1_b_digit1"
    assert A.sample_labels("speaker", names)[1] == ["speaker0_a", "speaker1_b", "speaker2_c"]
    assert A.sample_labels(None, names)[1][0] == "sample0"


def test_welch_test_tells_apart_separated_runs():
    far = A.welch([1.0, 1.1, 0.9], [3.0, 3.1, 2.9])
    assert far["difference"] == pytest.approx(-2.0) and far["p"] < 1e-3
    assert A.welch([1.0, 1.1, 0.9], [1.05, 0.95, 1.0])["p"] > 0.5


def test_16_bit_clips_sample_directly_and_write_wavs(tmp_path):
    torch.manual_seed(0)
    model = A.build_model("fractal", bits=16, length=256, small=True).eval()
    model.leaf.sampling = "direct"  # O(K) per value instead of 65,536 bins
    x, seconds = A.sample_clips(model, torch.tensor([1, 7]))
    assert x.shape == (2, 256) and int(x.min()) >= 0 and int(x.max()) < 65536 and seconds > 0
    A.write_wav(tmp_path / "b.wav", x[0].numpy(), 16)
    with wave.open(str(tmp_path / "b.wav")) as w:
        assert (w.getframerate(), w.getnframes(), w.getsampwidth()) == (8000, 256, 2)
