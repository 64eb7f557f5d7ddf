"""A level's input network: the child embedding, its LayerNorm and the condition projection.

Shape letters: N instances, k children, P elements per child, T condition tokens, D_in incoming
condition width, D the level's width, V values per element.

FractalGen's levels all read their inputs the same way: each child's P integer values become one
D-wide token (:class:`ChildEmbedding`), the incoming condition tokens are projected from D_in to
D (``cond_emb``), and the token sequence is LayerNorm-ed (``patch_emb_ln``) before the network.
:class:`ChildInputs` holds those three layers; a level composes it (``self.inputs =
ChildInputs.of(self)``) or brings its own inputs. The parameter names are the original's
(``patch_emb``, ``patch_emb_ln``, ``cond_emb``), so converted weights load.
"""

from __future__ import annotations

import math
from typing import Any, Literal

import torch
from torch import Tensor, nn

from fractalkit.nn.init import xavier_init
from fractalkit.nn.linear import Linear
from fractalkit.normalisation import ValueNormalisation

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
        normalisation: ``"linear"`` only: the children's :class:`ValueNormalisation`
            (default: mean 0.5, std 0.5).
    """

    def __init__(
        self,
        child_shape: tuple[int, ...],
        num_values: int,
        width: int,
        mode: EmbedMode = "linear",
        normalisation: ValueNormalisation | None = None,
    ) -> None:
        super().__init__()
        p = math.prod(child_shape)
        self.mode = mode
        self.num_values = num_values
        if mode == "linear":
            self.proj = Linear(p, width)
            # Config constants on the CPU (checks work under any default device, e.g. meta);
            # the buffers follow ``module.to(...)``.
            norm = normalisation or ValueNormalisation.of(tuple(child_shape))
            mean, std = norm.mean.expand(child_shape), norm.std.expand(child_shape)
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


class ChildInputs(nn.Module):
    """The input network a level composes: child embedding, its LayerNorm, condition projection.

    Built with torch's default initialisation; :meth:`reset_parameters` applies the original
    FractalGen's (the built-in levels call it in their initialisation order, so a seed gives the
    same weights as before this part existed).

    Args:
        child_shape: shape of one child (P = its size).
        num_values: V of the children's elements.
        cond_dim: D_in of the incoming condition.
        width: D.
        embed: ``"linear"`` (normalised values) or ``"table"`` (one-hot); see
            :class:`ChildEmbedding`.
        normalisation: the children's value normalisation (``"linear"`` only).

    Attributes:
        patch_emb: the :class:`ChildEmbedding`, int64 ``[..., P]`` -> ``[..., D]``.
        patch_emb_ln: ``nn.LayerNorm(D, eps=1e-6)`` over the token sequence.
        cond_emb: linear ``[..., D_in]`` -> ``[..., D]``.
    """

    def __init__(
        self,
        child_shape: tuple[int, ...],
        num_values: int,
        *,
        cond_dim: int,
        width: int,
        embed: EmbedMode = "linear",
        normalisation: ValueNormalisation | None = None,
    ) -> None:
        super().__init__()
        self.patch_emb = ChildEmbedding(child_shape, num_values, width, embed, normalisation)
        self.patch_emb_ln = nn.LayerNorm(width, eps=1e-6)
        self.cond_emb = Linear(cond_dim, width)

    @classmethod
    def of(cls, level: Any, embed: EmbedMode = "linear") -> ChildInputs:
        """The inputs of ``level`` (a :class:`fractalkit.Level` whose base ``__init__`` ran):
        its partitioner's child shape, its child's V, its ``cond_dim`` and ``width``, and its
        children's normalisation.

        Args:
            level: the level that will hold the part.
            embed: ``"linear"`` or ``"table"``.
        """
        norm = level.normalisation.child(level.partitioner, type(level).__name__)
        return cls(
            tuple(level.partitioner.child_shape), level.child.num_values,
            cond_dim=level.cond_dim, width=level.width, embed=embed, normalisation=norm,
        )

    def reset_parameters(self) -> None:
        """The original's initialisation: xavier-uniform linears with zero bias, an embedding
        table N(0, 0.02), the LayerNorm (1, 0)."""
        xavier_init(self)

    def embed(self, children: Tensor) -> Tensor:
        """int64 ``[..., P]`` flattened children to ``[..., D]`` tokens (``patch_emb``)."""
        return self.patch_emb(children)

    def condition(self, cond: Tensor) -> Tensor:
        """``[..., D_in]`` condition tokens to ``[..., D]`` (``cond_emb``)."""
        return self.cond_emb(cond)

    def norm(self, tokens: Tensor) -> Tensor:
        """``[..., D]`` tokens LayerNorm-ed (``patch_emb_ln``)."""
        return self.patch_emb_ln(tokens)
