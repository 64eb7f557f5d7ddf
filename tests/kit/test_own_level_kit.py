"""The contract kit over the tutorial's custom levels (docs/tutorials/own_level.md).

The GRU level is written only against the public ``Level`` base; the kit checks it at the top of
a fractal and below an AR level: normalisation, decomposition, KV-cache equivalence (the cached
variant walks its own incremental path), the sampler against its exact law (plain, tempered,
guided on the linear schedule), the callback, completion, config and save/load round trips.
"""

from __future__ import annotations

import pytest
from own_level import CachedGRULevelConfig, GRULevelConfig

from fractalkit.testing import check_component


@pytest.mark.parametrize(
    "config_class",
    [GRULevelConfig, pytest.param(CachedGRULevelConfig, marks=pytest.mark.slow)],  # ~10 s each
    ids=["gru", "gru_cached"],
)
def test_kit_accepts_the_tutorial_level(config_class):
    results = check_component(level=config_class(width=16), num_samples=3000)
    assert set(results) == {"top", "below"}
    for name, result in results.items():
        # Every check that needs an enumerable support ran (none was skipped for lack of it).
        for check in ("normalisation", "decomposition", "kv_cache", "callback", "save_load"):
            assert check in result, f"{name}: {check} did not run; skipped: {result.get('skipped')}"
        assert any(key.startswith("sampler") for key in result), f"{name}: no sampler check ran"
