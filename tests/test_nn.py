"""Shared layers and schedules: rotary tables, attention with a KV cache, MAR decoding counts,
training mask counts and order resolution."""

from __future__ import annotations

import math

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

from fractalkit.nn import Attention, Backbone, KVCache, Linear
from fractalkit.nn.blocks import swiglu_hidden
from fractalkit.nn.rope import apply_rope, rope_2d_table
from fractalkit.partition import ImagePatches
from fractalkit.sampling.orders import masked_subset, resolve_orders
from fractalkit.sampling.rng import random_orders, sample_categorical, truncated_normal
from fractalkit.sampling.schedules import decode_counts, guidance_at, training_mask_counts

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


# ---- attention and its cache -------------------------------------------------------------------


@pytest.mark.parametrize("bias", [True, False])
@pytest.mark.parametrize("with_rope", [True, False])
def test_attention_with_cache_equals_without(bias: bool, with_rope: bool) -> None:
    torch.manual_seed(0)
    attn = Attention(16, 2, bias=bias).double()
    x = torch.randn(3, 7, 16, dtype=torch.float64)
    rope = rope_2d_table(torch.stack([torch.zeros(6), torch.arange(6)], 1).long(), 8, 1).double() if with_rope else None
    full = attn(x, causal=True, rope=rope)
    cache = KVCache(3, 2, 8, 7, x.device, x.dtype)
    # One token, then a block of three, then the remaining three one at a time.
    pieces = []
    for start, stop in [(0, 1), (1, 4), (4, 5), (5, 6), (6, 7)]:
        r = None if rope is None else rope[start:stop]
        pieces.append(attn(x[:, start:stop], causal=True, rope=r, cache=cache))
    torch.testing.assert_close(torch.cat(pieces, 1), full, rtol=0, atol=1e-12)
    with pytest.raises(ValueError, match="capacity"):
        attn(x[:, :1], causal=True, cache=cache)


@pytest.mark.parametrize("style", ["vit", "llama"])
def test_backbone_with_caches_equals_without(style: str) -> None:
    torch.manual_seed(1)
    net = Backbone(style, 16, 2, 2).double().eval()
    x = torch.randn(2, 5, 16, dtype=torch.float64)
    full = net(x, causal=True)
    caches = net.new_caches(2, 5, x)
    steps = torch.cat([net(x[:, i : i + 1], causal=True, caches=caches) for i in range(5)], 1)
    torch.testing.assert_close(steps, full, rtol=0, atol=1e-12)


def test_attention_is_causal_and_bidirectional_as_asked() -> None:
    torch.manual_seed(2)
    attn = Attention(8, 2, bias=True).double()
    x = torch.randn(1, 4, 8, dtype=torch.float64)
    y = x.clone()
    y[:, 3] += 1.0  # change the last token only
    torch.testing.assert_close(attn(x, causal=True)[:, :3], attn(y, causal=True)[:, :3])
    assert not torch.allclose(attn(x, causal=False)[:, :3], attn(y, causal=False)[:, :3])


def test_swiglu_hidden_matches_llama_rounding() -> None:
    assert swiglu_hidden(1024) == 2816  # int(2 * 4096 / 3) = 2730 -> 2816
    assert swiglu_hidden(64) == 256


# ---- schedules ---------------------------------------------------------------------------------


@given(unknown=st.lists(st.integers(0, 300), min_size=1, max_size=6), steps=st.integers(1, 70))
def test_decode_counts_cosine_rows_sum_and_decide_at_least_one(unknown: list[int], steps: int) -> None:
    u = torch.tensor(unknown)
    counts = decode_counts(u, steps)
    assert counts.shape == (len(unknown), steps)
    assert torch.equal(counts.sum(1), u)
    assert bool((counts >= 0).all())
    # At least one child per step while any remain undecided.
    remaining = u[:, None] - counts.cumsum(1) + counts  # before each step
    assert bool((counts[remaining > 0] >= 1).all())


@given(unknown=st.lists(st.integers(0, 50), min_size=1, max_size=6))
def test_decode_counts_exact_mode_is_one_per_step(unknown: list[int]) -> None:
    u = torch.tensor(unknown)
    counts = decode_counts(u, None)
    assert counts.shape == (len(unknown), max(unknown))
    assert torch.equal(counts.sum(1), u)
    assert bool(((counts == 0) | (counts == 1)).all())
    with pytest.raises(ValueError, match="steps"):
        decode_counts(u, 0)


def test_decode_counts_follow_the_cosine_curve() -> None:
    counts = decode_counts(torch.tensor([256]), 8)[0]
    remaining = 256 - counts.cumsum(0)
    expected = [math.floor(256 * math.cos(math.pi / 2 * (s + 1) / 8)) for s in range(8)]
    assert remaining.tolist() == expected  # ends at 0


def test_training_mask_counts_lie_in_range_and_are_seeded() -> None:
    for length in (1, 4, 256):
        counts = training_mask_counts(5000, length, generator=torch.Generator().manual_seed(0), device="cpu")
        assert counts.dtype == torch.int64 and counts.shape == (5000,)
        assert int(counts.min()) >= 1 and int(counts.max()) <= length
    again = training_mask_counts(5000, 256, generator=torch.Generator().manual_seed(0), device="cpu")
    assert torch.equal(again, counts)
    # The ratio r ~ TruncNormal(1, 0.25, [0, 1]): mean 1 - 0.25 * sqrt(2 / pi) = 0.80.
    ratio = truncated_normal(20000, loc=1.0, scale=0.25, low=0.0, high=1.0, generator=torch.Generator().manual_seed(1), device="cpu")
    assert float(ratio.min()) >= 0 and float(ratio.max()) <= 1
    assert float(ratio.mean()) == pytest.approx(1 - 0.25 * math.sqrt(2 / math.pi), abs=0.01)


def test_guidance_schedule() -> None:
    assert guidance_at(4.0, "constant", 0.1) == 4.0
    assert guidance_at(4.0, "linear", 1.0) == 4.0  # the last step uses the full scale
    assert guidance_at(4.0, "linear", 0.5) == pytest.approx(2.5)
    with pytest.raises(ValueError, match="guidance_schedule"):
        guidance_at(4.0, "cosine", 0.5)  # type: ignore[arg-type]


# ---- orders and draws --------------------------------------------------------------------------


def test_resolve_orders() -> None:
    g = torch.Generator().manual_seed(0)
    ident = resolve_orders("identity", 3, 5, generator=None, device="cpu")
    assert torch.equal(ident, torch.arange(5).expand(3, 5))
    rand = resolve_orders("random", 3, 5, generator=g, device="cpu")
    assert torch.equal(rand.sort(-1).values, ident)
    assert torch.equal(resolve_orders(None, 3, 5, generator=torch.Generator().manual_seed(0), device="cpu"), rand)
    shared = resolve_orders(torch.tensor([4, 3, 2, 1, 0]), 3, 5, generator=None, device="cpu")
    assert shared.shape == (3, 5) and shared.dtype == torch.int64
    per = torch.stack([torch.randperm(5, generator=g) for _ in range(3)])
    assert torch.equal(resolve_orders(per, 3, 5, generator=None, device="cpu"), per)
    with pytest.raises(ValueError, match="permutation"):
        resolve_orders(torch.tensor([0, 1, 1, 2, 3]), 3, 5, generator=None, device="cpu")
    with pytest.raises(ValueError, match=r"\[5\] or \[3, 5\]"):
        resolve_orders(torch.arange(4), 3, 5, generator=None, device="cpu")
    with pytest.raises(ValueError, match=r"\[5\] or \[3, 5\]"):
        resolve_orders(per[:2], 3, 5, generator=None, device="cpu")
    with pytest.raises(ValueError, match="identity"):
        resolve_orders("reversed", 3, 5, generator=None, device="cpu")
    with pytest.raises(TypeError, match="orders"):
        resolve_orders([0, 1, 2, 3, 4], 3, 5, generator=None, device="cpu")  # type: ignore[arg-type]


def test_masked_subset_takes_the_first_children_of_each_order() -> None:
    orders = torch.tensor([[2, 0, 1, 3], [3, 2, 1, 0]])
    mask = masked_subset(orders, torch.tensor([1, 3]))
    assert mask.tolist() == [[False, False, True, False], [False, True, True, True]]


def test_random_draws_are_uniform_orders_and_exact_categoricals() -> None:
    g = torch.Generator().manual_seed(3)
    orders = random_orders(24000, 3, generator=g, device="cpu")
    _, counts = torch.unique(orders, dim=0, return_counts=True)
    assert len(counts) == 6 and int(counts.min()) > 3600 and int(counts.max()) < 4400
    probs = torch.tensor([[0.1, 0.0, 0.6, 0.3]]).expand(40000, 4)
    draws = sample_categorical(probs, generator=torch.Generator().manual_seed(4))
    freq = torch.bincount(draws, minlength=4).double() / 40000
    assert int(freq[1]) == 0  # a zero-probability value is never drawn
    torch.testing.assert_close(freq, probs[0].double(), rtol=0, atol=0.01)


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
