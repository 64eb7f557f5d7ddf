"""A WaveNet-style level: gated dilated causal convolutions, a plug-in written against
:class:`fractalkit.Level`.

Shape letters: N instances (R rows while decoding), k children (audio samples at the top of a
flat model), P elements per child, T condition tokens, D_in incoming condition width, D width.

This is the field's flat raw-audio baseline (van den Oord et al. 2016, "WaveNet: A Generative
Model for Raw Audio"): layer i is a causal convolution of kernel 2 and dilation
``2 ** (i % cycle)``, gated (``tanh * sigmoid``), with residual and skip 1x1 convolutions; the
incoming condition (the class embedding at the top) is a *global condition*, added to every
layer's gate inputs, and also the first input token. The receptive field is
``1 + sum(dilations)`` children.

Only the network is here; the decoding loop, scoring, guidance and persistence come from the
level base (see the tutorial "Write your own level"). Decoding keeps every layer's past inputs
(Fast WaveNet, Paine et al. 2016), so a step costs one column per layer rather than a pass over
the prefix; it is exact (the same numbers as the teacher-forced pass, checked by the contract
kit's decomposition test).
"""

from __future__ import annotations

import dataclasses

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from fractalkit import ChildInputs, Level, LevelConfig, register
from fractalkit.config import BuildContext

__all__ = ["WaveNetLevel", "WaveNetLevelConfig"]


class WaveNetLevel(Level):
    """Gated dilated causal convolutions over [condition, child 0, ..., child k-2].

    Output j (which has seen the condition and children ``< j``) conditions child j.

    Args:
        partitioner: how an instance becomes its k children.
        child: the next generator down.
        config: a :class:`WaveNetLevelConfig`.
        cond_dim: D_in; cond_tokens: T of the incoming condition.
        normalisation: the instance's value normalisation (linear embeddings).
    """

    def __init__(self, partitioner, child, config: WaveNetLevelConfig, *, cond_dim, cond_tokens,
                 normalisation) -> None:
        super().__init__(partitioner, child, cond_dim=cond_dim, cond_tokens=cond_tokens,
                         width=config.width, normalisation=normalisation, out_tokens=1)
        self.inputs = ChildInputs.of(self, config.embed)  # child embedding, LayerNorm, cond map
        d = config.width
        self.dilations = tuple(2 ** (i % config.cycle) for i in range(config.layers))
        self.receptive_field = 1 + sum(self.dilations)
        self.gates = nn.ModuleList(nn.Conv1d(d, 2 * d, 2, dilation=r) for r in self.dilations)
        self.global_cond = nn.ModuleList(nn.Linear(d, 2 * d) for _ in self.dilations)
        self.residual = nn.ModuleList(nn.Conv1d(d, d, 1) for _ in self.dilations)
        self.skip = nn.ModuleList(nn.Conv1d(d, d, 1) for _ in self.dilations)
        self.out = nn.Sequential(nn.ReLU(), nn.Conv1d(d, d, 1), nn.ReLU(), nn.Conv1d(d, d, 1))

    def _inputs(self, children: Tensor, cond: Tensor) -> tuple[Tensor, Tensor]:
        """``([N, D, k] inputs: the condition token, then children 0..k-2; [N, D] global condition)``."""
        first = self.inputs.condition(cond[:, :1])  # [N, 1, D]
        rest = self.inputs.embed(children[:, :-1])  # [N, k-1, D]
        return self.inputs.norm(torch.cat([first, rest], 1)).transpose(1, 2), first[:, 0]

    def _network(self, h: Tensor, g: Tensor) -> Tensor:
        """``[N, D, t]`` inputs and ``[N, D]`` global condition to ``[N, t, 1, D]`` conditions."""
        skips = torch.zeros_like(h)
        for r, gate, glob, res, skip in zip(self.dilations, self.gates, self.global_cond,
                                            self.residual, self.skip, strict=True):
            z = gate(F.pad(h, (r, 0))) + glob(g)[..., None]  # [N, 2D, t]: causal (left pad)
            a, b = z.chunk(2, dim=1)
            z = torch.tanh(a) * torch.sigmoid(b)
            h = h + res(z)
            skips = skips + skip(z)
        return self.out(skips).transpose(1, 2)[:, :, None]  # [N, t, 1, D]

    def teacher_forced_conditions(self, children: Tensor, cond: Tensor, summary: Tensor | None) -> Tensor:
        """Every child's condition in one causal pass: ``[N, k, 1, D]``."""
        return self._network(*self._inputs(children, cond))

    def begin_decoding(self, children: Tensor, cond: Tensor, summary: Tensor | None, ctx) -> dict:
        """Per-layer input histories (Fast WaveNet's queues): each step then costs one column
        per layer instead of a pass over the receptive field."""
        r, k = children.shape[:2]
        g = self.inputs.condition(cond[:, :1])  # [R, 1, D]
        hist = [g.new_zeros(r, self.width, k) for _ in self.dilations]  # inputs of each layer
        return {"cond": cond, "g": g[:, 0], "hist": hist}

    def step_conditions(self, state: dict, children: Tensor, decided: Tensor, step) -> Tensor:
        """The picked child's condition from cached layer inputs: ``[M, 1, D]``.

        Exact: a kernel-2 causal convolution's output at j is ``W[..., 0] in[j - r] + W[..., 1]
        in[j] + b``, and ``in[j - r]`` is in the history (the raster plan visits every j).
        """
        j = step.index  # raster plan: step j decides child j
        x = state["g"][:, None] if j == 0 else self.inputs.embed(children[:, j - 1 : j])  # [R, 1, D]
        x = self.inputs.norm(x)[:, 0]  # [R, D]
        skips = torch.zeros_like(x)
        for r, gate, glob, res, skip, hist in zip(self.dilations, self.gates, self.global_cond,
                                                  self.residual, self.skip, state["hist"], strict=True):
            hist[:, :, j] = x
            prev = hist[:, :, j - r] if j >= r else torch.zeros_like(x)
            w = gate.weight  # [2D, D, 2]
            z = prev @ w[:, :, 0].T + x @ w[:, :, 1].T + gate.bias + glob(state["g"])  # [R, 2D]
            a, b = z.chunk(2, dim=1)
            z = torch.tanh(a) * torch.sigmoid(b)
            x = x + res(z[..., None])[..., 0]
            skips = skips + skip(z[..., None])[..., 0]
        out = self.out(skips[..., None])[..., 0]  # [R, D]
        return out[step.pick[:, j]][:, None]


@register("wavenet")
@dataclasses.dataclass(frozen=True)
class WaveNetLevelConfig(LevelConfig):
    """Configuration of a :class:`WaveNetLevel`.

    Attributes:
        width: D, channels of every convolution.
        layers: gated dilated layers.
        cycle: dilations restart at 1 every ``cycle`` layers (``2 ** (i % cycle)``).
        embed: ``"linear"`` (ordered values, audio) or ``"table"`` (symbols).
    """

    width: int = 64
    layers: int = 10
    cycle: int = 10
    embed: str = "linear"
    out_tokens = 1  # condition tokens per child (not a field)

    def build(self, ctx: BuildContext) -> WaveNetLevel:
        """The level over ``ctx.partitioner``'s children, handing conditions to ``ctx.child``."""
        return WaveNetLevel(ctx.partitioner, ctx.child, self, cond_dim=ctx.cond_dim,
                            cond_tokens=ctx.cond_tokens, normalisation=ctx.normalisation)
