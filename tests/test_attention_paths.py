"""The explicit short-sequence attention path equals SDPA, and only the cases it was measured for
take it (``fractalkit.nn.attention``, issue 23).

Forward outputs and the gradients of input and every parameter are compared between the same
layer with the path on and off (``EXPLICIT_MIN_KEYS``/``EXPLICIT_MAX_KEYS`` patched to route
everything through SDPA), in float32 (rounding tolerance) and float64 (tight), over causal and
not, heads, and key lengths on both sides of both bounds.
"""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch
from torch import Tensor

from fractalkit.nn import Attention, KVCache
from fractalkit.nn import attention as attention_module

LOW = attention_module.EXPLICIT_MIN_KEYS
HIGH = attention_module.EXPLICIT_MAX_KEYS
LENGTHS = sorted({1, 2, LOW - 1, LOW, LOW + 1, HIGH - 1, HIGH, HIGH + 1} - {0})
TOLERANCE = {torch.float32: 2e-5, torch.float64: 1e-12}


def _run(attn: Attention, x: Tensor, causal: bool, grad: Tensor) -> list:
    out = attn(x, causal=causal)
    return [out, *torch.autograd.grad(out, [x, *attn.parameters()], grad)]


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("heads", [1, 4])
@pytest.mark.parametrize("causal", [False, True])
@pytest.mark.parametrize("length", LENGTHS)
def test_explicit_path_equals_sdpa_forward_and_backward(length, causal, heads, dtype, monkeypatch):
    torch.manual_seed(length * 10 + heads)
    width = 32 * heads
    attn = Attention(width, heads, bias=True).to(dtype)
    x = torch.randn(3, length, width, dtype=dtype, requires_grad=True)
    grad = torch.randn(3, length, width, dtype=dtype)
    q = x.new_empty(3, heads, length, width // heads)
    takes = attention_module.explicit_wanted(q, length, cached=False, dropout=0.0)
    assert takes == (LOW <= length <= HIGH)
    calls = []
    real = attention_module.explicit_attention
    monkeypatch.setattr(
        attention_module, "explicit_attention", lambda *a, **k: calls.append(1) or real(*a, **k)
    )
    got = _run(attn, x, causal, grad)
    assert len(calls) == int(takes)  # the layer follows the dispatch decision
    monkeypatch.setattr(attention_module, "EXPLICIT_MAX_KEYS", 0)  # everything through SDPA
    want = _run(attn, x, causal, grad)
    assert len(calls) == int(takes)
    tol = TOLERANCE[dtype]
    for a, b in zip(got, want, strict=True):
        torch.testing.assert_close(a, b, rtol=tol, atol=tol)


@pytest.mark.parametrize(
    ("causal", "s", "length", "e"),
    [(c, n, n, e) for c in (False, True) for n, e in ((1, 8), (3, 16), (17, 64), (30, 32))]
    + [(False, 5, 9, 32), (False, 1, 20, 16)],
)
def test_explicit_attention_function_equals_sdpa(causal, s, length, e):
    """The bare function, float64, queries and keys of their own (not through a layer)."""
    g = torch.Generator().manual_seed(s * 100 + length)
    q, k, v = (torch.randn(2, 3, n, e, generator=g, dtype=torch.float64) for n in (s, length, length))
    got = attention_module.explicit_attention(q, k, v, causal=causal)
    want = torch.nn.functional.scaled_dot_product_attention(q, k, v, is_causal=causal)
    torch.testing.assert_close(got, want, rtol=1e-12, atol=1e-12)


def _q(device: str = "cpu", dtype=torch.float32):
    return SimpleNamespace(device=torch.device(device), dtype=dtype)


@pytest.mark.parametrize(
    ("case", "q", "cached", "dropout"),
    [
        ("cuda", _q("cuda"), False, 0.0),
        ("meta device", _q("meta"), False, 0.0),
        ("kv cache", _q(), True, 0.0),
        ("attention dropout", _q(), False, 0.1),
        ("bfloat16", _q(dtype=torch.bfloat16), False, 0.0),
        ("float16", _q(dtype=torch.float16), False, 0.0),
    ],
)
def test_other_cases_keep_sdpa(case, q, cached, dropout):
    length = (LOW + HIGH) // 2  # a length the path would otherwise take
    assert attention_module.explicit_wanted(_q(), length, cached=False, dropout=0.0)
    assert not attention_module.explicit_wanted(q, length, cached=cached, dropout=dropout), case


@pytest.mark.parametrize("mode", ["cache", "dropout"])
def test_layer_with_cache_or_dropout_never_takes_the_explicit_path(mode, monkeypatch):
    def refuse(*args, **kwargs):
        raise AssertionError("explicit path taken")

    monkeypatch.setattr(attention_module, "explicit_attention", refuse)
    torch.manual_seed(0)
    length = (LOW + HIGH) // 2
    if mode == "cache":
        attn = Attention(64, 4, bias=False).eval()
        cache = KVCache(2, 4, 16, length, "cpu", torch.float32)
        attn(torch.randn(2, length, 64), causal=True, cache=cache)
        assert cache.length == length
    else:
        attn = Attention(64, 4, bias=True, attn_dropout=0.1).train()
        attn(torch.randn(2, length, 64), causal=False)


# ---- bfloat16 training (autocast): the explicit form with float32 scores ----------------------

#: the bound this file was written for (read from the module where it exists)
BF16_HIGH = getattr(attention_module, "EXPLICIT_MAX_KEYS_BF16_TRAINING", 128)
BF16_LENGTHS = [1, 3, LOW - 1, 21, 69, BF16_HIGH, BF16_HIGH + 1]


def _autocast_run(attn: Attention, x: Tensor, causal: bool, grad: Tensor) -> list:
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = attn(x, causal=causal)
    return [out.float(), *torch.autograd.grad(out, [x, *attn.parameters()], grad.to(out.dtype))]


def _relative_error(got: Tensor, want: Tensor) -> float:
    """``|got - want| / |want|`` in the Frobenius norm (sums of bf16 terms, such as a bias's
    gradient, drift element by element; their norm does not)."""
    want = want.float()
    return ((got.float() - want).norm() / want.norm().clamp_min(1e-12)).item()


@pytest.mark.parametrize("heads", [1, 4])
@pytest.mark.parametrize("causal", [False, True])
@pytest.mark.parametrize("length", BF16_LENGTHS)
def test_bf16_training_takes_the_explicit_path_within_bf16_tolerance(length, causal, heads, monkeypatch):
    """Under bf16 autocast with a backward to follow, calls up to the bound take the explicit
    form; its output and the gradients of input and parameters are within bf16's tolerance of
    SDPA's bf16 kernel and of float32 without autocast."""
    torch.manual_seed(length * 10 + heads)
    width = 32 * heads
    attn = Attention(width, heads, bias=True)
    x = torch.randn(2, length, width, requires_grad=True)
    grad = torch.randn(2, length, width)
    takes = length <= BF16_HIGH
    q = torch.empty(2, heads, length, width // heads, dtype=torch.bfloat16, requires_grad=True)
    assert attention_module.explicit_wanted(q, length, cached=False, dropout=0.0) == takes
    calls = []
    real = attention_module.explicit_attention
    monkeypatch.setattr(
        attention_module, "explicit_attention", lambda *a, **k: calls.append(1) or real(*a, **k)
    )
    got = _autocast_run(attn, x, causal, grad)
    assert len(calls) == int(takes)
    out = got[0]
    monkeypatch.setattr(attention_module, "EXPLICIT_MAX_KEYS_BF16_TRAINING", 0)
    sdpa = _autocast_run(attn, x, causal, grad)
    assert len(calls) == int(takes)
    reference = _run(attn, x, causal, grad)  # float32, no autocast
    assert out.dtype == torch.float32  # compared as float; the layer returned autocast's dtype
    for a, b, c in zip(got, sdpa, reference, strict=True):  # bf16 keeps 8 bits: 2% in norm
        assert _relative_error(a, b) <= 0.02
        assert _relative_error(a, c) <= 0.02


@pytest.mark.parametrize("case", ["no_grad", "inference_mode", "frozen"])
def test_bf16_without_a_backward_keeps_sdpa(case, monkeypatch):
    """Sampling under bf16 autocast (no backward) keeps SDPA: its bf16 forward is the faster one."""

    def refuse(*args, **kwargs):
        raise AssertionError("explicit path taken")

    monkeypatch.setattr(attention_module, "explicit_attention", refuse)
    torch.manual_seed(0)
    attn = Attention(64, 4, bias=True)
    x = torch.randn(2, 21, 64)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        if case == "no_grad":
            with torch.no_grad():
                attn(x, causal=False)
        elif case == "inference_mode":
            with torch.inference_mode():
                attn(x, causal=False)
        else:
            attn.requires_grad_(False)
            assert not attn(x, causal=False).requires_grad


@pytest.mark.parametrize("causal", [False, True])
@pytest.mark.parametrize(("s", "e"), [(3, 16), (21, 64), (69, 32), (261, 64)])
def test_bf16_explicit_attention_follows_the_originals_policy(s, e, causal):
    """The bare function on bf16 q, k, v computes what the original FractalGen's attention does
    under autocast: scores and softmax in float32 (here float64, to one bf16 step), the weights
    rounded to bf16 for the product with v, a bf16 result. Rounding the scores to bf16 as well
    (what a plain bf16 ``q @ k^T`` would do) fails this at 69 and 261 keys."""
    g = torch.Generator().manual_seed(s * 100 + e)
    q, k, v = (torch.randn(4, 2, s, e, generator=g).mul(2).to(torch.bfloat16) for _ in range(3))
    got = attention_module.explicit_attention(q, k, v, causal=causal)
    assert got.dtype == torch.bfloat16
    scores = q.double() @ k.double().transpose(-2, -1) * e**-0.5
    if causal:
        scores = scores.masked_fill(torch.ones(s, s, dtype=torch.bool).triu(1), float("-inf"))
    policy = (scores.softmax(-1).to(torch.bfloat16).double() @ v.double()).to(torch.bfloat16).double()
    step = 2.0**-7 * policy.abs().max().item()  # one bf16 rounding step at the largest output
    assert (got.double() - policy).abs().max().item() <= step
    exact = torch.nn.functional.scaled_dot_product_attention(q.double(), k.double(), v.double(), is_causal=causal)
    torch.testing.assert_close(got.double(), exact, rtol=0.05, atol=0.05)
