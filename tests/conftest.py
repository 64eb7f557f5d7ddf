"""Shared pytest configuration: a deterministic hypothesis profile and offline datasets."""

import os
from collections.abc import Iterator

import pytest
import torch
from hypothesis import settings

# Tests never download: dataset loaders read only the local copies in ../shared/data.
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
