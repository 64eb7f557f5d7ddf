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

In bfloat16 (bf16 weights, or under CPU autocast, whose bf16 copies of the weights autocast
casts once per context and caches) the ranking flips: oneDNN's ``x @ W^T`` takes 1.0-1.7x less
time than ``W @ x^T`` for 2 rows over 1024-wide weights (measured interleaved on an AVX-512
BF16 EPYC, one thread, a loaded machine; ``benchmarks/README.md``), so reduced-precision
products always take the usual form.
"""

from __future__ import annotations

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


class Linear(nn.Linear):
    """``nn.Linear`` with a CPU fast path for skinny inputs.

    Built exactly like ``torch.nn.Linear(in_features, out_features, bias=True)``, with the same
    parameters and state dict; only :meth:`forward` differs, and only on the CPU for at most
    :data:`SKINNY_ROWS` rows and at least :data:`LARGE_WEIGHT` weights.
    """

    def forward(self, x: Tensor) -> Tensor:
        """``[..., in_features] -> [..., out_features]``."""
        rows = x.numel() // max(self.in_features, 1)
        skinny = 0 < rows <= SKINNY_ROWS and self.weight.numel() >= LARGE_WEIGHT
        if x.device.type != "cpu" or not skinny or computes_reduced(self.weight):
            return F.linear(x, self.weight, self.bias)
        out = torch.mm(self.weight, x.reshape(rows, self.in_features).T).T.contiguous()
        if self.bias is not None:
            out += self.bias
        return out.view(*x.shape[:-1], self.out_features)
