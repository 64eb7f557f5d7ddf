"""The paper's RGB leaf: a tiny causal transformer over an element's channels (PixelLoss).

Shape letters: M instances (pixels), T condition tokens, D condition width, W leaf width,
E elements (channels), V values.
"""

from __future__ import annotations

import dataclasses
import math

import torch
from torch import Tensor, nn

from fractalkit.config import BuildContext, LeafConfig
from fractalkit.leaves.base import Leaf, observed_log_softmax
from fractalkit.nn.blocks import Backbone
from fractalkit.nn.init import xavier_init
from fractalkit.nn.linear import Linear
from fractalkit.registry import register


class RGBLeaf(Leaf):
    """Autoregressive over the E channels of one element: ``p(R|c) p(G|c,R) p(B|c,R,G)``.

    The sequence is ``[cond_proj(c_0), codebook_0[x_0], ..., codebook_{E-2}[x_{E-2}]]``, then
    LayerNorm (eps 1e-6), causal ViT blocks and a final LayerNorm; channel e's logits are read at
    position e with its own codebook as output weights (input and output tied) plus a bias. The
    likelihood is exact.

    Args:
        event_shape: shape of one instance, e.g. ``(3,)`` or ``(3, 1, 1)``; E = its size.
        cond_dim: D of the incoming condition (token 0 is read).
        cond_tokens: T of the incoming condition.
        num_values: V (256 for 8-bit channels).
        width: W.
        depth: causal blocks.
        heads: attention heads.
        channel_weights: training-only per-channel weights (the paper: red 5, i.e. (5, 1, 1)).
    """

    autoregressive = True

    def __init__(
        self,
        event_shape: tuple[int, ...],
        cond_dim: int,
        cond_tokens: int,
        num_values: int = 256,
        *,
        width: int = 64,
        depth: int = 1,
        heads: int = 4,
        channel_weights: tuple[float, ...] | None = None,
    ) -> None:
        super().__init__(event_shape, cond_dim, cond_tokens, num_values, channel_weights)
        e = math.prod(self.event_shape)
        self.cond_proj = Linear(cond_dim, width)
        self.codebooks = nn.ModuleList(nn.Embedding(num_values, width) for _ in range(e))
        self.ln = nn.LayerNorm(width, eps=1e-6)
        self.backbone = Backbone("vit", width, depth, heads)
        self.out_bias = nn.Parameter(torch.zeros(e, num_values))
        self.initialize_weights()

    def initialize_weights(self) -> None:
        """Xavier-uniform linears with zero bias; codebooks N(0, 0.02); LayerNorms (1, 0)."""
        xavier_init(self)

    def hidden(self, x: Tensor, cond: Tensor) -> Tensor:
        """``[M, E]`` values and ``[M, T, D]`` condition to the ``[M, E, W]`` outputs that
        channel e's logits are read from (position e)."""
        e = x.shape[1]
        tokens = [self.cond_proj(cond[:, 0])]  # [M, W]
        tokens += [self.codebooks[i](x[:, i]) for i in range(e - 1)]
        return self.backbone(self.ln(torch.stack(tokens, dim=1)), causal=True)  # [M, E, W]

    def element_logits(self, x: Tensor, cond: Tensor) -> Tensor:
        """``[M, E]`` values and ``[M, T, D]`` condition to ``[M, E, V]`` logits."""
        h = self.hidden(x, cond)
        weights = torch.stack([cb.weight for cb in self.codebooks])  # [E, V, W]
        return torch.einsum("mew,evw->mev", h, weights) + self.out_bias  # [M, E, V]

    def observed_log_probs(self, x: Tensor, cond: Tensor) -> Tensor:
        """Teacher-forced log-probability of each channel's observed value, ``[M, E]``.

        The logits are formed channel-major, ``[E, M, V]``, by one batched product into which
        the bias is added in place, so that neither the forward nor the backward pass copies a
        logits-sized tensor between layouts (the logits are the largest tensors of a small
        model's training step). Under autocast or in 16-bit weights the generic path
        (:meth:`Leaf.observed_log_probs`) keeps its casts, and so does a subclass or an instance
        that redefines :meth:`element_logits`.
        """
        weight = self.out_bias
        if (
            weight.dtype not in (torch.float32, torch.float64)
            or torch.is_autocast_enabled(weight.device.type)
            or type(self).element_logits is not RGBLeaf.element_logits
            or "element_logits" in vars(self)  # replaced on this instance (e.g. to capture logits)
        ):
            return super().observed_log_probs(x, cond)
        h = self.hidden(x, cond).to(weight.dtype)  # [M, E, W]
        weights = torch.stack([cb.weight for cb in self.codebooks])  # [E, V, W]
        logits = torch.bmm(h.transpose(0, 1), weights.transpose(1, 2))  # [E, M, V]
        logits = logits.add_(self.out_bias[:, None, :])
        return observed_log_softmax(logits, x.t()).t().contiguous()  # [M, E]


@register("rgb")
@dataclasses.dataclass(frozen=True)
class RGBLeafConfig(LeafConfig):
    """Configuration of an :class:`RGBLeaf`.

    Attributes:
        width: W, the leaf's transformer width (the paper: 128 at 64x64, 64 at 256x256).
        depth: causal blocks (the paper: 3 at 64x64, 1 at 256x256).
        heads: attention heads (the paper: 4).
        num_values: V (256 for 8-bit).
        channel_weights: training-only per-channel weights, e.g. ``(5.0, 1.0, 1.0)``.
    """

    width: int = 64
    depth: int = 1
    heads: int = 4
    num_values: int = 256
    channel_weights: tuple[float, ...] | None = None

    def build(self, ctx: BuildContext) -> RGBLeaf:
        """The leaf for instances of ``ctx.event_shape`` under ``[*, cond_tokens, cond_dim]`` conditions."""
        return RGBLeaf(
            tuple(ctx.event_shape),
            ctx.cond_dim,
            ctx.cond_tokens,
            self.num_values,
            width=self.width,
            depth=self.depth,
            heads=self.heads,
            channel_weights=self.channel_weights,
        )
