"""The shared layers: rotary embeddings, attention with a KV cache, backbones, block sizes and
the linear layer's skinny CPU path (schedules and orders: tests/test_schedules.py).

Shape letters: N sequences, H heads, S tokens, E head dim, D width, k children, L length.
"""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from hypothesis import given
from hypothesis import strategies as st

from fractalkit.nn import Attention, Backbone, KVCache, Linear, attention, rope_2d_table
from fractalkit.nn.blocks import swiglu_hidden
from fractalkit.nn.rope import apply_rope
from fractalkit.partition import ImagePatches

# ---- rotary embeddings -------------------------------------------------------------------------


def test_rope_table_shape_and_zeroed_condition_positions() -> None:
    positions = ImagePatches(8, 2, channels=1).positions()  # [16, 2]
    table = rope_2d_table(positions, head_dim=8, num_prefix=2)
    assert table.shape == (2 + 16, 4, 2) and table.dtype == torch.float32
    assert bool((table[:2] == 0).all())  # condition tokens: cos = sin = 0
    # Child 0 sits at (0, 0): no rotation at all.
    torch.testing.assert_close(table[2], torch.tensor([[1.0, 0.0]] * 4))
    # Each remaining position's (cos, sin) pairs lie on the unit circle.
    torch.testing.assert_close(table[2:].pow(2).sum(-1), torch.ones(16, 4))
    # The first half of the pairs follows the row, the second half the column.
    row, col = 1, 2  # child 6 of a 4x4 grid
    j = 2 + row * 4 + col
    torch.testing.assert_close(table[j, 0], torch.tensor([math.cos(row), math.sin(row)]))
    torch.testing.assert_close(table[j, 2], torch.tensor([math.cos(col), math.sin(col)]))
    with pytest.raises(ValueError, match="divisible by 4"):
        rope_2d_table(positions, head_dim=6, num_prefix=0)


def test_rope_zeroes_condition_queries_and_preserves_pair_norms():
    gen = torch.Generator().manual_seed(0)
    positions = ImagePatches(4, 2, channels=1).positions()  # [4, 2]
    table = rope_2d_table(positions, head_dim=8, num_prefix=1).double()
    q = torch.randn(2, 3, 5, 8, generator=gen, dtype=torch.float64)  # [N, H, S=1+4, E]
    out = apply_rope(q, table)
    assert out.shape == q.shape and out.dtype == torch.float64
    assert torch.all(out[:, :, 0] == 0)  # the condition token's query is zeroed
    pair_norm = lambda t: t.unflatten(-1, (-1, 2)).norm(dim=-1)  # noqa: E731
    # (the table is float32 by design, so the rotation is exact to float32 precision)
    torch.testing.assert_close(pair_norm(out[:, :, 1:]), pair_norm(q[:, :, 1:]), rtol=1e-6, atol=0)
    # And it really rotates: children off the origin change.
    assert (out[:, :, 2:] - q[:, :, 2:]).abs().max() > 1e-3


def test_rope_scores_depend_on_relative_2d_positions_only():
    # <R(p) q, R(p') k> = <R(p + t) q, R(p' + t) k> for any shift t of both (row, col).
    gen = torch.Generator().manual_seed(1)
    head_dim = 16
    q = torch.randn(head_dim, generator=gen, dtype=torch.float64)
    k = torch.randn(head_dim, generator=gen, dtype=torch.float64)

    def score(pq, pk):
        table = rope_2d_table(torch.tensor([pq, pk]), head_dim, num_prefix=0).double()
        rq = apply_rope(q.view(1, 1, 1, -1), table[:1])
        rk = apply_rope(k.view(1, 1, 1, -1), table[1:])
        return float((rq * rk).sum())

    base = score((1, 2), (3, 0))
    assert score((4, 5), (6, 3)) == pytest.approx(base, abs=1e-6)
    assert score((0, 7), (2, 5)) == pytest.approx(base, abs=1e-6)
    # A different relative offset gives a different score (the test has teeth).
    assert abs(score((1, 2), (3, 1)) - base) > 1e-4


def test_rope_rejects_head_dims_not_divisible_by_4():
    with pytest.raises(ValueError, match="divisible by 4"):
        rope_2d_table(torch.zeros(4, 2, dtype=torch.long), head_dim=6, num_prefix=1)


# ---- attention and the KV cache -------------------------------------------------------------


@pytest.mark.parametrize("fixed_shape", [False, True])
@pytest.mark.parametrize("bias", [True, False])
@pytest.mark.parametrize("chunks", [[1] * 7, [3, 1, 2, 1], [7]])
def test_attention_with_cache_equals_without(bias, chunks, fixed_shape):
    torch.manual_seed(0)
    attn = Attention(16, 4, bias=bias).double().eval()
    gen = torch.Generator().manual_seed(2)
    x = torch.randn(3, 7, 16, generator=gen, dtype=torch.float64)  # [N, S, D]
    positions = ImagePatches((2, 3), 1, channels=1).positions()  # 6 children after 1 condition
    rope = rope_2d_table(positions, head_dim=4, num_prefix=1).double()  # [7, 2, 2]
    full = attn(x, causal=True, rope=rope)
    cache = KVCache(3, 4, 4, capacity=7, device=x.device, dtype=x.dtype, fixed_shape=fixed_shape)
    pieces, start = [], 0
    for size in chunks:  # one token at a time, and blocks of several after cached ones
        stop = start + size
        pieces.append(attn(x[:, start:stop], causal=True, rope=rope[start:stop], cache=cache))
        start = stop
    torch.testing.assert_close(torch.cat(pieces, 1), full, rtol=0, atol=1e-12)
    assert cache.length == 7


def test_attention_is_causal():
    torch.manual_seed(0)
    attn = Attention(8, 2, bias=True).double()
    x = torch.randn(2, 5, 8, dtype=torch.float64)
    y = x.clone()
    y[:, 3:] += 1.0  # change the future
    torch.testing.assert_close(
        attn(x, causal=True)[:, :3], attn(y, causal=True)[:, :3], rtol=0, atol=1e-12
    )
    assert (attn(x, causal=False)[:, :3] - attn(y, causal=False)[:, :3]).abs().max() > 1e-6


def test_kv_cache_capacity_is_enforced():
    cache = KVCache(1, 2, 4, capacity=3, device="cpu", dtype=torch.float32)
    cache.append(torch.zeros(1, 2, 2, 4), torch.zeros(1, 2, 2, 4))
    with pytest.raises(ValueError, match="capacity 3"):
        cache.append(torch.zeros(1, 2, 2, 4), torch.zeros(1, 2, 2, 4))


@pytest.mark.parametrize("style", ["vit", "llama"])
def test_backbone_with_caches_equals_without(style):
    torch.manual_seed(0)
    net = Backbone(style, 16, 2, 2).double().eval()
    x = torch.randn(2, 5, 16, dtype=torch.float64)
    full = net(x, causal=True)
    caches = net.new_caches(2, 5, x)
    steps = [net(x[:, j : j + 1], causal=True, caches=caches) for j in range(5)]
    torch.testing.assert_close(torch.cat(steps, 1), full, rtol=0, atol=1e-12)
    assert len(caches) == 2 and all(c.keys.dtype == torch.float64 for c in caches)


def test_attention_rejects_width_not_divisible_by_heads():
    with pytest.raises(ValueError, match="not divisible by heads"):
        Attention(10, 4, bias=True)


@given(seed=st.integers(0, 1000), head_dim=st.sampled_from([4, 8, 16]))
def test_rope_rotates_adjacent_pairs_and_preserves_norms(seed: int, head_dim: int) -> None:
    g = torch.Generator().manual_seed(seed)
    positions = ImagePatches(4, 1, channels=1).positions()
    table = rope_2d_table(positions, head_dim=head_dim, num_prefix=1).double()  # [17, E/2, 2]
    x = torch.randn(2, 3, 17, head_dim, generator=g, dtype=torch.float64)
    out = apply_rope(x, table)
    assert out.shape == x.shape and out.dtype == x.dtype
    pair_in = x.unflatten(-1, (-1, 2)).norm(dim=-1)
    pair_out = out.unflatten(-1, (-1, 2)).norm(dim=-1)
    torch.testing.assert_close(pair_out[..., 1:, :], pair_in[..., 1:, :])  # rotations
    assert bool((out[..., 0, :] == 0).all())  # the condition position is zeroed
    # Relative positions: <R_m q, R_n k> depends on m - n only (here along a row).
    q, k = x[0, 0, 1], x[0, 0, 2]
    table_q, table_k = table[[2]], table[[3]]  # positions (0, 1), (0, 2)
    shifted_q, shifted_k = table[[1]], table[[2]]  # positions (0, 0), (0, 1)
    a = (apply_rope(q[None, None, None], table_q) * apply_rope(k[None, None, None], table_k)).sum()
    b = (apply_rope(q[None, None, None], shifted_q) * apply_rope(k[None, None, None], shifted_k)).sum()
    torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5)  # the table's angles are float32


def test_swiglu_hidden_matches_llama_rounding() -> None:
    assert swiglu_hidden(1024) == 2816  # int(2 * 4096 / 3) = 2730 -> 2816
    assert swiglu_hidden(64) == 256


# ---- the linear layer's skinny path ------------------------------------------------------------


@pytest.mark.parametrize("bias", [True, False])
@pytest.mark.parametrize("shape", [(2, 1024), (3, 1, 1024), (64, 1024), (65, 1024), (1024,)])
def test_linear_skinny_path_equals_f_linear(bias: bool, shape: tuple[int, ...]) -> None:
    torch.manual_seed(0)
    layer = Linear(1024, 512, bias=bias)  # 2^19 weights: large enough for the W @ x^T form
    x = torch.randn(*shape, requires_grad=True)
    out = layer(x)
    ref = torch.nn.functional.linear(x, layer.weight, layer.bias)
    assert out.shape == ref.shape and out.is_contiguous()
    torch.testing.assert_close(out, ref, rtol=1e-5, atol=1e-5)
    (g_out,) = torch.autograd.grad(out.sum(), x)
    (g_ref,) = torch.autograd.grad(ref.sum(), x)
    torch.testing.assert_close(g_out, g_ref, rtol=1e-5, atol=1e-5)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert layer(x).dtype == torch.nn.functional.linear(x, layer.weight, layer.bias).dtype


def test_linear_keeps_nn_linear_state_dict() -> None:
    layer = Linear(4, 3)
    assert isinstance(layer, torch.nn.Linear)
    assert set(layer.state_dict()) == {"weight", "bias"}


@pytest.mark.parametrize("path", ["sdpa", "explicit"])
@pytest.mark.parametrize("causal", [False, True])
@pytest.mark.parametrize(("n", "s", "width", "heads"), [(3, 5, 16, 4), (7, 3, 64, 4), (2, 21, 32, 2), (1, 1, 8, 1)])
def test_attention_without_rope_equals_the_permuted_formulation(path, causal, n, s, width, heads, monkeypatch) -> None:
    """The [N, S, 3, H, E] unbind-then-transpose views give the same outputs and gradients, bit
    for bit, as permuting the packed product first (what the layer computed before), through
    either attention kernel (SDPA, or the explicit short-sequence path)."""
    if path == "sdpa":
        monkeypatch.setattr(attention, "EXPLICIT_MAX_KEYS", 0)
    else:  # every length here through the explicit path
        monkeypatch.setattr(attention, "EXPLICIT_MIN_KEYS", 1)
        monkeypatch.setattr(attention, "EXPLICIT_MAX_KEYS", 64)
    torch.manual_seed(n * 100 + s)
    attn = Attention(width, heads, bias=True)
    x = torch.randn(n, s, width, requires_grad=True)
    e = width // heads
    qkv = attn.qkv(x).view(n, s, 3, heads, e).permute(2, 0, 3, 1, 4)
    q, k, v = qkv.unbind(0)
    assert attention.explicit_wanted(q, s, cached=False, dropout=0.0) == (path == "explicit")
    if path == "sdpa":
        ref = F.scaled_dot_product_attention(q, k, v, is_causal=causal and s > 1)
    else:
        ref = attention.explicit_attention(q, k, v, causal=causal and s > 1)
    ref = attn.proj(ref.transpose(1, 2).reshape(n, s, width))
    got = attn(x, causal=causal)
    assert torch.equal(got, ref)
    grad = torch.randn_like(got)
    params = [x, *attn.parameters()]
    for a, b in zip(torch.autograd.grad(got, params, grad), torch.autograd.grad(ref, params, grad), strict=True):
        assert torch.equal(a, b)
