"""The guiding-pixel compatibility switch (``SummaryConfig.input``, formerly ``guide_input``).

No fixture of the original's guiding-pixel forward exists, so the reference is the original's
computation emulated on fractalkit's modules (``benchmarks/guiding_pixel_compat.py``): every
guiding-pixel token replaced by ``pix_proj`` of the normalised block mean, computed as the
original computes it (normalise each pixel in float32, average columns then rows).
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest
import torch

from fractalkit import RGBLeafConfig, SummaryConfig

_PATH = Path(__file__).resolve().parents[2] / "benchmarks" / "guiding_pixel_compat.py"
_spec = importlib.util.spec_from_file_location("guiding_pixel_compat", _PATH)
compat = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(compat)


def test_continuous_switch_reproduces_the_original_leaf_logits():
    figures = compat.main()
    assert figures["switch_vs_original"] < 1e-5
    assert figures["default_vs_original"] > 1e-4  # the comparison can fail: the inputs differ


def test_switch_changes_scoring_only():
    """Sampling feeds the sampled value either way: same draws from the same seed."""
    rounded = compat.build()
    switched = compat.build(input="continuous")
    switched.load_state_dict(rounded.state_dict())
    draws = [
        m.sample(y=torch.tensor([1, 2]), generator=torch.Generator().manual_seed(0), steps=(2, 2, 2))
        for m in (rounded, switched)
    ]
    assert torch.equal(draws[0], draws[1])


def test_summary_input_is_checked():
    with pytest.raises(ValueError, match="input must be 'rounded' or 'continuous'"):
        SummaryConfig(RGBLeafConfig(), input="exact")
