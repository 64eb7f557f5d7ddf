"""Direct sampling of the discretised-logistic leaf (``sampling="direct"``: component, inverse
CDF, bin; O(K) per value): chi-square tests against ``exp(log_prob)`` for small V (every bin)
and V = 65,536 (coarse cells, and single bins around a sharp component), tempered laws, the
whole-model sampler check, force/known handling, the guided fallback and bad input."""

from __future__ import annotations

import math

import pytest
import torch

from fractalkit import ARLevelConfig, Fractal, SequenceChunks
from fractalkit.leaves import DiscretizedLogisticLeafConfig
from fractalkit.leaves.logistic import (
    MIN_LOG_SCALE,
    DiscretizedLogisticLeaf,
    discretized_logistic_log_probs,
    sample_discretized_logistic,
    tempered_logistic_parameters,
)
from fractalkit.protocol import DecodeContext, SampleOptions
from fractalkit.testing import ALPHA, check_sampler, chi_square

DRAWS = 20_000


def mixture(num_values: int, k: int, seed: int, min_bins: float = 1.0) -> tuple[torch.Tensor, ...]:
    """One row of float64 mixture parameters ``[1, K]``: components from ``min_bins`` bins to
    the whole range wide, some centred outside [-1, 1] so that the edge bins' tails carry mass."""
    g = torch.Generator().manual_seed(seed)
    weights = torch.randn(1, k, generator=g, dtype=torch.float64)
    means = torch.empty(1, k, dtype=torch.float64).uniform_(-1.3, 1.3, generator=g)
    bins = torch.empty(1, k, dtype=torch.float64).uniform_(math.log(min_bins), math.log(num_values), generator=g)
    log_scales = bins - math.log(num_values)  # scales from min_bins / V up to 1
    return weights, means, log_scales


def cell_counts(values: torch.Tensor, law: torch.Tensor, cells: str) -> tuple[torch.Tensor, torch.Tensor]:
    """Counts and probabilities per cell: every bin, or (``"coarse"``) the two edge bins and 64
    equal runs of the bins between them."""
    v = law.shape[-1]
    if cells == "bins":
        return torch.bincount(values, minlength=v), law
    bounds = torch.cat([torch.tensor([1]), torch.linspace(1, v - 1, 65).long()[1:-1], torch.tensor([v - 1])])
    index = torch.bucketize(torch.arange(v), bounds, right=True)  # 0: bin 0, last: bin V-1
    pooled = torch.zeros(int(index.max()) + 1, dtype=law.dtype).index_add_(0, index, law)
    return torch.bincount(index[values], minlength=pooled.shape[0]), pooled


@pytest.mark.parametrize(
    ("num_values", "k", "temperature", "cells"),
    [
        (2, 1, 1.0, "bins"),
        (7, 3, 1.0, "bins"),
        (256, 4, 1.0, "bins"),
        (256, 4, 0.7, "bins"),
        (256, 4, 1.5, "bins"),
        (65536, 5, 1.0, "coarse"),
        (65536, 5, 0.6, "coarse"),
    ],
)
def test_direct_draws_follow_the_discretised_mixture(num_values, k, temperature, cells):
    # coarse cells are 1,024 bins wide: components narrower than a few cells would leave them empty
    weights, means, log_scales = mixture(num_values, k, seed=num_values + k, min_bins=1 if cells == "bins" else 4096)
    w, s = tempered_logistic_parameters(weights, log_scales, temperature)
    law = discretized_logistic_log_probs(w, means, s, num_values)[0].exp()  # [V]
    g = torch.Generator().manual_seed(1)
    values = sample_discretized_logistic(
        w.expand(DRAWS, k), means.expand(DRAWS, k), s.expand(DRAWS, k), num_values, generator=g
    )
    assert values.shape == (DRAWS,) and values.dtype == torch.int64
    assert int(values.min()) >= 0 and int(values.max()) < num_values
    counts, probs = cell_counts(values, law, cells)
    result = chi_square(counts, probs)
    assert result.cells >= min(num_values, 10) and result.p_value > ALPHA, result
    if temperature != 1:  # the test has power: the untempered law is rejected
        untempered = discretized_logistic_log_probs(weights, means, log_scales, num_values)[0].exp()
        assert chi_square(*cell_counts(values, untempered, cells)).p_value < ALPHA


@pytest.mark.parametrize("offset", [0.0, 0.5])
def test_single_bins_of_the_sharpest_component_at_65536_values(offset):
    # the sharpest logistic the leaf allows (scale exp(MIN_LOG_SCALE), about 30 bins at
    # V = 65,536), its mean at a bin's centre or edge; each bin is its own cell
    v, h = 65536, 1 / 65535
    means = torch.tensor([[2 * h * (31000 + offset) - 1]], dtype=torch.float64)
    log_scales = torch.tensor([[MIN_LOG_SCALE]], dtype=torch.float64)
    weights = torch.zeros(1, 1, dtype=torch.float64)
    law = discretized_logistic_log_probs(weights, means, log_scales, v)[0].exp()
    g = torch.Generator().manual_seed(2)
    values = sample_discretized_logistic(
        weights.expand(DRAWS, 1), means.expand(DRAWS, 1), log_scales.expand(DRAWS, 1), v, generator=g
    )
    counts = torch.bincount(values, minlength=v)
    result = chi_square(counts, law)
    assert result.cells >= 100 and result.p_value > ALPHA, result
    assert chi_square(counts, torch.roll(law, 8)).p_value < ALPHA  # 8 bins off: rejected


def tiny_model(num_values: int = 4, *, classes: int = 2) -> Fractal:
    torch.manual_seed(0)
    model = Fractal(
        [(SequenceChunks(4, 2), ARLevelConfig(width=16, depth=1, heads=2)),
         (SequenceChunks(2, 1), ARLevelConfig(width=16, depth=1, heads=2))],
        leaf=DiscretizedLogisticLeafConfig(num_values=num_values, num_components=3), num_classes=classes,
    ).double().eval()
    g = torch.Generator().manual_seed(3)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn(p.shape, generator=g, dtype=p.dtype) * 0.6)
    return model


@pytest.mark.parametrize("label", [None, 1])
def test_a_fractal_with_direct_sampling_samples_its_likelihood(label):
    model = tiny_model()
    model.leaf.sampling = "direct"
    check_sampler(model, y=label, num_samples=6000)  # chi-square over all 256 sequences


def context(**options) -> DecodeContext:
    return DecodeContext(SampleOptions(**options), torch.Generator().manual_seed(0), guided=False, scale=1.0)


def test_known_values_are_kept_and_log_probs_are_those_of_the_tempered_mixture():
    leaf = DiscretizedLogisticLeaf((3,), 8, 1, 300, num_components=4, sampling="direct").double()
    cond = torch.randn(5, 1, 8, dtype=torch.float64)
    x = torch.randint(0, 300, (5, 3))
    known = torch.tensor([True, False, True]).expand(5, 3)
    with torch.no_grad():
        out, logp = leaf.decode(x, known, cond, context(temperature=0.8))
        assert torch.equal(out[known], x[known]) and bool((out >= 0).all() and (out < 300).all())
        params = leaf.head(leaf.norm(cond[:, 0])).view(5, 3, 3, 4)
        w, s = tempered_logistic_parameters(params[:, :, 0], params[:, :, 2], 0.8)
        law = discretized_logistic_log_probs(w, params[:, :, 1], s, 300)  # [5, 3, V]
        want = law.gather(-1, out[..., None])[..., 0][:, 1]  # the drawn (unknown) element only
        assert torch.allclose(logp, want, atol=1e-10)
        forced = dataclass_replace(context(), force=True)
        same, flp = leaf.decode(x, torch.zeros_like(known), cond, forced)
        assert torch.equal(same, x)
        assert torch.allclose(flp, leaf.observed_log_probs(x, cond).sum(-1), atol=1e-10)


def dataclass_replace(ctx: DecodeContext, **changes) -> DecodeContext:
    import dataclasses

    return dataclasses.replace(ctx, **changes)


def test_stepwise_likelihood_and_guided_fallback_under_direct_sampling():
    model = tiny_model()
    y = torch.tensor([0, 1, 1])
    with torch.no_grad():
        bins = model.sample(y=y, generator=torch.Generator().manual_seed(4), guidance=2.0)
        plain_bins = model.sample(y=y, generator=torch.Generator().manual_seed(4))
        model.leaf.sampling = "direct"
        # guidance needs all bins: the same values as the bins path, from the same seed
        assert torch.equal(model.sample(y=y, generator=torch.Generator().manual_seed(4), guidance=2.0), bins)
        direct = model.sample(y=y, generator=torch.Generator().manual_seed(4))
        again = model.sample(y=y, generator=torch.Generator().manual_seed(4))
        assert torch.equal(direct, again)  # reproducible from a seed
        assert model.leaf.sampling == "direct" and plain_bins.shape == direct.shape
        assert torch.allclose(model.stepwise_log_prob(direct, y), model.log_prob(direct, y).value, atol=1e-10)


@pytest.mark.parametrize("bad", ["fast", "", None, 1])
def test_unknown_sampling_is_refused(bad):
    with pytest.raises(ValueError, match="sampling must be one of"):
        DiscretizedLogisticLeaf((1,), 8, 1, 16, sampling=bad)
    leaf = DiscretizedLogisticLeaf((1,), 8, 1, 16)
    assert leaf.sampling == "bins"
    with pytest.raises(ValueError, match="sampling must be one of"):
        leaf.sampling = bad


@pytest.mark.parametrize("bad", [math.nan, math.inf])
def test_non_finite_mixture_parameters_are_refused_when_sampling(bad):
    leaf = DiscretizedLogisticLeaf((2,), 8, 1, 16, sampling="direct")
    with torch.no_grad():
        leaf.head.bias.fill_(bad)
        with pytest.raises(ValueError, match="NaN or infinite"):
            leaf.decode(torch.zeros(2, 2, dtype=torch.long), torch.zeros(2, 2, dtype=torch.bool),
                        torch.randn(2, 1, 8), context())


@pytest.mark.parametrize("bad", [0.0, -1.0])
def test_tempering_needs_a_positive_temperature(bad):
    with pytest.raises(ValueError, match="temperature"):
        tempered_logistic_parameters(torch.zeros(1, 2), torch.zeros(1, 2), bad)


@pytest.mark.parametrize(
    ("shapes", "num_values", "match"),
    [
        (((2, 3), (2, 3), (2, 3)), 1, "num_values"),
        (((2, 3), (2, 3), (2, 3)), 2.0, "num_values"),
        (((2, 3), (2, 4), (2, 3)), 16, "share one shape"),
        (((), (), ()), 16, "share one shape"),
    ],
)
def test_sampler_refuses_bad_arguments(shapes, num_values, match):
    w, m, s = (torch.zeros(shape) for shape in shapes)
    with pytest.raises(ValueError, match=match):
        sample_discretized_logistic(w, m, s, num_values, generator=None)
