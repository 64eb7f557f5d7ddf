"""The summary prefix (the paper's guiding pixel): an optional part a level composes.

Shape letters: N instances (R rows while decoding), T condition tokens, D_in incoming condition
width, D the level's width, S summary entries (``summary_shape``, e.g. the C channels of an
image block).

Before its children, a level with a summary prefix predicts the rounded
:meth:`fractalkit.Partitioner.summary` of its instance (for :class:`fractalkit.ImagePatches` the
mean value per channel) with a small leaf, and feeds the summary to its network as one extra
condition token. It makes ``log_prob`` a bound: log p(g) + log p(x | g) <= log p(x).

:class:`SummaryConfig` is the setting (the leaf's config and what the token sees when scoring);
:class:`SummaryPrefix` the part. The level base calls :meth:`SummaryPrefix.score` and
:meth:`SummaryPrefix.decode`; the level's network receives the token as the ``summary``
argument of its hooks.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any, Literal

import torch
from torch import Tensor, nn

from fractalkit.config import (
    BuildContext,
    ComponentConfig,
    LeafConfig,
    build_component,
    check_contract,
)
from fractalkit.nn.init import xavier_init
from fractalkit.normalisation import ValueNormalisation
from fractalkit.partition import Partitioner
from fractalkit.protocol import AbstractGenerator, Score
from fractalkit.protocol.contexts import DecodeContext, ScoreContext
from fractalkit.registry import register

SummaryInput = Literal["rounded", "continuous"]


@register("summary")
@dataclasses.dataclass(frozen=True)
class SummaryConfig(ComponentConfig):
    """A level's summary prefix (the guiding pixel): see :mod:`fractalkit.levels.summary`.

    Attributes:
        leaf: the summary leaf's config (any leaf config; its ``num_values`` must be the data's).
            Required: no level picks a particular leaf. The paper's is
            :data:`fractalkit.imagenet.models.PAPER_SUMMARY_LEAF` (an RGB leaf, width 128, 3 blocks,
            red weighted 5).
        input: what the summary token sees in teacher-forced scoring: ``"rounded"`` (the value
            the summary leaf scores; keeps the bound) or ``"continuous"`` (the unrounded
            normalised summary, as the original FractalGen does; the converter sets it so that
            converted checkpoints reproduce the original's logits). Decoding always feeds the
            decided value.
    """

    leaf: LeafConfig
    input: SummaryInput = "rounded"

    def __post_init__(self) -> None:
        if self.leaf is None:
            raise ValueError(
                "SummaryConfig: leaf is required (the summary leaf's config, e.g. "
                "fractalkit.imagenet.models.PAPER_SUMMARY_LEAF for the paper's guiding pixel)"
            )
        check_contract(self.leaf, LeafConfig, "SummaryConfig.leaf")
        if self.input not in ("rounded", "continuous"):
            raise ValueError(
                f"SummaryConfig: input must be 'rounded' or 'continuous', got {self.input!r}"
            )


class SummaryPrefix(nn.Module):
    """Predicts a summary of the instance first and hands the level one summary token.

    Args:
        partitioner: the level's partitioner; it defines the summary
            (:meth:`fractalkit.Partitioner.summary`).
        leaf: the summary leaf's config.
        input: ``"rounded"`` or ``"continuous"`` (see :class:`SummaryConfig`).
        cond_dim: D_in of the level's incoming condition (the summary leaf reads it).
        cond_tokens: T of the level's incoming condition.
        width: D, the token's width.
        num_values: V of the data (the summary leaf's must match).
        normalisation: the level's instance normalisation.
        owner: how errors name the level.

    Raises:
        NotImplementedError: the partitioner defines no summary.
        ValueError: bad ``input``, or the summary leaf's value count differs from the data's.

    Attributes:
        proj: linear ``[N, S]`` normalised summary -> ``[N, D]`` (the original's ``pix_proj``).
        leaf: the summary leaf (the original's ``guiding_pixel_loss``).
    """

    def __init__(
        self,
        partitioner: Partitioner,
        leaf: LeafConfig,
        *,
        input: SummaryInput = "rounded",
        cond_dim: int,
        cond_tokens: int,
        width: int,
        num_values: int,
        normalisation: ValueNormalisation,
        owner: str = "Level",
    ) -> None:
        super().__init__()
        if input not in ("rounded", "continuous"):
            raise ValueError(f"{owner}: the summary input must be 'rounded' or 'continuous', got {input!r}")
        shape = partitioner.summary_shape
        if shape is None:
            partitioner.summary(torch.zeros(0, *partitioner.event_shape))  # raises, naming why
        self.proj = nn.Linear(math.prod(shape), width)
        self.leaf: AbstractGenerator = build_component(
            leaf, BuildContext(cond_dim, cond_tokens, tuple(shape)), "leaf"
        )
        if self.leaf.num_values != num_values:
            raise ValueError(
                f"{owner}: the summary leaf has {self.leaf.num_values} values but the data "
                f"has {num_values}"
            )
        self.partitioner = partitioner
        self.input = input
        self.num_values = num_values
        self.shape = tuple(shape)
        #: the level's instance normalisation (the continuous summary normalises with it)
        self.normalisation = normalisation
        norm = normalisation.summary(partitioner)
        # Not persistent: derived from the Fractal's config, never trained.
        self.register_buffer("mean", norm.mean.reshape(-1).clone(), persistent=False)
        self.register_buffer("std", norm.std.reshape(-1).clone(), persistent=False)

    @classmethod
    def of(cls, level: Any, config: SummaryConfig) -> SummaryPrefix:
        """The summary prefix of ``level`` (a :class:`fractalkit.Level` whose base ``__init__``
        ran) as ``config`` says."""
        return cls(
            level.partitioner, config.leaf, input=config.input, cond_dim=level.cond_dim,
            cond_tokens=level.cond_tokens, width=level.width, num_values=level.num_values,
            normalisation=level.normalisation, owner=type(level).__name__,
        )

    def reset_parameters(self) -> None:
        """The original's initialisation of the projection (xavier-uniform, zero bias); the
        summary leaf initialises itself when built."""
        xavier_init(self.proj)

    def target(self, x: Tensor) -> Tensor:
        """The summary leaf's target: the partitioner's summary of ``x``, rounded half to even.

        Args:
            x: int64 ``[N, *event]``.

        Returns:
            int64 ``[N, *summary_shape]`` (e.g. the guiding pixel ``[N, C]``).
        """
        return self.partitioner.summary(x).round().long()

    def token(self, summary: Tensor) -> Tensor:
        """The summary as one condition token: :attr:`proj` of its normalised value.

        Args:
            summary: int64 ``[N, *summary_shape]`` (decided values), or, in float, the already
                normalised continuous summary (``input="continuous"`` scoring).

        Returns:
            ``[N, 1, D]``.
        """
        dtype = self.proj.weight.dtype
        if summary.dtype.is_floating_point:
            g = summary.flatten(1).to(dtype)
        else:
            g = (summary.flatten(1).to(dtype) / (self.num_values - 1) - self.mean.to(dtype)) / (
                self.std.to(dtype)
            )
        return self.proj(g)[:, None]

    def continuous(self, x: Tensor) -> Tensor:
        """The unrounded summary of normalised values (the original FractalGen's guiding pixel).

        Each element is normalised in the model's dtype, then the partitioner summarises them.

        Args:
            x: int64 ``[N, *event]``.

        Returns:
            ``[N, *summary_shape]`` in the model's dtype.
        """
        dtype = self.proj.weight.dtype
        values = self.normalisation.apply(x, self.num_values, dtype)
        return self.partitioner.summary(values).to(dtype)

    def score(self, x: Tensor, cond: Tensor, ctx: ScoreContext) -> tuple[Tensor, Score]:
        """Score the summary of ``x`` and give the token the level's network reads.

        Args:
            x: int64 ``[N, *event]``.
            cond: ``[N, T, D_in]``.
            ctx: the level's scoring context.

        Returns:
            The token ``[N, 1, D]`` and a :class:`Score` of N rows: in training an auxiliary
            term ``"guiding_pixel_nll"`` (not part of the data's NLL), otherwise log p(g) of
            kind ``"bound"``.
        """
        g = self.target(x)
        s = self.leaf.score(g, cond, dataclasses.replace(ctx, canvas=None))  # no canvas element
        zeros = torch.zeros_like(s.logp)
        token = self.token(g if self.input == "rounded" else self.continuous(x))
        if ctx.mode == "train":  # an auxiliary objective, not part of the data's NLL
            aux = {"guiding_pixel_nll": (s.objective.sum(), s.dims.sum())}
            return token, Score(zeros, zeros, zeros, aux, "exact")
        return token, Score(s.logp, zeros, zeros, {}, "bound")

    def decode(self, x: Tensor, cond: Tensor, ctx: DecodeContext) -> tuple[Tensor, Tensor]:
        """Decide the summary (forced: the target of ``x``) and give the token.

        Args:
            x: int64 ``[R, *event]`` (known elements hold their values).
            cond: ``[R, T, D_in]``.
            ctx: the level's decoding context.

        Returns:
            The token ``[R, 1, D]`` and ``[R]`` log-probabilities of the decided summaries.
        """
        ctx = dataclasses.replace(ctx, canvas=None)  # the summary is no element of the canvas
        if ctx.force:
            g = self.target(x)
            g, logp = self.leaf.decode(g, torch.ones_like(g, dtype=torch.bool), cond, ctx)
        else:
            # Partially known instances: an approximation, g is drawn, not inferred.
            start = torch.zeros(x.shape[0], *self.shape, dtype=torch.long, device=x.device)
            g, logp = self.leaf.decode(start, torch.zeros_like(start, dtype=torch.bool), cond, ctx)
        return self.token(g), logp
