"""The Kneser-Ney n-gram baseline: exact normalisation, the formula on hand-made counts, order
selection, and clear errors."""

from __future__ import annotations

import math

import numpy as np
import pytest

from fractalkit.baselines import NGramModel, choose_order


def next_symbol_probs(model: NGramModel, context: list[int]) -> np.ndarray:
    """``[V]``: P(w | context) for every w, the context at the start of a sequence."""
    return np.exp([model.log_probs(np.array([*context, w]))[-1] for w in range(model.num_values)])


@pytest.mark.parametrize("order", [1, 2, 3, 4])
@pytest.mark.parametrize("num_values", [2, 5])
def test_every_conditional_sums_to_one(order, num_values):
    rng = np.random.default_rng(order * 10 + num_values)
    seqs = [rng.integers(0, num_values, size=rng.integers(1, 30)) for _ in range(20)]
    model = NGramModel(order, num_values).fit(seqs)
    contexts = [[], [0], [num_values - 1, 0], [1, 1, 1], [0, 1, 0, 1, 1]]
    contexts += [list(rng.integers(0, num_values, size=order)) for _ in range(5)]  # seen and unseen
    for context in contexts:
        p = next_symbol_probs(model, [int(c) for c in context])
        assert abs(p.sum() - 1) < 1e-12 and (p > 0).all(), context


def test_bigram_matches_the_kneser_ney_formula():
    # counts of "a b": c(a a)=1, c(a b)=3; continuation counts of unigrams from distinct bigrams
    x = np.array([0, 1, 0, 1, 0, 1, 0, 0])  # bigrams: ab ba ab ba ab ba aa
    model = NGramModel(2, 3).fit(x)
    # order 1 (continuation): distinct bigrams ab, ba, aa -> N1+(. a) = 2, N1+(. b) = 1, c = 0
    d1 = 1 / (1 + 2 * 1)  # counts of counts {2: 1, 1: 1} -> n1 = 1, n2 = 1
    p1 = {w: (max(c - d1, 0) + d1 * 2 / 3) / 3 for w, c in {0: 2, 1: 1, 2: 0}.items()}
    # order 2 after "a": c(a a) = 1, c(a b) = 3, total 4, 2 types; bigram counts {3: 1, 1: 2... }
    counts = np.array([1, 3, 3])  # unique bigrams aa, ab, ba with counts 1, 3, 3
    d2 = (counts == 1).sum() / ((counts == 1).sum() + 2 * (counts == 2).sum())
    expected = (max(3 - d2, 0) + d2 * 2 * p1[1]) / 4
    got = math.exp(model.log_probs(np.array([0, 1]))[-1])
    assert abs(got - expected) < 1e-12
    assert abs(math.exp(model.log_probs(np.array([2]))[0]) - p1[2]) < 1e-12  # first symbol: order 1


def test_contexts_do_not_cross_sequences():
    a = NGramModel(2, 4).fit([np.array([0, 1]), np.array([2, 3])] * 5)
    b = NGramModel(2, 4).fit(np.array([0, 1, 2, 3] * 5))
    # "1 2" is a bigram only when the sequences are joined
    assert a.log_probs(np.array([1, 2]))[-1] < b.log_probs(np.array([1, 2]))[-1]


def test_order_is_chosen_on_validation_and_recovers_a_second_order_chain():
    rng = np.random.default_rng(0)
    v = 3
    table = rng.dirichlet(np.full(v, 0.3), size=(v, v))  # P(x_t | x_{t-2}, x_{t-1})
    x = [0, 1]
    for _ in range(60_000):
        x.append(rng.choice(v, p=table[x[-2], x[-1]]))
    x = np.array(x)
    order, scores = choose_order(x[:50_000], x[50_000:], v, orders=(1, 2, 3, 4, 5))
    assert order in (3, 4) and scores[3] < scores[2] - 0.05  # context of two symbols
    entropy = -np.mean([math.log2(table[a, b, c]) for a, b, c in zip(x[50_000:-2], x[50_001:-1], x[50_002:], strict=True)])
    assert abs(scores[3] - entropy) < 0.05


@pytest.mark.parametrize(
    ("make", "match"),
    [
        (lambda: NGramModel(0, 5), "order"),
        (lambda: NGramModel(2, 1), "num_values"),
        (lambda: NGramModel(6, 65536), "int64"),
        (lambda: NGramModel(2, 5).fit([np.array([0, 5])]), r"outside \[0, 5\)"),
        (lambda: NGramModel(2, 5).fit([np.array([0.0, 1.0])]), "integer"),
        (lambda: NGramModel(2, 5).fit([np.zeros((2, 2), dtype=int)]), "1-D"),
        (lambda: NGramModel(2, 5).fit([]), "no sequences"),
    ],
)
def test_bad_input_raises_clearly(make, match):
    with pytest.raises(ValueError, match=match):
        make()


def test_scoring_before_fit_raises():
    with pytest.raises(RuntimeError, match="fit"):
        NGramModel(2, 5).log_probs(np.array([0, 1]))
