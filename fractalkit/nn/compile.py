"""Opt-in ``torch.compile`` of the transformer blocks, in place (``Fractal.compile`` calls it)."""

from __future__ import annotations

from typing import Any

from torch import nn

from fractalkit.nn.blocks import Backbone, PreNormBlock


def compile_blocks(model: nn.Module, *, fixed_shape_caches: bool = False, **kwargs: Any) -> nn.Module:
    """Compile every transformer block of ``model`` in place; returns ``model``.

    Blocks are where training and sampling spend their time, and all blocks of a level share
    one compiled graph (parameters are graph inputs), so compiling costs one trace per block
    type and input shape rather than one per model. A decoding step passes its KV-cache
    length as a tensor size, so as sequences grow dynamo traces one graph with a symbolic
    length instead of one per step. Parameter names, ``state_dict`` and files are unchanged.
    Blocks of one class share dynamo's per-code recompile limit, so this raises
    ``torch._dynamo.config.recompile_limit`` to 8 per distinct (block class, width).

    Args:
        model: any module holding :class:`fractalkit.nn.blocks.PreNormBlock` blocks.
        fixed_shape_caches: decode with KV caches attended to whole under a mask, so every
            step has exactly the same shapes (for ``mode="reduce-overhead"``, i.e. CUDA
            graphs, on a GPU), at the price of reading the caches' empty slots.
        **kwargs: passed to ``torch.compile`` (e.g. ``mode="reduce-overhead"``,
            ``dynamic=True``, ``backend="eager"`` to check tracing only).

    Returns:
        ``model``.
    """
    import torch._dynamo  # only here: importing dynamo takes a second

    blocks = [m for m in model.modules() if isinstance(m, PreNormBlock)]
    # Blocks of one class share a code object, so dynamo's per-code recompile limit must
    # hold every (class, width) with its few shapes (training, decoding, the leaf).
    kinds = {(type(b), b.attn.qkv.in_features) for b in blocks}
    limit = 8 * max(len(kinds), 1)
    torch._dynamo.config.recompile_limit = max(torch._dynamo.config.recompile_limit, limit)
    for block in blocks:
        block.compile(**kwargs)
    for module in model.modules():
        if isinstance(module, Backbone):
            module.fixed_shape_caches = fixed_shape_caches
    return model
