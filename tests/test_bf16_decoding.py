"""Decoding under bf16 CPU autocast without the 16-bit overheads (issue 23, target 3).

- KV-cached steps attend in the cache's float32 (``fractalkit.nn.attention.cached_attention_in``):
  a bf16 attention step of one query is 3-6x slower on a CPU without AMX. Checked: the
  attention kernel sees float32, the steps agree with float32 decoding within the bf16
  tolerance, and float32 decoding is untouched (bit for bit the same as before).
- A LLaMA block's two SwiGLU input products run as one packed bf16 product over the stacked
  weights (``fractalkit.nn.linear.packed_pair``): the same values as the two products within
  the bf16 tolerance, packed once per context, never stale.
"""

from __future__ import annotations

import contextlib

import pytest
import torch
import torch.nn.functional as F
from test_bf16 import BF16_NATS_PER_DIM, _wide_model, autocast

from fractalkit.nn import Linear
from fractalkit.nn import attention as attention_module
from fractalkit.nn import linear as linear_module
from fractalkit.nn.blocks import Backbone, LlamaBlock
from fractalkit.nn.linear import packed_pair, packed_weights, packing_available

#: a bf16 product against float32 (8 significant bits), as in test_bf16_packed.py
BF16_PRODUCT = {"rtol": 0.02, "atol": 0.02}

needs_packing = pytest.mark.skipif(not packing_available(), reason="no oneDNN bf16 products here")


def _decode(backbone: Backbone, x: torch.Tensor, *, bf16: bool, fixed_shape: bool) -> torch.Tensor:
    """Token-by-token cached decoding of ``x [N, S, D]``; the outputs ``[N, S, D]`` in float32."""
    backbone.fixed_shape_caches = fixed_shape
    n, s, _ = x.shape
    context = autocast if bf16 else contextlib.nullcontext()
    with torch.no_grad(), context, packed_weights():
        caches = backbone.new_caches(n, s, x)
        out = [backbone(x[:, i : i + 1], causal=True, caches=caches) for i in range(s)]
    return torch.cat(out, 1).float()


@pytest.mark.parametrize("fixed_shape", [False, True])
@pytest.mark.parametrize(("style", "width", "heads", "steps"), [
    ("llama", 512, 8, 5),
    ("llama", 256, 4, 9),
    ("vit", 512, 8, 4),
    ("vit", 128, 2, 3),
])
def test_cached_steps_under_autocast_attend_in_float32(style, width, heads, steps, fixed_shape, monkeypatch):
    torch.manual_seed(width + steps)
    backbone = Backbone(style, width, 2, heads).eval()
    backbone.reset_parameters()
    x = torch.randn(2, steps, width)
    seen: list[torch.dtype] = []
    sdpa = F.scaled_dot_product_attention

    def spy(q, k, v, *args, **kwargs):
        seen.append(q.dtype)
        assert q.dtype == k.dtype == v.dtype
        return sdpa(q, k, v, *args, **kwargs)

    monkeypatch.setattr(F, "scaled_dot_product_attention", spy)
    want = _decode(backbone, x, bf16=False, fixed_shape=fixed_shape)
    assert set(seen) == {torch.float32}
    seen.clear()
    got = _decode(backbone, x, bf16=True, fixed_shape=fixed_shape)
    assert set(seen) == {torch.float32} and len(seen) == 2 * steps  # every step, every block
    with torch.no_grad():  # teacher-forced float32: the cached float32 steps agree with it
        whole = backbone(x, causal=True)
    torch.testing.assert_close(want, whole, rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(got, want, rtol=0.05, atol=0.05)


@pytest.mark.parametrize("guidance", [1.0, 2.0])
def test_float32_decoding_is_unchanged_by_the_widened_path(guidance, monkeypatch) -> None:
    """Float32 sampling never takes the widened attention path: with the path disabled the
    samples and their log-probabilities are bit for bit the same."""
    model = _wide_model("ar")
    y = torch.tensor([0, 2])

    x = torch.randint(0, 256, (2, 3, 4, 4), generator=torch.Generator().manual_seed(4))

    def draw():
        with torch.no_grad():
            sample = model.sample(y=y, generator=torch.Generator().manual_seed(5), guidance=guidance)
            return sample, model.stepwise_log_prob(x, y)

    want = draw()
    monkeypatch.setattr(attention_module, "widened_decoding", lambda q, k: False)
    got = draw()
    for a, b in zip(want, got, strict=True):
        assert torch.equal(a, b)


def test_stepwise_log_prob_under_autocast_within_tolerance_of_float32() -> None:
    model = _wide_model("ar")
    x = torch.randint(0, 256, (2, 3, 4, 4), generator=torch.Generator().manual_seed(2))
    y = torch.tensor([1, 2])
    with torch.no_grad():
        ref = model.stepwise_log_prob(x, y)
        with autocast:
            got = model.stepwise_log_prob(x, y)
    assert float((got - ref).abs().max()) <= BF16_NATS_PER_DIM * x[0].numel()


def _pair(features: tuple[int, int], bias: bool) -> tuple[Linear, Linear]:
    return Linear(*features, bias=bias), Linear(*features, bias=bias)


@needs_packing
@pytest.mark.parametrize("mode", ["autocast", "bf16-weights"])
@pytest.mark.parametrize("bias", [True, False])
@pytest.mark.parametrize(("features", "shape"), [
    ((512, 1536), (2, 1, 512)),
    ((512, 1536), (6, 512)),
    ((1024, 512), (1, 1024)),
    ((512, 512), (64, 512)),
])
def test_packed_pair_matches_the_two_products(mode, bias, features, shape) -> None:
    torch.manual_seed(sum(shape) + bias)
    first, second = _pair(features, bias)
    x = torch.randn(*shape)
    with torch.no_grad():
        want32 = torch.cat([F.linear(x, m.weight, m.bias) for m in (first, second)], -1)
        if mode == "bf16-weights":
            first, second, x = first.bfloat16(), second.bfloat16(), x.bfloat16()
            context = contextlib.nullcontext()
        else:
            context = autocast
        with context, packed_weights():
            got = packed_pair(first, second, x)
            again = packed_pair(first, second, x)
            separate = torch.cat([first(x), second(x)], -1)
            assert len([k for k in linear_module._packed.entries if isinstance(k, tuple)]) == (2 if bias else 1)
        assert not linear_module._packed.entries and not linear_module._packed.held
    assert got is not None and got.dtype == torch.bfloat16 and got.shape == want32.shape
    assert torch.equal(got, again)
    torch.testing.assert_close(got, separate)  # bf16's default tolerance
    torch.testing.assert_close(got.float(), want32, **BF16_PRODUCT)


@pytest.mark.parametrize("case", ["float32", "no context", "gradients", "too many rows", "small weight",
                                  "one bias", "other widths"])
def test_packed_pair_declines_where_the_packed_path_does_not_apply(case) -> None:
    first, second = _pair((512, 1536), False)
    x = torch.randn(2, 512)
    context, grad = autocast, False
    if case == "float32":
        context = contextlib.nullcontext()
    elif case == "gradients":
        grad = True
    elif case == "too many rows":
        x = torch.randn(65, 512)
    elif case == "small weight":
        first, second = _pair((128, 256), False)
        x = torch.randn(2, 128)
    elif case == "one bias":
        second = Linear(512, 1536, bias=True)
    elif case == "other widths":
        second = Linear(256, 1536, bias=False)
    outer = contextlib.nullcontext() if case == "no context" else packed_weights()
    with torch.set_grad_enabled(grad), context, outer:
        assert packed_pair(first, second, x) is None
        assert not any(isinstance(k, tuple) for k in linear_module._packed.entries)


@needs_packing
@pytest.mark.parametrize("which", ["first", "second", "first bias", "second bias"])
def test_packed_pair_is_never_stale(which) -> None:
    torch.manual_seed(0)
    first, second = _pair((512, 1536), True)
    x = torch.randn(2, 512)
    with torch.no_grad(), autocast, packed_weights():
        before = packed_pair(first, second, x)
        layer = first if which.startswith("first") else second
        (layer.bias if which.endswith("bias") else layer.weight).mul_(-2.0).add_(0.5)
        after = packed_pair(first, second, x)
    with torch.no_grad():
        want = torch.cat([F.linear(x.bfloat16(), m.weight.bfloat16(), m.bias.bfloat16()) for m in (first, second)], -1)
    assert not torch.equal(after, before)
    torch.testing.assert_close(after, want)


@needs_packing
@pytest.mark.parametrize("rows", [1, 2, 16])
def test_llama_mlp_takes_one_product_for_w1_and_w3(rows, monkeypatch) -> None:
    torch.manual_seed(rows)
    block = LlamaBlock(512, 8).eval()
    h = torch.randn(rows, 1, 512)
    calls: list[tuple[int, ...]] = []
    pointwise = torch.ops.mkldnn._linear_pointwise

    class Ops:  # counts the packed products (torch.ops.mkldnn cannot be patched in place)
        _reorder_linear_weight = torch.ops.mkldnn._reorder_linear_weight
        _is_mkldnn_bf16_supported = torch.ops.mkldnn._is_mkldnn_bf16_supported

        @staticmethod
        def _linear_pointwise(x, w, *args):
            calls.append(tuple(w.shape))
            return pointwise(x, w, *args)

    monkeypatch.setattr(linear_module.torch, "ops", type("T", (), {"mkldnn": Ops})())
    with torch.no_grad():
        want32 = block.mlp(h)
        with autocast, packed_weights():
            got = block.mlp(h)
    monkeypatch.undo()
    with torch.no_grad(), autocast:
        separate = block.w2(F.silu(block.w1(h)) * block.w3(h))
    hidden = block.w1.out_features
    assert calls == [(2 * hidden, 512), (512, hidden)]  # w1 and w3 stacked, then w2
    torch.testing.assert_close(got.float(), separate.float(), **BF16_PRODUCT)
    torch.testing.assert_close(got.float(), want32, **BF16_PRODUCT)
