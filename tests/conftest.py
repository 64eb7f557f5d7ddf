"""Shared pytest configuration: a deterministic hypothesis profile and offline datasets."""

import os

from hypothesis import settings

# Tests never download: dataset loaders read only the local copies in ../shared/data.
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")

# Derandomised so a CI failure reproduces locally; no deadline because CPU timings vary.
settings.register_profile("ci", derandomize=True, deadline=None, max_examples=25, print_blob=True)
settings.load_profile("ci")
