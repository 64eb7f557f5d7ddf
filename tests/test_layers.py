"""Sanity of the shared layers and schedules: rotary embeddings, attention with a KV cache,
decoding counts, training mask counts and order resolution.

Shape letters: N sequences, H heads, S tokens, E head dim, D width, k children, L length.
"""

from __future__ import annotations

import math

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

from fractalkit.nn import Attention, Backbone, KVCache, rope_2d_table
from fractalkit.nn.rope import apply_rope
from fractalkit.partition import ImagePatches
from fractalkit.sampling.orders import masked_subset, resolve_orders
from fractalkit.sampling.schedules import decode_counts, training_mask_counts

# ---- rotary embeddings -------------------------------------------------------------------------


def test_rope_table_shape_and_zeroed_condition_positions():
    positions = ImagePatches(4, 1, channels=1).positions()  # [16, 2]
    table = rope_2d_table(positions, head_dim=8, num_prefix=2)
    assert table.shape == (2 + 16, 4, 2)
    assert table.dtype == torch.float32
    assert torch.all(table[:2] == 0)  # condition tokens: cos = sin = 0
    # Child positions: a proper rotation, cos^2 + sin^2 = 1.
    torch.testing.assert_close(table[2:].pow(2).sum(-1), torch.ones(16, 4), rtol=0, atol=1e-6)
    # The first child sits at (0, 0): no rotation at all.
    torch.testing.assert_close(table[2], torch.tensor([[1.0, 0.0]] * 4))


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


# ---- decoding counts ----------------------------------------------------------------------------


@given(
    unknown=st.lists(st.integers(0, 40), min_size=1, max_size=6),
    steps=st.one_of(st.none(), st.integers(1, 12)),
)
def test_decode_counts_rows_sum_to_unknown(unknown, steps):
    u = torch.tensor(unknown)
    counts = decode_counts(u, steps)
    assert counts.dtype == torch.int64
    assert torch.equal(counts.sum(1), u)
    assert bool((counts >= 0).all())
    if steps is None:  # the exact mode: one child per step
        assert counts.shape == (len(unknown), max(unknown))
        assert bool((counts <= 1).all())
    else:
        assert counts.shape == (len(unknown), steps)
        # Every step decides at least one child while any remain undecided.
        remaining = u[:, None] - torch.cat([torch.zeros_like(u)[:, None], counts.cumsum(1)[:, :-1]], 1)
        assert bool((counts[remaining > 0] >= 1).all())


def test_cosine_schedule_decides_at_least_one_per_step_and_follows_the_cosine():
    counts = decode_counts(torch.tensor([256, 16]), 8)
    assert bool((counts >= 1).all())
    # After step s, floor(u cos(pi/2 (s+1)/S)) children remain (for u large enough).
    remaining = 256 - counts[0].cumsum(0)
    expected = [math.floor(256 * math.cos(math.pi / 2 * (s + 1) / 8)) for s in range(8)]
    assert remaining.tolist() == expected
    # Few children, many steps: one per step until none remain.
    assert decode_counts(torch.tensor([3]), 5).tolist() == [[1, 1, 1, 0, 0]]


def test_decode_counts_rejects_bad_steps():
    with pytest.raises(ValueError, match="steps"):
        decode_counts(torch.tensor([4]), 0)


# ---- training mask counts -----------------------------------------------------------------------


@given(n=st.integers(1, 50), length=st.integers(1, 300), seed=st.integers(0, 2**31 - 1))
def test_training_mask_counts_lie_in_1_to_L(n, length, seed):
    counts = training_mask_counts(n, length, generator=torch.Generator().manual_seed(seed), device="cpu")
    assert counts.shape == (n,) and counts.dtype == torch.int64
    assert bool((counts >= 1).all()) and bool((counts <= length).all())


def test_training_mask_counts_follow_the_truncated_normal_and_the_seed():
    gen = torch.Generator().manual_seed(0)
    counts = training_mask_counts(20000, 256, generator=gen, device="cpu")
    # E[r] for N(1, 0.25) truncated to [0, 1] is 1 - 0.25 phi(0) / (Phi(0) - Phi(-4)) = 0.80053;
    # ceil adds about half a child.
    expected = 1 - 0.25 * (1 / math.sqrt(2 * math.pi)) / (0.5 - 0.5 * math.erfc(4 / math.sqrt(2)))
    ratio = counts.double().mean() / 256
    assert float(ratio) == pytest.approx(expected + 0.5 / 256, abs=0.005)
    again = training_mask_counts(20000, 256, generator=torch.Generator().manual_seed(0), device="cpu")
    assert torch.equal(counts, again)


# ---- orders -------------------------------------------------------------------------------------


def test_resolve_orders_identity_shared_and_per_instance():
    assert resolve_orders("identity", 2, 4, generator=None, device="cpu").tolist() == [[0, 1, 2, 3]] * 2
    shared = torch.tensor([2, 0, 3, 1])
    assert resolve_orders(shared, 3, 4, generator=None, device="cpu").tolist() == [[2, 0, 3, 1]] * 3
    per = torch.tensor([[1, 0, 2], [2, 1, 0]])
    assert torch.equal(resolve_orders(per, 2, 3, generator=None, device="cpu"), per)


def test_resolve_orders_random_is_seeded_and_gives_permutations():
    draw = lambda seed: resolve_orders(  # noqa: E731
        "random", 64, 9, generator=torch.Generator().manual_seed(seed), device="cpu"
    )
    a, b, c = draw(0), draw(0), draw(1)
    assert torch.equal(a, b) and not torch.equal(a, c)
    assert torch.equal(a.sort(-1).values, torch.arange(9).expand(64, 9))
    assert len({tuple(r) for r in a.tolist()}) > 50  # really per instance
    assert torch.equal(resolve_orders(None, 64, 9, generator=torch.Generator().manual_seed(0), device="cpu"), a)


@pytest.mark.parametrize(
    ("spec", "error", "match"),
    [
        (torch.tensor([0, 1, 2]), ValueError, r"shape \[4\] or \[2, 4\]"),
        (torch.zeros(3, 4, dtype=torch.long), ValueError, r"shape \[4\] or \[2, 4\]"),
        (torch.tensor([0, 1, 1, 3]), ValueError, "permutation of range"),
        (torch.tensor([[0, 1, 2, 3], [0, 1, 2, 4]]), ValueError, "permutation of range"),
        ("reverse", ValueError, "'random', 'identity' or a tensor"),
        ([0, 1, 2, 3], TypeError, "string or an int64 tensor"),
    ],
)
def test_resolve_orders_validation(spec, error, match):
    with pytest.raises(error, match=match):
        resolve_orders(spec, 2, 4, generator=None, device="cpu")


def test_masked_subset_masks_the_first_count_children_of_each_order():
    orders = torch.tensor([[2, 0, 3, 1], [0, 1, 2, 3]])
    masked = masked_subset(orders, torch.tensor([2, 3]))
    assert masked.tolist() == [[True, False, True, False], [True, True, True, False]]
