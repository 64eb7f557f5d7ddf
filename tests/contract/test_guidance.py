"""Classifier-free guidance at the leaf: ``guided_logits``' temperature, filter and scale."""

from __future__ import annotations

import torch
from hypothesis import given
from hypothesis import strategies as st

from fractalkit.sampling.guidance import guided_logits

V = 6


def _logits(seed: int, rows: int = 5, spread: float = 4.0) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    cond = torch.randn(rows, V, generator=g, dtype=torch.float64) * spread
    uncond = torch.randn(rows, V, generator=g, dtype=torch.float64) * spread
    return cond, uncond


@given(seed=st.integers(0, 10_000), temperature=st.floats(0.3, 3.0), threshold=st.sampled_from([0.0, 1e-4, 0.05]))
def test_scale_one_gives_the_conditional_logits(seed: int, temperature: float, threshold: float) -> None:
    cond, uncond = _logits(seed)
    out = guided_logits(
        torch.cat([cond, uncond]), guided=True, scale=1.0, temperature=temperature,
        filter_threshold=threshold,
    )
    torch.testing.assert_close(out, cond / temperature, rtol=0, atol=1e-12)


@given(seed=st.integers(0, 10_000), temperature=st.floats(0.3, 3.0))
def test_temperature_divides_logits(seed: int, temperature: float) -> None:
    cond, uncond = _logits(seed)
    out = guided_logits(cond, guided=False, scale=1.0, temperature=temperature, filter_threshold=1e-4)
    torch.testing.assert_close(out, cond / temperature, rtol=0, atol=1e-12)
    # With guidance (filter off): temperature on both halves, then l_u + w (l_c - l_u).
    w = 3.5
    out = guided_logits(torch.cat([cond, uncond]), guided=True, scale=w, temperature=temperature, filter_threshold=0.0)
    expected = (uncond + w * (cond - uncond)) / temperature
    torch.testing.assert_close(out, expected, rtol=1e-12, atol=1e-12)


@given(
    seed=st.integers(0, 10_000),
    scale=st.floats(1.0, 30.0),
    temperature=st.floats(0.5, 2.0),
    threshold=st.sampled_from([1e-4, 1e-2, 0.1]),
)
def test_filter_never_boosts_an_unlikely_value(seed: int, scale: float, temperature: float, threshold: float) -> None:
    """A value whose conditional probability is below the threshold cannot gain on the
    conditional mode: its guided log-odds against the mode are at most its conditional ones."""
    cond, uncond = _logits(seed, spread=6.0)
    out = guided_logits(
        torch.cat([cond, uncond]), guided=True, scale=scale, temperature=temperature,
        filter_threshold=threshold,
    )
    c = cond / temperature
    mode = c.argmax(-1, keepdim=True)
    unlikely = c.softmax(-1) < threshold
    guided_odds = out - out.gather(-1, mode)
    cond_odds = c - c.gather(-1, mode)
    assert bool((guided_odds[unlikely] <= cond_odds[unlikely] + 1e-9).all())


def test_without_the_filter_an_unlikely_value_is_boosted() -> None:
    """The property above is the filter's doing: switched off, the same logits boost value 1."""
    cond = torch.tensor([[10.0, 0.0]], dtype=torch.float64)  # p(value 1 | c) = 4.5e-5
    uncond = torch.tensor([[5.0, -20.0]], dtype=torch.float64)
    both = torch.cat([cond, uncond])
    off = guided_logits(both, guided=True, scale=3.0, temperature=1.0, filter_threshold=0.0)
    on = guided_logits(both, guided=True, scale=3.0, temperature=1.0, filter_threshold=1e-4)
    assert float(off[0, 1] - off[0, 0]) > float(cond[0, 1] - cond[0, 0])  # boosted: 20 > -10
    assert float(on[0, 1] - on[0, 0]) <= float(cond[0, 1] - cond[0, 0]) + 1e-12


def test_low_precision_logits_are_widened() -> None:
    cond, uncond = _logits(0)
    out = guided_logits(torch.cat([cond, uncond]).bfloat16(), guided=True, scale=2.0, temperature=1.0, filter_threshold=1e-4)
    assert out.dtype == torch.float32 and out.shape == (5, V)
