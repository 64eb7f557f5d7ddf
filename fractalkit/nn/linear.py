"""A ``nn.Linear`` that picks a faster matrix-multiply form for few rows and large weights on CPU.

Sampling feeds one token per sequence per step, so every layer multiplies a few rows by a large
weight and is bound by streaming that weight from memory. On CPU BLAS (MKL) the usual
``x @ W^T`` runs such skinny products at about half the memory bandwidth that ``W @ x^T``
reaches. Measured on an AVX2 EPYC, 2 threads, weights out of cache:

| weight | rows | ``x @ W^T`` (µs) | ``W @ x^T`` (µs) |
|---|---|---|---|
| 4096 x 1024 | 2 | 1813 | 862 |
| 4096 x 1024 | 16 | 2404 | 1753 |
| 1536 x 512 | 2 | 401 | 154 |
| 384 x 128 (in cache) | 6 | 22 | 52 |

and from 24 to 96 rows ``x @ W^T`` takes 0.99-1.35x as long as ``W @ x^T`` over the weights of
the paper's levels (1.13-1.35x at 32-64 rows for 1024-wide ones). So the other form is used for
at most 64 rows and weights of at least 2^18 entries; the result is the same up to rounding.

In bfloat16 (bf16 weights, or float32 weights under bf16 CPU autocast) ``W @ x^T`` is slow, and
``F.linear`` on autocast's cached bf16 copy (oneDNN, weight in its plain layout) runs no faster
than the float32 ``W @ x^T`` (bf16 sampling at batch 1 ran at 0.99x fp32). Inside
:func:`packed_weights` (every decoding call opens it) a skinny bf16 product instead reads a copy of
the weight that oneDNN packed once (``torch.ops.mkldnn._reorder_linear_weight``, the layout
``torch.compile``'s CPU backend uses for frozen bf16 weights) and runs ``_linear_pointwise``; its
results equal ``F.linear``'s bf16 product up to rounding. Measured on an AMD EPYC with
``avx512_bf16`` (no AMX), torch 2.13, 2 rows, weights out of cache, forms interleaved in one
process (``benchmarks/bf16_gemv.py``), on a machine shared with other jobs (load average 1.6 on
its 2 cores); ms per pass over the weights, in brackets the float32 form's time over this one
(median of 15 rounds):

| weights (bf16 bytes), threads | fp32 ``W @ x^T`` | bf16 ``F.linear`` | bf16 packed | bf16 ``copy_`` | bf16 ``sum`` |
|---|---|---|---|---|---|
| 6 top-level blocks of FractalAR-64 (154 MB), 1 | 27.9 | 17.6 (1.43x) | 13.8 (1.99x), 11.2 GB/s | 14.5 (1.69x) | 8.2 (3.24x) |
| the same, 2 | 19.4 | 12.8 (1.26x) | 9.6 (1.87x), 16.1 GB/s | 10.9 (1.73x) | 6.3 (2.98x) |
| its 8 second-level blocks (55 MB), 1 | 10.7 | 10.5 (1.03x) | 5.4 (2.00x), 10.1 GB/s | 5.4 (2.08x) | 3.1 (3.55x) |
| the same, 2 | 5.9 | 6.6 (0.87x) | 4.1 (1.35x), 13.2 GB/s | 3.7 (1.55x) | 2.3 (2.47x) |

So the packed product streams bf16 weights at about copy bandwidth (read and write of the same
bytes), not at read bandwidth (``sum``); its speed does not depend on the batch-size hint given
to the packing (1, 2, 16 or none: 1.57-1.60x over the top-level weights). Inside a FractalAR-64
draw (1 thread, profiled) it takes 0.42-0.88x the float32 product's time per weight shape, except
the 512 x 512 projection (1.18x: small, partly in cache). Skinny float16 products, products that
need gradients, and CPUs or builds without oneDNN's bf16 products keep ``F.linear``.

Two products of the same input, a LLaMA block's SwiGLU ``w1`` and ``w3``, run as one packed
product over the two weights stacked (:func:`packed_pair`, a copy packed once per context like a
single weight's): each packed call has a fixed cost beside its bytes. Same machine, one thread,
3 other jobs' worth of load on its 2 cores (so rough), the eight ``w1``/``w3`` pairs of
FractalAR-64's second level cycled from memory, 2 rows, µs per block:

| weights (per block), threads | two packed products | one stacked product |
|---|---|---|
| 2 x 1536 x 512 (the second level), 1 | 306-463 | 190-339 |
| 2 x 2816 x 1024 (the top level), 1 | 765-1008 | 788-1260 (even: not adopted as a gain) |
| 2 x 2048 x 768, 1 | 440 | 370 |

Inside a draw the gain is smaller: the second level's 16 steps took 165.7 against 169.5 ms
(1.02x, 25 alternated rounds, process CPU time, same load). In float32 the two products stay separate: a stacked ``W @ x^T`` could round differently, and
float32 samples stay bit for bit what they were.
"""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Iterator

import torch
import torch.nn.functional as F
from torch import Tensor, nn

#: at most this many rows take the ``W @ x^T`` form on the CPU
SKINNY_ROWS = 64
#: ... and only for weights with at least this many entries (small ones sit in cache)
LARGE_WEIGHT = 2**18


def computes_reduced(weight: Tensor) -> bool:
    """Whether a CPU product with ``weight`` runs in a 16-bit float: the weight is one, or CPU
    autocast is on (it casts float32 weights to its bfloat16/float16 dtype)."""
    if weight.dtype in (torch.bfloat16, torch.float16):
        return True
    return weight.dtype == torch.float32 and torch.is_autocast_enabled("cpu")


class _Packed(threading.local):
    """This thread's packed bfloat16 weights, alive while :func:`packed_weights` is open."""

    def __init__(self) -> None:
        self.depth = 0
        #: ``id(tensor) -> (tensor, (data_ptr, version), derived)``: a weight's packed copy or a
        #: bias's bf16 copy; holding ``tensor`` keeps its id from being reused meanwhile
        self.entries: dict[object, tuple[Tensor, tuple, Tensor]] = {}
        #: the second tensors of stacked pairs (:func:`packed_pair`), by their entry's key
        self.held: dict[object, Tensor] = {}


_packed = _Packed()
_can_pack: bool | None = None


def packing_available() -> bool:
    """Whether this PyTorch and CPU run oneDNN's prepacked bfloat16 products
    (``torch.ops.mkldnn._reorder_linear_weight`` / ``_linear_pointwise``, the ones
    ``torch.compile``'s CPU backend uses for frozen bfloat16 weights) and oneDNN is enabled."""
    global _can_pack
    if _can_pack is None:
        try:
            _can_pack = bool(
                torch.backends.mkldnn.is_available()
                and torch.ops.mkldnn._is_mkldnn_bf16_supported()
                and torch.ops.mkldnn._reorder_linear_weight is not None
                and torch.ops.mkldnn._linear_pointwise is not None
            )
        except (AttributeError, RuntimeError):
            _can_pack = False
    return _can_pack and bool(torch.backends.mkldnn.enabled)


@contextlib.contextmanager
def packed_weights() -> Iterator[None]:
    """Within this context, skinny bfloat16 products of :class:`Linear` (bf16 weights, or float32
    weights under bf16 CPU autocast) read a prepacked bfloat16 copy of the weight, made at the
    layer's first such product and dropped when the outermost context closes.

    :meth:`fractalkit.Fractal.sample` (and every decoding call) opens it around its levels. A copy
    is keyed on the weight's storage and version counter, so a weight changed in place (an
    optimizer step, ``load_state_dict``, ``weight.mul_(2)``) is packed again at its next product;
    only writes that bypass the version counter (``weight.data.copy_(...)``) go unseen until the
    context closes. The copies take 2 bytes per weight entry while the context is open: under
    autocast what its own bf16 weight cache would hold (these weights no longer pass through it);
    with bf16 weights, a second copy of each large weight. Contexts nest and are per thread.
    """
    _packed.depth += 1
    try:
        yield
    finally:
        _packed.depth -= 1
        if _packed.depth == 0:
            _packed.entries.clear()
            _packed.held.clear()


def _cached(tensor: Tensor, make) -> Tensor:
    """``make(tensor)``, kept in the open :func:`packed_weights` context until ``tensor``'s
    storage or version counter changes."""
    key = (tensor.data_ptr(), tensor._version)
    entry = _packed.entries.get(id(tensor))
    if entry is not None and entry[0] is tensor and entry[1] == key:
        return entry[2]
    made = make(tensor.detach())
    _packed.entries[id(tensor)] = (tensor, key, made)
    return made


def _cached_pair(first: Tensor, second: Tensor, make) -> Tensor:
    """``make(first, second)``, kept in the open :func:`packed_weights` context until either
    tensor's storage or version counter changes (keyed on ``first``; ``second`` is held too)."""
    key = (first.data_ptr(), first._version, id(second), second.data_ptr(), second._version)
    slot = ("pair", id(first))
    entry = _packed.entries.get(slot)
    if entry is not None and entry[0] is first and entry[1] == key:
        return entry[2]
    made = make(first.detach(), second.detach())
    _packed.entries[slot] = (first, key, made)
    _packed.held[slot] = second  # keeps id(second) from being reused while the entry lives
    return made


def _pack_pair(first: Tensor, second: Tensor) -> Tensor:
    return _pack(torch.cat([first, second]))


def _cat_bf16(first: Tensor, second: Tensor) -> Tensor:
    return torch.cat([first, second]).to(torch.bfloat16)


def packed_pair(first: Linear, second: Linear, x: Tensor) -> Tensor | None:
    """``cat([first(x), second(x)], -1)`` as one prepacked bfloat16 product, or None where the
    packed path (:class:`Linear` inside :func:`packed_weights`) would not take both products.

    A LLaMA block's two SwiGLU input products read the same ``x``: one product over the two
    weights stacked saves a call per block (the second level of FractalAR-64, 2 rows, 1 thread:
    0.31 against 0.19 ms per block, issue 23). The stacked copy is packed once per context, like
    a single weight's, and follows changes to either weight. The result agrees with the two
    products up to bf16 rounding.

    Args:
        first, second: two :class:`Linear` of the same ``in_features``, both with or both
            without a bias.
        x: ``[..., in_features]``.

    Returns:
        ``[..., first.out_features + second.out_features]`` bfloat16, or None.
    """
    if not _packed.depth or not computes_reduced(first.weight):  # float32 returns here
        return None
    if not (
        first.in_features == second.in_features
        and _skinny(first, x)
        and _skinny(second, x)
        and (first.bias is None) == (second.bias is None)
        and first.weight.dtype == second.weight.dtype
        and _packable(first.weight, x)
        and _packable(second.weight, x)
    ):
        return None
    packed = _cached_pair(first.weight, second.weight, _pack_pair)
    bias = None if first.bias is None else _cached_pair(first.bias, second.bias, _cat_bf16)
    return torch.ops.mkldnn._linear_pointwise(x.to(torch.bfloat16).contiguous(), packed, bias, "none", [], "")


def _pack(weight: Tensor) -> Tensor:
    return torch.ops.mkldnn._reorder_linear_weight(weight.to(torch.bfloat16))


def _to_bf16(bias: Tensor) -> Tensor:
    return bias.to(torch.bfloat16)


def _skinny(layer: nn.Linear, x: Tensor) -> bool:
    """Whether ``layer(x)`` is a skinny CPU product: at most :data:`SKINNY_ROWS` rows of ``x``
    against at least :data:`LARGE_WEIGHT` weights."""
    rows = x.numel() // max(layer.in_features, 1)
    return x.device.type == "cpu" and 0 < rows <= SKINNY_ROWS and layer.weight.numel() >= LARGE_WEIGHT


def _packable(weight: Tensor, x: Tensor) -> bool:
    """Whether a product of ``x`` with ``weight`` may read a prepacked bfloat16 weight here."""
    if not _packed.depth or torch.compiler.is_compiling() or not packing_available():
        return False
    if torch.is_grad_enabled() and (weight.requires_grad or x.requires_grad):
        return False  # no backward through the packed product
    if torch.is_autocast_enabled("cpu"):
        return (
            torch.get_autocast_dtype("cpu") == torch.bfloat16
            and weight.dtype == torch.float32
            and x.dtype in (torch.float32, torch.bfloat16)
        )
    return weight.dtype == torch.bfloat16 and x.dtype == torch.bfloat16  # else F.linear reports it


def _prepacked(weight: Tensor, x: Tensor) -> Tensor | None:
    """The prepacked bfloat16 copy of ``weight`` for a product with ``x`` (made now if absent
    or stale), or None where that path does not apply."""
    return _cached(weight, _pack) if _packable(weight, x) else None


class Linear(nn.Linear):
    """``nn.Linear`` with a CPU fast path for skinny inputs.

    Built exactly like ``torch.nn.Linear(in_features, out_features, bias=True)``, with the same
    parameters and state dict; only :meth:`forward` differs, and only on the CPU for at most
    :data:`SKINNY_ROWS` rows and at least :data:`LARGE_WEIGHT` weights: in float32 it computes
    ``W @ x^T``, in bfloat16 inside :func:`packed_weights` it reads a prepacked bf16 weight.
    """

    def forward(self, x: Tensor) -> Tensor:
        """``[..., in_features] -> [..., out_features]``; under bf16 autocast, or with bf16
        weights, the result is bfloat16 (as ``F.linear``'s)."""
        if not _skinny(self, x):
            return F.linear(x, self.weight, self.bias)
        if computes_reduced(self.weight):
            packed = _prepacked(self.weight, x)
            if packed is None:
                return F.linear(x, self.weight, self.bias)
            bias = None if self.bias is None else _cached(self.bias, _to_bf16)
            return torch.ops.mkldnn._linear_pointwise(x.to(torch.bfloat16).contiguous(), packed, bias, "none", [], "")
        out = torch.mm(self.weight, x.reshape(-1, self.in_features).T).T.contiguous()
        if self.bias is not None:
            out += self.bias
        return out.view(*x.shape[:-1], self.out_features)
