"""Issue 20, item 8: the bugs a plug-in author planted that the kit missed now fail it, and
their working twins pass (tests/kit/planted.py holds both).

- a cache dropped every 2 steps: caught once a level under test has 4 children;
- a null embedding in a non-persistent buffer: caught by save/load's null and guided checks;
- a non-bijective partitioner: refused when composing, naming it (no ``permute(): duplicate
  dims`` crash in the sampler checks);
- a stale cache in a lower level: caught by completion with partially known lower children;
- a correct but peaked model: inconclusive checks, not failures; a sampler that really ignores
  its generator still fails;
- a constructor that breaks ``Fractal.load``'s meta build: a ContractError saying what to do;
- ``CHECKS`` and ``collect=True``: every failure in one report.
"""

from __future__ import annotations

import math

import pytest
import torch
from own_level import CachedGRULevelConfig

from fractalkit import ARLevelConfig, CategoricalLeafConfig, Fractal, SequenceChunks
from fractalkit.testing import (
    CHECKS,
    ContractError,
    ContractFailures,
    InconclusiveCheck,
    check_kv_cache,
    check_sampler,
    check_save_load,
    check_seeded_sampling,
    run_all,
    tiny_fractal,
)
from kit.components import MarkovLeafConfig, PeekingLeafConfig
from kit.planted import (
    LABELS,
    ArgmaxLeafConfig,
    BufferNullLabels,
    ForgetfulGRULevelConfig,
    Labels,
    MetaSafeLeafConfig,
    MetaUnsafeLeafConfig,
    Overlapping,
    SkippingGRULevelConfig,
)

AR = ARLevelConfig(width=16, depth=1, heads=2)


def test_a_cache_dropped_every_two_steps_fails_with_four_children() -> None:
    forgetful = ForgetfulGRULevelConfig(width=16)
    # What the kit's old model (2 children) saw: nothing wrong.
    two = tiny_fractal(forgetful, CategoricalLeafConfig(num_values=3), SequenceChunks(4, 2))
    check_kv_cache(two)
    # tiny_fractal now gives a level under test 4 children: the third step is wrong.
    with pytest.raises(ContractError, match=r"check_kv_cache failed: leaf call \d+: largest \|cached - uncached\|"):
        check_kv_cache(tiny_fractal(forgetful))
    with pytest.raises(ContractError, match=r"\[model 'top'\] check_(decomposition|kv_cache) failed"):
        from fractalkit.testing import check_component

        check_component(level=forgetful, num_samples=1000)
    check_kv_cache(tiny_fractal(CachedGRULevelConfig(width=16)))  # the working twin


def test_a_null_embedding_in_a_non_persistent_buffer_fails_save_load() -> None:
    model = tiny_fractal(conditioner=BufferNullLabels())
    with pytest.raises(ContractError, match=r"check_save_load failed: .*null condition \(c=None\).*non-persistent buffer"):
        check_save_load(model, conditions=LABELS)
    check_save_load(tiny_fractal(conditioner=Labels()), conditions=LABELS)  # the working twin


def test_a_non_bijective_partitioner_is_refused_when_composing() -> None:
    with pytest.raises(ValueError, match=r"levels\[0\]\[0\], Overlapping\(length=4, children=2\), is not a bijection.*first at flat element 1"):
        Fractal([(Overlapping(4, 2), AR)], MarkovLeafConfig())
    with pytest.raises(ValueError, match="is not a bijection"):
        tiny_fractal(partitioner=Overlapping(4, 2))  # the kit refuses it before any check


def test_a_stale_cache_in_a_lower_level_fails_partial_completion() -> None:
    model = tiny_fractal(SkippingGRULevelConfig(width=16), position="below", seed=1)
    # Every check but the new one passes: below the top, known children were never tested.
    results = run_all(model, skip=["completion_law_partial"])
    assert not any(getattr(r, "inconclusive", False) for r in results.values())
    with pytest.raises(ContractError, match=r"check_completion_law failed: .*chi-square p-value of completions"):
        run_all(model, skip=[c for c in CHECKS if c != "completion_law_partial"])
    # The tutorial's cached level, which advances over known children, passes.
    twin = tiny_fractal(CachedGRULevelConfig(width=16), position="below", seed=1)
    assert run_all(twin, skip=[c for c in CHECKS if c != "completion_law_partial"])[
        "completion_law_partial"
    ].p_value > 1e-3


def _peaked(model: Fractal, factor: float = 40.0) -> Fractal:
    """Sharpen the leaf's logits: a correct model whose samples barely vary."""
    with torch.no_grad():
        for p in model.leaf.parameters():
            p.mul_(factor)
    return model


def test_a_correct_but_peaked_model_is_inconclusive_not_broken() -> None:
    model = _peaked(tiny_fractal(leaf=MarkovLeafConfig(num_values=3)))
    with pytest.raises(InconclusiveCheck, match=r"check_sampler inconclusive: .*cells after pooling"):
        check_sampler(model, 1)
    with pytest.raises(InconclusiveCheck, match="check_seeded_sampling inconclusive"):
        check_seeded_sampling(model, num_samples=2)
    assert not issubclass(InconclusiveCheck, AssertionError)
    results = run_all(model)  # nothing raised: the model is correct
    flagged = {name for name, r in results.items() if getattr(r, "inconclusive", False)}
    assert "sampler" in flagged, flagged
    assert all(math.isnan(results[name].figure) and results[name].detail for name in flagged)
    assert results["normalisation"].figure < 1e-6  # the exact checks still ran and passed


def test_a_sampler_that_ignores_its_generator_still_fails() -> None:
    model = tiny_fractal(leaf=ArgmaxLeafConfig(num_values=3))
    with pytest.raises(ContractError, match=r"check_seeded_sampling failed: .*five seeds.*ignores its generator"):
        check_seeded_sampling(model)


def test_a_constructor_that_reads_tensors_fails_save_load_with_what_to_do() -> None:
    with pytest.raises(ContractError, match=r"check_save_load failed: .*meta device.*plain Python"):
        check_save_load(tiny_fractal(leaf=MetaUnsafeLeafConfig()))
    check_save_load(tiny_fractal(leaf=MetaSafeLeafConfig()))  # the twin: a Python constant


def test_check_names_are_public_and_collect_reports_every_failure() -> None:
    model = tiny_fractal(leaf=PeekingLeafConfig(num_values=3))
    with pytest.raises(ContractFailures) as caught:
        run_all(model, collect=True, num_samples=2000)
    err = caught.value
    assert isinstance(err, ContractError)
    assert {"normalisation", "sampler"} <= set(err.failures), err.failures
    assert list(err.failures) == [c for c in CHECKS if c in err.failures]  # in run order
    assert "decomposition" in err.results and "decomposition" not in err.failures
    assert str(err).startswith(f"{len(err.failures)} check(s) failed:")
    ran = set(err.results) - {"skipped"}
    assert ran | set(err.results["skipped"]) == set(CHECKS)
    with pytest.raises(ValueError, match="unknown check names"):
        run_all(model, skip=["no_such_check"])
    with pytest.raises(ContractFailures, match=r"top/normalisation"):
        from fractalkit.testing import check_component

        check_component(leaf=PeekingLeafConfig(num_values=3), collect=True, num_samples=1000)
