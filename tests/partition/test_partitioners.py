"""Contract tests shared by every partitioner, driven by one table of small examples.

Shape letters: N batch, k children, C channels, H/W image size, ph/pw patch size, L length,
c chunk length.
"""

from __future__ import annotations

import json
import math

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

from fractalkit.partition import (
    PARTITIONERS,
    Channels,
    GraphSubsets,
    ImagePatches,
    Partitioner,
    SequenceChunks,
    partitioner_from_config,
)

# One small configuration of every partitioner (and its edge cases). A new partitioner must
# appear here; ``test_every_registered_kind_has_an_example`` enforces it.
PARTITIONER_EXAMPLES: list[Partitioner] = [
    ImagePatches(size=8, patch=4, channels=3),
    ImagePatches(size=(6, 4), patch=(3, 2), channels=1),  # non-square image and patch
    ImagePatches(size=4, patch=1, channels=3),  # one pixel per child (patches -> pixels)
    ImagePatches(size=4, patch=4, channels=2),  # a single child
    Channels((3,)),  # R, G, B of a pixel
    Channels((4, 2, 3)),
    Channels(1),  # a single child
    SequenceChunks(length=12, chunk=4),
    SequenceChunks(length=6, chunk=2, element_shape=(3,)),
    SequenceChunks(length=5, chunk=5),  # a single child
    GraphSubsets(num_nodes=6, row_width=6, subsets=3),  # graph encoding: 3 subsets of 2 nodes
    GraphSubsets(num_nodes=2, row_width=6, subsets=2),  # a subset one level down: single nodes
]

# (constructor, kwargs, argument name that the ValueError must mention)
ILLEGAL_ARGUMENTS = [
    (ImagePatches, {"size": 30, "patch": 4}, "size 30 is not divisible by patch 4"),
    (ImagePatches, {"size": (8, 6), "patch": 4}, "patch"),
    (ImagePatches, {"size": 0, "patch": 1}, "size"),
    (ImagePatches, {"size": 8, "patch": -2}, "patch"),
    (ImagePatches, {"size": 8, "patch": 2, "channels": 0}, "channels"),
    (ImagePatches, {"size": 8, "patch": 2.0}, "patch"),
    (ImagePatches, {"size": (8, 8, 8), "patch": 2}, "size"),
    (ImagePatches, {"size": True, "patch": 1}, "size"),
    (Channels, {"event_shape": ()}, "event_shape"),
    (Channels, {"event_shape": (3, 0)}, "event_shape"),
    (Channels, {"event_shape": -3}, "event_shape"),
    (SequenceChunks, {"length": 10, "chunk": 3}, "length 10 is not divisible by chunk 3"),
    (SequenceChunks, {"length": 0, "chunk": 1}, "length"),
    (SequenceChunks, {"length": 4, "chunk": 0}, "chunk"),
    (SequenceChunks, {"length": 4, "chunk": 2, "element_shape": (0,)}, "element_shape"),
]

DTYPES = [torch.int64, torch.uint8, torch.bool, torch.float32, torch.float64, torch.bfloat16]


def ids(p: Partitioner) -> str:
    return repr(p)


def random_tensor(shape: tuple[int, ...], dtype: torch.dtype, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    if dtype == torch.bool:
        return torch.rand(shape, generator=g) < 0.5
    if dtype.is_floating_point:
        return torch.randn(shape, generator=g).to(dtype)
    return torch.randint(0, 256, shape, generator=g).to(dtype)


def test_every_registered_kind_has_an_example():
    """Every partitioner fractalkit registers (plug-ins that tests register are ignored)."""
    library = {k for k, cls in PARTITIONERS.items() if cls.__module__.startswith("fractalkit.")}
    assert {p.kind for p in PARTITIONER_EXAMPLES} == library
    for kind, cls in PARTITIONERS.items():
        assert cls.kind == kind


@pytest.mark.parametrize("p", PARTITIONER_EXAMPLES, ids=ids)
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_split_shapes_and_round_trip(p: Partitioner, dtype: torch.dtype):
    x = random_tensor((2, *p.event_shape), dtype)
    children = p.split(x)
    assert children.shape == (2, p.num_children, *p.child_shape)
    assert children.dtype == dtype
    assert p.num_children == p.grid[0] * p.grid[1]
    assert p.child_numel == math.prod(p.child_shape)
    assert p.num_children * p.child_numel == math.prod(p.event_shape)
    merged = p.merge(children)
    assert merged.dtype == dtype
    assert torch.equal(merged, x)


@pytest.mark.parametrize("p", PARTITIONER_EXAMPLES, ids=ids)
def test_merge_then_split_is_identity(p: Partitioner):
    children = random_tensor((3, p.num_children, *p.child_shape), torch.int64, seed=1)
    assert torch.equal(p.split(p.merge(children)), children)


@pytest.mark.parametrize("p", PARTITIONER_EXAMPLES, ids=ids)
def test_split_handles_empty_batch_and_non_contiguous_input(p: Partitioner):
    empty = torch.zeros(0, *p.event_shape)
    assert p.split(empty).shape == (0, p.num_children, *p.child_shape)
    # A non-contiguous view (every other instance of a bigger batch) splits like its copy.
    x = random_tensor((4, *p.event_shape), torch.float32)[::2]
    assert not x.is_contiguous() or x.shape[0] <= 1
    assert torch.equal(p.split(x), p.split(x.contiguous()))


@pytest.mark.parametrize("p", PARTITIONER_EXAMPLES, ids=ids)
def test_children_cover_every_element_once(p: Partitioner):
    # Split a tensor of element indices: each index must land in exactly one child slot.
    n = math.prod(p.event_shape)
    x = torch.arange(n).reshape(1, *p.event_shape)
    flat = p.split(x).reshape(-1)
    assert torch.equal(flat.sort().values, torch.arange(n))


@pytest.mark.parametrize("p", PARTITIONER_EXAMPLES, ids=ids)
def test_positions_are_raster_order(p: Partitioner):
    rows, cols = p.grid
    pos = p.positions()
    assert pos.dtype == torch.int64
    assert pos.shape == (p.num_children, 2)
    expected = [(r, c) for r in range(rows) for c in range(cols)]
    assert [tuple(rc) for rc in pos.tolist()] == expected


@pytest.mark.parametrize("p", PARTITIONER_EXAMPLES, ids=ids)
def test_neighbours_match_positions(p: Partitioner):
    pos = p.positions().tolist()
    nb = p.neighbours()
    assert nb.dtype == torch.int64
    assert nb.shape == (p.num_children, 4)
    at = {tuple(rc): j for j, rc in enumerate(pos)}
    # (top, right, bottom, left) = one row up, one column right, one row down, one column left
    steps = [(-1, 0), (0, 1), (1, 0), (0, -1)]
    for j, (r, c) in enumerate(pos):
        for side, (dr, dc) in enumerate(steps):
            want = at.get((r + dr, c + dc), -1)
            assert nb[j, side].item() == want, (j, side)
    # Neighbourhood is symmetric: my top's bottom is me, my right's left is me.
    for j in range(p.num_children):
        for side, opposite in [(0, 2), (1, 3), (2, 0), (3, 1)]:
            other = nb[j, side].item()
            if other >= 0:
                assert nb[other, opposite].item() == j


@pytest.mark.parametrize("p", PARTITIONER_EXAMPLES, ids=ids)
def test_config_round_trip(p: Partitioner):
    config = p.config()
    assert config["kind"] == p.kind
    config = json.loads(json.dumps(config))  # JSON-serialisable, and survives a trip through JSON
    q = partitioner_from_config(config)
    assert type(q) is type(p)
    assert q.config() == p.config()
    assert q == p
    r = type(p)(**{k: v for k, v in config.items() if k != "kind"})
    assert (r.event_shape, r.child_shape, r.grid) == (p.event_shape, p.child_shape, p.grid)
    x = random_tensor((2, *p.event_shape), torch.int64)
    assert torch.equal(q.split(x), p.split(x))


def test_partitioner_from_config_rejects_bad_configs():
    with pytest.raises(ValueError, match="kind"):
        partitioner_from_config({"size": 8, "patch": 4})
    with pytest.raises(ValueError, match="unknown kind 'voxel_blocks'"):
        partitioner_from_config({"kind": "voxel_blocks"})
    with pytest.raises(ValueError, match="GraphSubsets"):  # a known kind, arguments missing
        partitioner_from_config({"kind": "graph_subsets"})
    with pytest.raises(ValueError, match="ImagePatches"):
        partitioner_from_config({"kind": "image_patches", "size": 8, "patch": 4, "stride": 2})


@pytest.mark.parametrize(("cls", "kwargs", "named"), ILLEGAL_ARGUMENTS)
def test_illegal_constructor_arguments_raise(cls, kwargs, named):
    with pytest.raises(ValueError, match=named):
        cls(**kwargs)


def test_indivisible_patch_message_teaches_the_fix():
    with pytest.raises(ValueError) as info:
        ImagePatches(size=30, patch=4)
    assert str(info.value) == (
        "ImagePatches: size 30 is not divisible by patch 4;"
        " choose a patch size that divides the image"
    )


@pytest.mark.parametrize("p", PARTITIONER_EXAMPLES, ids=ids)
def test_wrong_shapes_raise_naming_both_shapes(p: Partitioner):
    bad_event = (*p.event_shape[:-1], p.event_shape[-1] + 1)
    cases = [
        (p.split, torch.zeros(2, *bad_event)),  # wrong trailing size
        (p.split, torch.zeros(p.event_shape)),  # missing batch dimension
        (p.split, torch.zeros(2, 1, *p.event_shape)),  # one dimension too many
        (p.merge, torch.zeros(2, p.num_children + 1, *p.child_shape)),  # wrong k
        (p.merge, torch.zeros(2, *p.event_shape)),  # an instance passed as children
    ]
    for method, t in cases:
        with pytest.raises(ValueError) as info:
            method(t)
        message = str(info.value)
        assert type(p).__name__ in message and method.__name__ in message
        assert str(list(t.shape)) in message  # the shape received
        assert "expected" in message and "N, " in message  # the shape expected


@pytest.mark.parametrize("p", PARTITIONER_EXAMPLES[:1], ids=ids)
def test_non_tensor_input_raises_type_error(p: Partitioner):
    x = random_tensor((1, *p.event_shape), torch.int64)
    with pytest.raises(TypeError, match=r"torch\.Tensor"):
        p.split(x.numpy())
    with pytest.raises(TypeError, match=r"torch\.Tensor"):
        p.merge(p.split(x).tolist())


def test_image_patches_child_layout_matches_fractalgen():
    # Hand computation of the original FractalGen patchify: child j is the patch at grid row
    # j // gw, col j % gw, and flattening it gives index channel * ph * pw + row * pw + col.
    n, c, h, w, ph, pw = 2, 3, 6, 4, 3, 2
    p = ImagePatches(size=(h, w), patch=(ph, pw), channels=c)
    gh, gw = h // ph, w // pw
    x = torch.arange(n * c * h * w).reshape(n, c, h, w)
    flat = p.split(x).reshape(n, gh * gw, c * ph * pw)  # [N, k, C*ph*pw]
    for b in range(n):
        for j in range(gh * gw):
            gr, gc = j // gw, j % gw
            for ch in range(c):
                for r in range(ph):
                    for col in range(pw):
                        pixel = x[b, ch, gr * ph + r, gc * pw + col]
                        assert flat[b, j, ch * ph * pw + r * pw + col] == pixel
    # And the einsum FractalGen uses, verbatim.
    ref = torch.einsum("nchpwq->nhwcpq", x.reshape(n, c, gh, ph, gw, pw)).reshape(n, gh * gw, -1)
    assert torch.equal(flat, ref)


@given(
    grid_h=st.integers(1, 4),
    grid_w=st.integers(1, 4),
    ph=st.integers(1, 4),
    pw=st.integers(1, 4),
    channels=st.integers(1, 3),
    batch=st.integers(0, 3),
    dtype=st.sampled_from(DTYPES),
    seed=st.integers(0, 2**31 - 1),
)
def test_image_patches_round_trip_random_shapes(
    grid_h, grid_w, ph, pw, channels, batch, dtype, seed
):
    p = ImagePatches(size=(grid_h * ph, grid_w * pw), patch=(ph, pw), channels=channels)
    x = random_tensor((batch, *p.event_shape), dtype, seed)
    children = p.split(x)
    assert children.shape == (batch, grid_h * grid_w, channels, ph, pw)
    assert torch.equal(p.merge(children), x)
    assert partitioner_from_config(p.config()) == p


@given(
    shape=st.lists(st.integers(1, 4), min_size=1, max_size=4),
    batch=st.integers(0, 3),
    dtype=st.sampled_from(DTYPES),
    seed=st.integers(0, 2**31 - 1),
)
def test_channels_round_trip_random_shapes(shape, batch, dtype, seed):
    p = Channels(tuple(shape))
    x = random_tensor((batch, *shape), dtype, seed)
    children = p.split(x)
    assert children.shape == (batch, shape[0], 1, *shape[1:])
    for j in range(shape[0]):
        assert torch.equal(children[:, j, 0], x[:, j])
    assert torch.equal(p.merge(children), x)


@given(
    chunks=st.integers(1, 6),
    chunk=st.integers(1, 5),
    element_shape=st.lists(st.integers(1, 3), max_size=2),
    batch=st.integers(0, 3),
    dtype=st.sampled_from(DTYPES),
    seed=st.integers(0, 2**31 - 1),
)
def test_sequence_chunks_round_trip_random_shapes(chunks, chunk, element_shape, batch, dtype, seed):
    p = SequenceChunks(length=chunks * chunk, chunk=chunk, element_shape=tuple(element_shape))
    x = random_tensor((batch, chunks * chunk, *element_shape), dtype, seed)
    children = p.split(x)
    assert children.shape == (batch, chunks, chunk, *element_shape)
    for j in range(chunks):
        assert torch.equal(children[:, j], x[:, j * chunk : (j + 1) * chunk])
    assert torch.equal(p.merge(children), x)
