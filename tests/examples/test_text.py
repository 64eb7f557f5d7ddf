"""Smoke test of the text example: a training step of both models on a small slice, bits/char,
and samples that decode to text over the vocabulary."""

from __future__ import annotations

import importlib.util
import math
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[2]
#: the first 50,000 characters of Tiny Shakespeare, 59 distinct ones (tests/data/README.md)
TEXT = ROOT / "tests" / "data" / "tinyshakespeare" / "input.txt"


def load_example():
    spec = importlib.util.spec_from_file_location("text_example", ROOT / "examples" / "text" / "train.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


T = load_example()


@pytest.fixture(scope="module")
def corpus():
    data, vocab = T.load_corpus(TEXT)
    return data, vocab


def test_corpus_and_split(corpus):
    data, vocab = corpus
    assert len(vocab) == 59 and data.dtype == torch.int64  # the sample's characters (65 in the whole text)
    train, held_out = T.split_corpus(data)
    assert train.numel() + held_out.numel() == data.numel()
    assert abs(held_out.numel() / data.numel() - 0.1) < 1e-3


@pytest.mark.parametrize("kind", ["fractal", "flat"])
def test_one_training_step_bits_per_char_and_samples(corpus, kind):
    data, vocab = corpus
    train, held_out = T.split_corpus(data[:20_000])
    torch.manual_seed(0)
    model = T.build_model(kind, len(vocab), seq_len=32, chunk=8, width=16, depth=2, heads=2)
    before = T.bits_per_char(model, held_out, max_windows=4)
    log = T.train(model, train, budget_s=60, batch=4, max_steps=2)
    assert log["steps"] == 2 and math.isfinite(log["last_loss_bpc"])
    after = T.bits_per_char(model, held_out, max_windows=4)
    assert math.isfinite(after) and after != before  # the step changed the model
    # an untrained model is close to uniform over the 59 characters: log2(59) = 5.88 bits
    assert abs(before - math.log2(len(vocab))) < 1.0
    x, seconds = T.sample_seconds(model, n=2)
    assert x.shape == (2, 32) and seconds > 0
    texts = T.decode_text(x, vocab)
    assert all(len(t) == 32 and set(t) <= set(vocab) for t in texts)
    assert T.flops_per_example(model, held_out[:32][None]) > 0


def test_unknown_kind_raises():
    with pytest.raises(ValueError, match="kind"):
        T.build_model("deep", 65)


def test_flat_baseline_matches_the_fractals_parameters():
    # the CPU comparison (width 64) is at matched parameters: 5 flat blocks, the closest count
    count = lambda m: sum(p.numel() for p in m.parameters())  # noqa: E731
    fractal = count(T.build_model("fractal", 65, width=64))
    gaps = {d: abs(count(T.build_model("flat", 65, width=64, flat_depth=d)) - fractal) / fractal for d in (3, 4, 5, 6)}
    assert min(gaps, key=gaps.get) == 5 and gaps[5] < 0.05


def test_ngram_baseline_picks_its_order_on_validation(corpus):
    data, vocab = corpus
    train, held_out = T.split_corpus(data)  # the whole 50,000-character sample
    out = T.ngram_baseline(train, held_out, len(vocab), orders=(1, 2, 3, 4, 5))
    scores = out["validation_bpc"]
    assert out["order"] == min(scores, key=scores.get) and scores[3] < scores[1]
    # a count model on the sample's 45k training characters: far better than uniform, nowhere near perfect
    assert 1.5 < out["held_out_windows_bpc"] < math.log2(len(vocab))
    assert len(T.windows(held_out)) == held_out.numel() // 256
