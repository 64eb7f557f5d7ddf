"""Multi-head self-attention on ``scaled_dot_product_attention``, with a preallocated KV cache.

Shape letters: N sequences, S new tokens, P cached tokens, D width, H heads, E head dim, L keys.

On the CPU, PyTorch's fused (flash) attention kernel is slow at the short sequences of a small
model's lower levels, its backward pass above all; the original FractalGen code computes its MAR
attention as two batched products and a softmax. :func:`explicit_wanted` sends a call to that
form (:func:`explicit_attention`) on the CPU, in float32/float64, without a KV cache or attention
dropout, for :data:`EXPLICIT_MIN_KEYS` to :data:`EXPLICIT_MAX_KEYS` keys. Measured (issue 23)
as explicit / SDPA time ratios, forward / backward / both, fwd + bwd alternated in one process,
about 35,000 tokens per call (N = 35000 // L), H = 4, q/k/v as views of a packed ``[N, S, 3, H,
E]`` product as below, median of 6; one thread in process CPU time and two threads in wall
time, on a 2-core AMD EPYC shared with other jobs (load 4-7), so single figures are rough:

| L, E, causal | 1 thread | 2 threads |
|---|---|---|
| 3, 16, causal (the RGB leaf) | 1.59 / 0.89 / 1.13 | 2.82 / 1.00 / 1.37 |
| 3, 32 | 1.83 / 1.25 / 1.44 | 0.73 / 0.41 / 0.51 |
| 9, 16 | 1.43 / 0.60 / 0.90 | 2.13 / 0.81 / 1.16 |
| 9, 32, causal | 1.09 / 0.67 / 0.82 | 0.75 / 0.53 / 0.62 |
| 17, 32, causal (the small AR's second level) | 1.11 / 0.64 / 0.79 | 1.31 / 0.63 / 0.80 |
| 21, 16 | 0.89 / 0.60 / 0.72 | 1.17 / 0.58 / 0.70 |
| 21, 32 (the small MAR's second level) | 0.96 / 0.68 / 0.77 | 0.98 / 0.70 / 0.78 |
| 21, 32, causal | 1.20 / 0.77 / 0.92 | 1.13 / 0.61 / 0.77 |
| 33, 16, causal | 1.41 / 1.06 / 1.24 | 1.65 / 0.93 / 1.12 |
| 33, 32 | 1.35 / 1.00 / 1.11 | 1.35 / 0.78 / 0.88 |
| 49, 32, causal | 1.53 / 1.17 / 1.27 | |
| 69, 32 | 1.30 / 1.13 / 1.18 | |

The explicit form wins from 17 to 21 keys at both thread counts, either head size, causal or
not (the backward pass takes 0.6-0.8x the time; the forward is even to 1.3x slower); from 33
keys on it loses at one thread (at two, all but the 32-dim non-causal case); below 16 keys the
outcome depends on the head size and the thread count (the RGB leaf's 3 keys of 16 dims lose).
So the path takes 16 keys to 24 (midway to the 33 that loses). On a quiet machine at two
threads the 69 keys of the small MAR's top level won too (8.4 against 11.1 ms, forward plus
backward), but they lose at one thread here, and a bound that depends on the thread count was
not adopted on this evidence. float16, bfloat16 without a backward pass (below), CUDA and
cached decoding keep SDPA (not measured, or a mask over long key rows); attention dropout keeps it because SDPA
draws its dropout mask its own way. The result equals SDPA's to rounding (float64: 1e-12).

KV-cached decoding under bf16 CPU autocast attends in float32 (:func:`widened_decoding`,
:func:`cached_attention_in`): the caches keep float32 (autocast's bf16 keys and values are
stored exactly) and the step's few queries are upcast, because a bf16
``scaled_dot_product_attention`` of one query is 3-6x slower than a float32 one on a CPU
without AMX (figures in :func:`cached_attention_in`). Float32 decoding does not change.

In bfloat16 (bf16 autocast's products) SDPA's CPU backward kernel is slow at every length
measured. Ratios explicit / SDPA as above, bf16 q/k/v, 8 heads, about 20,000 tokens per call,
one thread in process CPU time on the same CPU (``avx512_bf16``), shared with other jobs (load
about 3 on its 2 cores); ``attention_paths.py --bf16``:

| L, E, causal | 1 thread |
|---|---|
| 3, 32 (causal: FractalMAR-64's leaf) | 0.85 / 0.50 / 0.63 (causal 0.75 / 0.50 / 0.60) |
| 9, 32 | 1.27 / 0.37 / 0.64 |
| 21, 32 | 1.17 / 0.08 / 0.17 |
| 21, 64 (FractalMAR-64's second level) | 1.65 / 0.24 / 0.42 |
| 33, 32 | 1.25 / 0.15 / 0.27 |
| 69, 32 | 1.95 / 0.36 / 0.47 |
| 129, 32 | 2.81 / 0.57 / 0.85 (causal 0.97) |
| 261, 32 | 2.81 / 1.22 / 1.55 (causal 2.24) |

So with a backward pass to follow, bf16 calls of up to :data:`EXPLICIT_MAX_KEYS_BF16_TRAINING`
keys take the explicit form; without one (sampling) its forward loses and SDPA stays. In bf16
the explicit form follows the original FractalGen's attention under autocast: scores and softmax
in float32, the weights rounded to bf16 for the product with v.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from fractalkit.nn.linear import Linear
from fractalkit.nn.rope import apply_rope

#: Shortest key sequence (tokens) that :func:`explicit_wanted` sends to :func:`explicit_attention`
#: on CPU (below it SDPA's forward is faster); measured, see the module docstring.
EXPLICIT_MIN_KEYS = 16
#: Longest key sequence (tokens) sent to :func:`explicit_attention`; 0 turns the path off.
EXPLICIT_MAX_KEYS = 24


#: Longest key sequence sent to :func:`explicit_attention` in bfloat16 when a backward pass
#: follows (training under bf16 autocast); 0 turns that path off. Measured, see
#: :func:`explicit_wanted`.
EXPLICIT_MAX_KEYS_BF16_TRAINING = 128


def explicit_wanted(q: Tensor, keys: int, *, cached: bool, dropout: float) -> bool:
    """Whether :class:`Attention` computes this call with :func:`explicit_attention`.

    True on CPU, with no KV cache and no attention dropout, for

    - float32 or float64 and :data:`EXPLICIT_MIN_KEYS` to :data:`EXPLICIT_MAX_KEYS` keys;
    - bfloat16 (under bf16 autocast, or bf16 weights) when a backward pass follows (grad mode
      on and ``q`` requires grad) and at most :data:`EXPLICIT_MAX_KEYS_BF16_TRAINING` keys:
      SDPA's bf16 CPU backward kernel is slow (the module docstring's second table: at 21 keys,
      the second level of FractalMAR-64, the explicit form's forward plus backward takes 0.2-0.4x
      SDPA's); at 261 keys over many sequences the explicit form lost, so long rows keep SDPA.
      Without a backward (sampling) SDPA's bf16 forward is the faster one, so it stays.

    Otherwise :func:`torch.nn.functional.scaled_dot_product_attention` (on CUDA, in float16
    and for other lengths it was not slower or was not measured; its dropout draws random
    numbers its own way; a cache brings a mask and long key rows).

    Args:
        q: the queries, ``[N, H, S, E]`` (its device, dtype and ``requires_grad`` are read).
        keys: L, how many keys each query sees.
        cached: keys and values come from a :class:`KVCache`.
        dropout: the attention dropout probability of this call (0 in eval mode).
    """
    if q.device.type != "cpu" or cached or dropout != 0.0:
        return False
    if q.dtype in (torch.float32, torch.float64):
        return EXPLICIT_MIN_KEYS <= keys <= EXPLICIT_MAX_KEYS
    if q.dtype == torch.bfloat16:
        backward = torch.is_grad_enabled() and bool(getattr(q, "requires_grad", False))
        return backward and keys <= EXPLICIT_MAX_KEYS_BF16_TRAINING
    return False


def explicit_attention(q: Tensor, k: Tensor, v: Tensor, *, causal: bool) -> Tensor:
    """``softmax(q k^T / sqrt(E)) v`` as two batched products and a softmax.

    The same attention as :func:`torch.nn.functional.scaled_dot_product_attention` with no
    mask or dropout, to rounding; faster on CPU for short sequences (the module docstring).
    bfloat16 inputs get float32 scores and softmax (autocast off for them), bf16 weights times
    ``v`` and a bf16 result: the original FractalGen's attention under autocast.

    Args:
        q: ``[N, H, S, E]`` queries.
        k, v: ``[N, H, L, E]`` keys and values.
        causal: query i sees keys ``0..i`` only (S == L).

    Returns:
        ``[N, H, S, E]``.
    """
    # Scaled in place after the product (as the original FractalGen code does): the product's
    # backward needs q and k, not its output, so autograd allows it, and it saves a copy of q.
    if q.dtype == torch.bfloat16:
        # The original's MAR attention under autocast: scores and softmax in float32 from the
        # bf16 queries and keys (autocast off for that product), the weights cast to bf16 for
        # the product with v. Rounding the scores to bf16 would lose more than the reference.
        with torch.autocast(q.device.type, enabled=False):
            scores = torch.matmul(q.float(), k.float().transpose(-2, -1)).mul_(q.shape[-1] ** -0.5)
            if causal:
                scores.masked_fill_(_causal_hidden(q, k), float("-inf"))
            return torch.matmul(scores.softmax(-1).to(v.dtype), v)
    scores = torch.matmul(q, k.transpose(-2, -1)).mul_(q.shape[-1] ** -0.5)  # [N, H, S, L]
    if causal:
        scores.masked_fill_(_causal_hidden(q, k), float("-inf"))
    return torch.matmul(scores.softmax(-1), v)


def widened_decoding(q: Tensor, k: Tensor) -> bool:
    """Whether a cached step attends in its cache's wider dtype (:func:`cached_attention_in`):
    on the CPU, 16-bit queries (bf16 autocast's products) against float32 or wider keys, which
    :meth:`fractalkit.nn.Backbone.new_caches` stores under CPU autocast.

    Args:
        q: the step's queries ``[N, H, S, E]``.
        k: the cached keys ``[N, H, L, E]``.
    """
    return (
        q.device.type == "cpu"
        and q.dtype in (torch.bfloat16, torch.float16)
        and k.dtype in (torch.float32, torch.float64)
    )


def cached_attention_in(
    dtype: torch.dtype,
    q: Tensor,
    k: Tensor,
    v: Tensor,
    mask: Tensor | None,
    *,
    out_dtype: torch.dtype | None = None,
) -> Tensor:
    """One decoding step's attention computed in ``dtype`` with autocast off, returned in
    ``out_dtype`` (default: the queries' dtype).

    On the CPU (no AMX; measured on an AMD EPYC with ``avx512_bf16``, one thread, issue 23) a
    bf16 ``scaled_dot_product_attention`` of one query is 3-6x slower than in float32: 2 rows
    and 16 heads of 64 dims, 16 keys 102 against 30 µs, 64 keys 365 against 79, 256 keys 1,477
    against 244 (8 heads, 16 keys: 64 against 22). Decoding under bf16 autocast therefore keeps
    float32 caches (the bf16 keys and values are stored exactly) and attends in float32: the
    queries are upcast (2 x 16 x 64 numbers a step), the cache is never cast.

    Args:
        dtype: the cache's dtype, float32 or float64.
        q: ``[N, H, S, E]`` queries (16-bit, or already in ``dtype``).
        k, v: ``[N, H, L, E]`` keys and values in ``dtype``.
        mask: bool ``[S, L]``, True where a query may attend, or None.
        out_dtype: the result's dtype; None: ``q``'s.

    Returns:
        ``[N, H, S, E]`` in ``out_dtype``.
    """
    with torch.autocast(q.device.type, enabled=False):
        out = F.scaled_dot_product_attention(q.to(dtype), k, v, attn_mask=mask)
    return out.to(out_dtype or q.dtype)

def _causal_hidden(q: Tensor, k: Tensor) -> Tensor:
    """bool ``[S, L]``: True where query i must not see key j (j > i)."""
    return torch.ones(q.shape[-2], k.shape[-2], dtype=torch.bool, device=q.device).triu(1)


class KVCache:
    """Preallocated keys and values of one attention layer, filled left to right.

    Preallocation keeps sampling free of per-step concatenation: step t writes its keys at
    ``[length, length + S)``, and query i sees the keys up to its own slot. By default a step
    attends to the filled prefix only (least memory traffic: at batch 8 the top level of
    FractalAR-64 would otherwise read 1 GB of empty slots per step; a compiled block then
    traces one graph with a symbolic length). With ``fixed_shape`` it attends to the whole
    zero-initialised buffer under a mask, so every step has exactly the same shapes (what CUDA
    graphs need: :meth:`fractalkit.Fractal.compile` with ``fixed_shape_caches=True``).

    Args:
        batch: N, sequences decoded together.
        heads: H.
        head_dim: E.
        capacity: most tokens the sequence will hold.
        device, dtype: where and how to store keys and values (those of the layer's weights).
        fixed_shape: attend to the whole buffer (see above).
    """

    def __init__(
        self,
        batch: int,
        heads: int,
        head_dim: int,
        capacity: int,
        device,
        dtype,
        *,
        fixed_shape: bool = False,
    ) -> None:
        # Zeros when attended to whole: masked slots still enter the product with weight 0,
        # and 0 x NaN garbage would be NaN.
        alloc = torch.zeros if fixed_shape else torch.empty
        self.keys = alloc(batch, heads, capacity, head_dim, device=device, dtype=dtype)
        self.values = alloc(batch, heads, capacity, head_dim, device=device, dtype=dtype)
        self.fixed_shape = fixed_shape
        self.length = 0

    @property
    def capacity(self) -> int:
        """Most tokens the cache holds."""
        return self.keys.shape[2]

    def slots(self, new: int) -> tuple[Tensor, Tensor]:
        """Where the next ``new`` tokens go and what they see, without claiming them.

        Returns:
            ``index`` int64 ``[S]`` (their slots) and ``mask`` bool ``[S, L]`` (True where token
            i may attend: slots up to its own), L the capacity with ``fixed_shape``, else the
            filled length after these tokens.
        """
        end = self.length + new
        if end > self.capacity:
            raise ValueError(f"KVCache: capacity {self.capacity} exceeded ({end} tokens)")
        device = self.keys.device
        index = torch.arange(self.length, end, device=device)
        seen = self.capacity if self.fixed_shape else end
        mask = torch.arange(seen, device=device)[None, :] <= index[:, None]
        return index, mask

    def advance(self, new: int) -> None:
        """Claim ``new`` slots (after their keys and values are written)."""
        if self.length + new > self.capacity:
            raise ValueError(
                f"KVCache: capacity {self.capacity} exceeded ({self.length + new} tokens)"
            )
        self.length += new

    def write(self, k: Tensor, v: Tensor, index: Tensor) -> tuple[Tensor, Tensor]:
        """Store ``[N, H, S, E]`` keys and values at ``index`` ``[S]``; return the whole buffers
        (a step attends to as many slots as its mask from :meth:`slots` is wide)."""
        self.keys.index_copy_(2, index, k.to(self.keys.dtype))
        self.values.index_copy_(2, index, v.to(self.values.dtype))
        return self.keys, self.values

    def append(self, k: Tensor, v: Tensor) -> tuple[Tensor, Tensor]:
        """Store ``[N, H, S, E]`` keys and values in the next slots; return all so far, ``[N, H, P+S, E]``."""
        index, _ = self.slots(k.shape[2])
        self.write(k, v, index)
        self.advance(k.shape[2])
        return self.keys[:, :, : self.length], self.values[:, :, : self.length]


class Attention(nn.Module):
    """Multi-head self-attention with packed ``qkv`` rows ordered [q; k; v], heads contiguous.

    Args:
        width: D.
        heads: H, dividing D.
        bias: whether ``qkv`` has a bias (ViT blocks: yes; LLaMA blocks: no, nor ``proj``).
        attn_dropout: dropout on attention weights (training only).
        proj_dropout: dropout after the output projection (training only).
    """

    def __init__(
        self,
        width: int,
        heads: int,
        *,
        bias: bool,
        attn_dropout: float = 0.0,
        proj_dropout: float = 0.0,
    ) -> None:
        super().__init__()
        if width % heads:
            raise ValueError(f"Attention: width {width} is not divisible by heads {heads}")
        self.heads = heads
        self.head_dim = width // heads
        self.qkv = Linear(width, 3 * width, bias=bias)
        self.proj = Linear(width, width, bias=bias)
        self.attn_dropout = attn_dropout
        self.proj_drop = nn.Dropout(proj_dropout)

    def forward(
        self,
        x: Tensor,
        *,
        causal: bool,
        rope: Tensor | None = None,
        cache: KVCache | None = None,
        slots: tuple[Tensor, Tensor] | None = None,
    ) -> Tensor:
        """Attend over ``x`` (and what ``cache`` holds).

        Args:
            x: ``[N, S, D]``.
            causal: each token sees itself and earlier tokens only.
            rope: ``[S, E/2, 2]`` rotary table for these S positions, or None.
            cache: keys/values of earlier tokens; the new ones are written after them.
            slots: ``cache.slots(S)``, computed once per step by the caller (a
                :class:`fractalkit.nn.Backbone`), who then advances every cache; None: this
                call computes them and advances ``cache`` itself.

        Returns:
            ``[N, S, D]``.
        """
        n, s, d = x.shape
        qkv = self.qkv(x).view(n, s, 3, self.heads, self.head_dim)
        # A 16-bit cached step on the CPU attends in its cache's dtype: rotated queries and keys
        # come out of the (float32) rotation in it rather than being rounded and cast back.
        wide = cache is not None and widened_decoding(qkv, cache.keys)
        if rope is not None:  # queries and keys rotated together: half the small ops
            qkv = qkv.permute(2, 0, 3, 1, 4)
            q, k = apply_rope(qkv[:2], rope, dtype=cache.keys.dtype if wide else None).unbind(0)
            v = qkv[2]
        else:
            # Unbound along the packed dim, then transposed: the same [N, H, S, E] views as
            # permuting first, but the backward pass stacks their gradients straight into the
            # [N, S, 3, H, E] layout of the product (permuting first costs one more copy).
            q, k, v = (t.transpose(1, 2) for t in qkv.unbind(2))
        mask = None
        is_causal = False  # a branch, not `causal and s > 1`: a plain bool under symbolic shapes
        if causal and s > 1:
            is_causal = True
        if cache is not None:  # the mask hides the slots after each token's own
            own = slots is None
            index, mask = cache.slots(s) if own else slots
            k, v = cache.write(k, v, index)
            # The mask's width (a tensor size, not a Python int) says how many slots to read,
            # so a compiled block sees one symbolic length rather than one constant per step.
            k, v = k[:, :, : mask.shape[-1]], v[:, :, : mask.shape[-1]]
            if own:
                cache.advance(s)
            is_causal = False
            if wide:
                out = cached_attention_in(k.dtype, q, k, v, mask, out_dtype=qkv.dtype)
                out = out.transpose(1, 2).reshape(n, s, d)
                return self.proj_drop(self.proj(out))
        dropout = self.attn_dropout if self.training else 0.0
        if explicit_wanted(q, k.shape[2], cached=cache is not None, dropout=dropout):
            out = explicit_attention(q, k, v, causal=is_causal)
            out = out.transpose(1, 2).reshape(n, s, d)
            return self.proj_drop(self.proj(out))
        # CUDA kernels launch one block row per (sequence, head) and fail past 65,535 of them
        # (a leaf sees ~10^5 pixels per batch): chunk the batch there.
        step = 65535 // self.heads
        if not q.is_cuda or n <= step:
            out = F.scaled_dot_product_attention(
                q, k, v, attn_mask=mask, dropout_p=dropout, is_causal=is_causal
            )  # [N, H, S, E]
        else:
            out = torch.cat(
                [
                    F.scaled_dot_product_attention(
                        q[i : i + step],
                        k[i : i + step],
                        v[i : i + step],
                        attn_mask=mask,
                        dropout_p=dropout,
                        is_causal=is_causal,
                    )
                    for i in range(0, n, step)
                ]
            )
        out = out.transpose(1, 2).reshape(n, s, d)
        return self.proj_drop(self.proj(out))
