"""Shared layers: attention with an optional KV cache, transformer blocks, rotary embeddings,
a linear layer with a CPU fast path for skinny inputs, and the original's initialisation.

Shape letters used in this package: N batch of sequences, S sequence length, D width,
H heads, E head dim.
"""

from fractalkit.nn.attention import Attention, KVCache
from fractalkit.nn.blocks import Backbone, LlamaBlock, PreNormBlock, RMSNorm, ViTBlock, make_block
from fractalkit.nn.init import xavier_init
from fractalkit.nn.linear import Linear
from fractalkit.nn.rope import rope_2d_table

__all__ = [
    "Attention",
    "Backbone",
    "KVCache",
    "Linear",
    "LlamaBlock",
    "PreNormBlock",
    "RMSNorm",
    "ViTBlock",
    "make_block",
    "rope_2d_table",
    "xavier_init",
]
