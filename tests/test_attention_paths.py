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
