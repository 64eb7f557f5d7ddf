"""The kit can fail: deliberately broken components (defined in tests/kit/components.py) make
the relevant checks raise, with a message naming the check, the figure and the likely cause;
the same checks pass on the working twin, so it is the breakage they catch."""

from __future__ import annotations

import pytest
import torch

from fractalkit.testing import (
    ContractError,
    check_decomposition,
    check_kv_cache,
    check_normalisation,
    check_sampler,
    run_all,
    tiny_fractal,
)
from kit.components import ColdLeafConfig, MarkovLeafConfig, PeekingLeafConfig, drift_the_cache


def test_a_leaf_that_sees_its_own_value_fails_normalisation_and_the_sampler() -> None:
    model = tiny_fractal(leaf=PeekingLeafConfig(num_values=3))
    with pytest.raises(ContractError, match=r"check_normalisation failed: .*\|sum of exp\(log_prob\).*tolerance 1e-06"):
        check_normalisation(model)
    with pytest.raises(ContractError, match=r"check_sampler failed: .*p-value.*does not draw from"):
        check_sampler(model, 1)
    check_decomposition(model)  # scoring and forced decoding agree: not every check fires


def test_a_leaf_that_ignores_temperature_fails_the_tempered_sampler_check() -> None:
    model = tiny_fractal(leaf=ColdLeafConfig(num_values=3))
    check_sampler(model, 1)  # at T = 1 nothing is wrong
    check_normalisation(model)
    with pytest.raises(ContractError, match=r"check_sampler failed: y=1, options=\{'temperature': 0.7\}.*p-value"):
        check_sampler(model, 1, temperature=0.7)
    working = tiny_fractal(leaf=MarkovLeafConfig(num_values=3))  # same weights, sampler intact
    check_sampler(working, 1, temperature=0.7)


def test_a_drifting_cache_fails_the_cache_and_decomposition_checks() -> None:
    model = drift_the_cache(tiny_fractal(seed=2))
    with pytest.raises(ContractError, match=r"check_kv_cache failed: leaf call \d+: largest \|cached - uncached\| logit"):
        check_kv_cache(model)
    with pytest.raises(ContractError, match=r"check_decomposition failed: orders=identity: .*stepwise"):
        check_decomposition(model)
    check_decomposition(model, kv_cache=False)  # the uncached path is intact
    check_kv_cache(tiny_fractal(seed=2))


def test_run_all_reports_the_first_failure() -> None:
    with pytest.raises(ContractError, match="check_normalisation failed"):
        run_all(tiny_fractal(leaf=PeekingLeafConfig(num_values=3)))


def test_a_model_that_ignores_its_label_fails_normalisation() -> None:
    """Guard against a vacuous pass: labels that never reach the model are reported."""
    model = tiny_fractal()
    with torch.no_grad():
        emb = model.conditioner.class_embedding.weight
        emb.copy_(emb[:1].expand_as(emb))
    with pytest.raises(ContractError, match=r"log p\(x \| y=0\) - log p\(x \| y=1\).*never reaches"):
        check_normalisation(model)
