"""Shared pytest configuration: a deterministic hypothesis profile, offline datasets, and the skip
policy (tests/skip_policy.py: under CI a skip for a missing fixture or data file fails)."""

import os
from collections.abc import Iterator

import pytest
import torch
from hypothesis import settings
from skip_policy import pytest_make_collect_report, pytest_runtest_makereport  # noqa: F401 (hooks)

# Tests never download: dataset loaders read only the samples in tests/data and tests/fixtures
# (everything a test reads is in the repository; tests/test_self_contained.py checks it).
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")

# Derandomised so a CI failure reproduces locally; no deadline because CPU timings vary.
settings.register_profile("ci", derandomize=True, deadline=None, max_examples=25, print_blob=True)
settings.load_profile("ci")


@pytest.fixture(autouse=True)
def _one_thread() -> Iterator[None]:
    """Tiny models: one intra-op thread (restored afterwards). Several threads per process on a
    loaded 2-core machine made the same tests 5 to 80 times slower (OpenMP oversubscription)."""
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(previous)
