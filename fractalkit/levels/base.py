"""What every level shares: the partitioner, the child, embedding children and conditions.

Shape letters: N instances, k children per instance, P elements per child, T condition tokens,
D_in incoming condition width, D this level's width, V values per element.
"""

from __future__ import annotations

import math
from typing import ClassVar, Literal

import torch
from torch import Tensor, nn

from fractalkit.nn.linear import Linear
from fractalkit.partition import Partitioner
from fractalkit.protocol import AbstractGenerator

EmbedMode = Literal["linear", "table"]


class ChildEmbedding(nn.Module):
    """Embeds a child's P integer elements into one D-wide token.

    ``"linear"`` (images, audio): values become floats ``(v / (V - 1) - mean) / std`` (the
    original FractalGen uses ImageNet's per-channel mean and std) and a linear map takes the P
    floats to D; the child vector is the child flattened in its own layout (channel, row, col).
    ``"table"`` (characters, atoms): a learned vector per (position, value), summed over positions,
    i.e. a linear map of the one-hot encoding.

    Args:
        child_shape: shape of one child (P = its size).
        num_values: V.
        width: D.
        mode: ``"linear"`` or ``"table"``.
        value_mean, value_std: ``"linear"`` only: broadcastable to ``child_shape``.
    """

    def __init__(
        self,
        child_shape: tuple[int, ...],
        num_values: int,
        width: int,
        mode: EmbedMode = "linear",
        value_mean: Tensor | float = 0.5,
        value_std: Tensor | float = 0.5,
    ) -> None:
        super().__init__()
        p = math.prod(child_shape)
        self.mode = mode
        self.num_values = num_values
        if mode == "linear":
            self.proj = Linear(p, width)
            # Config constants on the CPU (checks work under any default device, e.g. meta);
            # the buffers follow ``module.to(...)``.
            mean = torch.as_tensor(value_mean, dtype=torch.float32, device="cpu").expand(child_shape)
            std = torch.as_tensor(value_std, dtype=torch.float32, device="cpu").expand(child_shape)
            if not bool((std > 0).all()):
                raise ValueError(f"ChildEmbedding: value_std must be positive, got {value_std}")
            # Not persistent: derived from the Fractal's config, never trained.
            self.register_buffer("mean", mean.reshape(p).clone(), persistent=False)
            self.register_buffer("std", std.reshape(p).clone(), persistent=False)
        elif mode == "table":
            self.table = nn.Embedding(p * num_values, width)
            self.register_buffer("offset", torch.arange(p) * num_values, persistent=False)
        else:
            raise ValueError(f"embed: expected 'linear' or 'table', got {mode!r}")

    def normalise(self, values: Tensor, dtype: torch.dtype) -> Tensor:
        """Integer values ``[..., P]`` as the floats the linear embedding sees, in ``dtype``."""
        scaled = values.to(dtype) / (self.num_values - 1)
        return (scaled - self.mean.to(dtype)) / self.std.to(dtype)

    def forward(self, children: Tensor) -> Tensor:
        """int64 ``[..., P]`` flattened children to ``[..., D]`` tokens."""
        if self.mode == "linear":
            return self.proj(self.normalise(children, self.proj.weight.dtype))
        return self.table(children + self.offset).sum(-2)


class Level(AbstractGenerator):
    """A generator that splits its instance into k children and delegates each to its child.

    Subclasses (:class:`fractalkit.ARLevel`, :class:`fractalkit.MARLevel`) add a network that
    turns the visible children and the incoming condition into one condition per child.

    Args:
        partitioner: how an instance becomes children; its ``child_shape`` must be the child's
            ``event_shape``.
        child: the next generator down (a level or a leaf); it receives ``[*, out_tokens, width]``
            conditions.
        cond_dim: D_in of the condition this level receives.
        cond_tokens: T of the condition this level receives.
        width: D, this level's width (and the child's ``cond_dim``).
        embed: how children are embedded (see :class:`ChildEmbedding`).
        value_mean, value_std: normalisation for the linear embedding, broadcastable to the
            child shape.
        out_tokens: condition tokens handed to each child.
    """

    #: whether this level's likelihood depends on an order of its children (MAR: True)
    uses_orders: ClassVar[bool] = False

    def __init__(
        self,
        partitioner: Partitioner,
        child: AbstractGenerator,
        *,
        cond_dim: int,
        cond_tokens: int,
        width: int,
        embed: EmbedMode = "linear",
        value_mean: Tensor | float = 0.5,
        value_std: Tensor | float = 0.5,
        out_tokens: int = 1,
    ) -> None:
        super().__init__()
        name = type(self).__name__
        #: condition tokens this level hands each child
        self.out_tokens = int(out_tokens)
        if not isinstance(partitioner, Partitioner):
            raise TypeError(f"{name}: partitioner must be a Partitioner, got {type(partitioner)}")
        if not isinstance(child, AbstractGenerator):
            raise TypeError(f"{name}: child must be a level or a leaf, got {type(child)}")
        if tuple(partitioner.child_shape) != tuple(child.event_shape):
            raise ValueError(
                f"{name}: the partitioner's child shape {list(partitioner.child_shape)} differs "
                f"from the child's event shape {list(child.event_shape)}"
            )
        if child.cond_dim != width:
            raise ValueError(
                f"{name}: the child expects conditions of width {child.cond_dim}, but this "
                f"level's width is {width}; build the child with cond_dim={width}"
            )
        if child.cond_tokens != self.out_tokens:
            raise ValueError(
                f"{name}: the child expects {child.cond_tokens} condition token(s), but this "
                f"level hands down {self.out_tokens}"
            )
        self.partitioner = partitioner
        self.child = child
        self.event_shape = tuple(partitioner.event_shape)
        self.cond_dim = int(cond_dim)
        self.cond_tokens = int(cond_tokens)
        self.width = int(width)
        self.patch_emb = ChildEmbedding(
            partitioner.child_shape, child.num_values, width, embed, value_mean, value_std
        )
        self.patch_emb_ln = nn.LayerNorm(width, eps=1e-6)
        self.cond_emb = Linear(cond_dim, width)
        self.register_buffer("positions", partitioner.positions(), persistent=False)
        self.register_buffer("neighbours", partitioner.neighbours(), persistent=False)

    @property
    def num_values(self) -> int:
        """V, the leaf's number of values per element."""
        return self.child.num_values

    @property
    def num_children(self) -> int:
        """k, children per instance."""
        return self.partitioner.num_children

    def split(self, x: Tensor) -> Tensor:
        """``[N, *event]`` to ``[N, k, P]`` flattened children (any dtype)."""
        return self.partitioner.split(x).flatten(2)

    def merge(self, children: Tensor) -> Tensor:
        """``[N, k, P]`` flattened children back to ``[N, *event]``."""
        n, k = children.shape[:2]
        return self.partitioner.merge(children.view(n, k, *self.partitioner.child_shape))

    def child_rows(self, children: Tensor) -> Tensor:
        """``[M, P]`` flattened children as the child's instances ``[M, *child_event]``."""
        return children.view(children.shape[0], *self.child.event_shape)

    def initialize_weights(self) -> None:
        """The original's initialisation: xavier-uniform linears with zero bias, LayerNorms (1, 0),
        learned position embeddings and mask tokens N(0, 0.02). The child initialises itself."""
        for name, m in self.named_modules():
            if name.startswith("child") or name.startswith("guide"):
                continue
            if isinstance(m, nn.Linear):
                nn.init.xavier_uniform_(m.weight)
                if m.bias is not None:
                    nn.init.zeros_(m.bias)
            elif isinstance(m, nn.Embedding):
                nn.init.normal_(m.weight, std=0.02)
