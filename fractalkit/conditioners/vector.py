"""Continuous feature vectors (properties, embeddings) as a condition: ``Vector(dim)``.

Shape letters: N instances, F features (``dim``), D the top level's width.

Each feature f is normalised, ``z = (v - mean_f) / std_f``, and embedded as
``z * w_f + b_f`` (``[D]`` each); a missing (or dropped) feature reads its own learned
``missing_f`` instead. The F embeddings are summed and passed through a small MLP to one
``[D]`` vector that every condition token reads.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import torch
from torch import Tensor, nn

from fractalkit.conditioners.base import Conditioner, ConditionerConfig, check_instances
from fractalkit.config import BuildContext
from fractalkit.registry import register
from fractalkit.sampling.rng import uniform
from fractalkit.validation import check_count, check_finite_number, check_probability


class VectorConditioner(Conditioner):
    """The module :class:`Vector` builds (see the module docstring for the embedding).

    Args:
        width: D.
        tokens: T.
        config: the :class:`Vector` config.
    """

    def __init__(self, width: int, tokens: int, config: Vector) -> None:
        super().__init__(width, tokens, drop=config.drop)
        f = config.dim
        self.dim = f
        self.feature_drop = float(config.feature_drop)
        self.null_embedding = nn.Parameter(torch.randn(1, width) * 0.02)
        self.value_weight = nn.Parameter(torch.randn(f, width) * 0.02)
        self.value_bias = nn.Parameter(torch.zeros(f, width))
        self.missing_embedding = nn.Parameter(torch.randn(f, width) * 0.02)
        self.mlp = nn.Sequential(nn.Linear(width, width), nn.SiLU(), nn.Linear(width, width))
        # Part of the config (JSON), not of the weights: buffers that are not saved.
        mean = torch.zeros(f) if config.mean is None else torch.tensor(config.mean, dtype=torch.float32)
        std = torch.ones(f) if config.std is None else torch.tensor(config.std, dtype=torch.float32)
        self.register_buffer("mean", mean, persistent=False)
        self.register_buffer("std", std, persistent=False)

    def split(self, c: Any) -> tuple[Tensor, Tensor]:
        """``(values [N, F], missing bool [N, F])`` of a condition (no checks)."""
        if isinstance(c, tuple):
            return c[0], c[1]
        return c, torch.zeros(c.shape, dtype=torch.bool, device=c.device)

    def check(self, c: Any, n: int | None) -> int:
        """``c``: a float tensor ``[N, F]``, or ``(values [N, F], missing bool [N, F])``.

        Values must be finite except where ``missing`` is True (there they are ignored).
        """
        if isinstance(c, tuple):
            if len(c) != 2:
                raise TypeError(f"Vector: a tuple condition must be (values, missing), got {len(c)} entries")
            values, missing = c
        else:
            values, missing = c, None
        if not isinstance(values, Tensor) or not values.dtype.is_floating_point:
            raise TypeError(
                f"Vector: the condition must be a float tensor [N, {self.dim}] (or a tuple "
                f"(values, missing)), got {getattr(values, 'dtype', type(values))}"
            )
        if values.dim() != 2 or values.shape[1] != self.dim:
            raise ValueError(
                f"Vector: expected values of shape [N, {self.dim}] ({self.dim} features), got "
                f"{list(values.shape)}"
            )
        n = check_instances(values, n, "Vector")
        if missing is not None and (
            not isinstance(missing, Tensor) or missing.dtype != torch.bool or missing.shape != values.shape
        ):
            raise ValueError(
                f"Vector: missing must be a bool tensor of the values' shape {list(values.shape)}, "
                f"got {getattr(missing, 'dtype', type(missing))} {list(getattr(missing, 'shape', []))}"
            )
        bad = ~torch.isfinite(values)
        if missing is not None:
            bad &= ~missing.to(bad.device)
        if bool(bad.any()):
            row, col = (int(i) for i in bad.nonzero()[0])
            raise ValueError(
                f"Vector: the condition holds non-finite values (first at instance {row}, feature "
                f"{col}); mark unknown features in a missing mask, c=(values, missing)"
            )
        return n

    def embed(self, c: Any, *, drop: bool, generator: torch.Generator | None) -> Tensor:
        """``[N, D]``; in training (``drop``) each feature goes missing with ``feature_drop``."""
        values, missing = self.split(c)
        w = self.value_weight
        values, missing = values.to(w.device, w.dtype), missing.to(w.device)
        if drop and self.feature_drop > 0:
            missing = missing | (uniform(tuple(missing.shape), generator=generator, device=w.device) < self.feature_drop)
        z = (values - self.mean.to(w.dtype)) / self.std.to(w.dtype)
        z = torch.where(missing, torch.zeros_like(z), z)  # missing entries may hold NaN
        per_feature = z[..., None] * w + self.value_bias  # [N, F, D]
        per_feature = torch.where(missing[..., None], self.missing_embedding.expand_as(per_feature), per_feature)
        return self.mlp(per_feature.sum(1))


@register("vector")
@dataclasses.dataclass(frozen=True)
class Vector(ConditionerConfig):
    """Condition on F continuous features: ``c`` is float ``[N, F]`` or ``(values, missing)``.

    Attributes:
        dim: F >= 1.
        mean, std: per-feature normalisation ``(v - mean) / std`` (F numbers each; None: 0 and
            1). :meth:`fitted` computes them from data.
        drop: whole-condition dropout probability in training mode (-> the null condition).
        feature_drop: per-feature dropout probability in training mode (-> that feature's
            learned "missing" embedding), so partial conditions work at sampling time.
    """

    dim: int
    mean: tuple[float, ...] | None = None
    std: tuple[float, ...] | None = None
    drop: float = 0.1
    feature_drop: float = 0.0

    def __post_init__(self) -> None:
        object.__setattr__(self, "dim", check_count("Vector", "dim", self.dim))
        for name in ("mean", "std"):
            v = getattr(self, name)
            if v is None:
                continue
            if isinstance(v, str | bytes) or not hasattr(v, "__len__"):
                raise TypeError(f"Vector: {name} must be a sequence of {self.dim} numbers or None, got {v!r}")
            v = tuple(check_finite_number("Vector", f"{name}[{i}]", t) for i, t in enumerate(v))
            if len(v) != self.dim:
                raise ValueError(f"Vector: {name} must hold {self.dim} finite numbers, got {v}")
            object.__setattr__(self, name, v)
        if self.std is not None and min(self.std) <= 0:
            raise ValueError(f"Vector: std must be positive, got {self.std}")
        for name in ("drop", "feature_drop"):
            check_probability("Vector", name, getattr(self, name))

    @classmethod
    def fitted(cls, values: Tensor, **kwargs: Any) -> Vector:
        """A config whose mean and std are the per-feature mean and std of ``values [N, F]``.

        Non-finite entries (unknown values) are ignored; a constant feature gets std 1.
        """
        if not isinstance(values, Tensor) or values.dim() != 2 or values.shape[0] < 1:
            raise ValueError(f"Vector.fitted: expected a float tensor [N, F], got {getattr(values, 'shape', values)}")
        v = values.double()
        ok = torch.isfinite(v)
        count = ok.sum(0).clamp(min=1)
        mean = torch.where(ok, v, 0).sum(0) / count
        var = torch.where(ok, (v - mean) ** 2, 0).sum(0) / count
        std = torch.where(var > 0, var.sqrt(), torch.ones_like(var))
        return cls(values.shape[1], tuple(mean.tolist()), tuple(std.tolist()), **kwargs)

    def build(self, ctx: BuildContext) -> VectorConditioner:
        """A :class:`VectorConditioner` for the top condition ``[N, ctx.cond_tokens, ctx.cond_dim]``."""
        return VectorConditioner(ctx.cond_dim, ctx.cond_tokens, self)
