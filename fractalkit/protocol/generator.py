"""The Generator contract: a conditional distribution p(x | c) over instances, and its likelihoods.

Shape letters: N instances, T condition tokens, D condition width, E elements of an instance.

A *Generator* is a level or a leaf. Every generator answers, for integer data ``x [N, *event]``
and conditions ``cond [N, T, D]``:

- ``score``: a teacher-forced pass giving per-instance log-probabilities (a :class:`Score`);
- ``decode``: sampling / completion / forced decoding, step by step, returning values and the
  log-probability of what was decided.

:class:`AbstractGenerator` turns those two into ``log_prob``, ``sample`` and ``complete`` on
a bare generator, given ``cond [N, T, D]`` directly (exact scoring with identity orders, no
guidance). Training (``loss``: MAR masks, condition dropout), conditioners, random orders,
estimates and guidance are :class:`fractalkit.Fractal`'s, which composes generators.
"""

from __future__ import annotations

import abc
import math
from dataclasses import dataclass, field
from typing import Literal

import torch
from torch import Tensor, nn
from typing_extensions import Protocol, runtime_checkable

from fractalkit.protocol.contexts import DecodeContext, LevelPlan, ScoreContext
from fractalkit.protocol.options import SampleOptions
from fractalkit.validation import check_finite_tensor, check_log_prob

Kind = Literal["exact", "bound", "estimate"]
_KIND_RANK = {"exact": 0, "bound": 1, "estimate": 2}


def combine_kinds(*kinds: Kind) -> Kind:
    """The kind of a sum of terms: exact < bound < estimate (anything below an estimate is one)."""
    return max(kinds, key=_KIND_RANK.__getitem__) if kinds else "exact"


def accumulation_dtype(dtype: torch.dtype) -> torch.dtype:
    """Likelihood reductions run in float32, or float64 when the model is float64."""
    return torch.promote_types(dtype, torch.float32)


@dataclass(frozen=True)
class LogProb:
    """Per-instance log-likelihood with its kind.

    Attributes:
        value: ``[N]`` natural log, summed over each instance (float32 or float64).
        kind: ``"exact"``; ``"bound"`` (a guaranteed lower bound on log p, e.g. a guiding pixel);
            or ``"estimate"`` (an unbiased estimate of a bound, e.g. MAR over random orders).
        stderr: ``[N]`` standard error of ``value`` over ``num_draws`` draws (estimates only).
        num_draws: independent draws averaged into ``value``.
    """

    value: Tensor
    kind: Kind
    stderr: Tensor | None = None
    num_draws: int = 1

    def bits_per_dim(self, num_dims: int) -> BitsPerDim:
        """Convert to bits per dimension: ``-value / (num_dims * ln 2)``."""
        scale = -1.0 / (num_dims * math.log(2))
        stderr = None if self.stderr is None else self.stderr * abs(scale)
        return BitsPerDim(self.value * scale, self.kind, stderr, self.num_draws)


@dataclass(frozen=True)
class BitsPerDim:
    """Negative log-likelihood in bits per dimension, labelled with its kind.

    Attributes:
        value: ``[N]`` bits/dim per instance.
        kind: as in :class:`LogProb` (a bound on log p is an upper bound on bits/dim).
        stderr: ``[N]`` standard error per instance, for estimates.
        num_draws: draws averaged per instance.
    """

    value: Tensor
    kind: Kind
    stderr: Tensor | None = None
    num_draws: int = 1

    def mean(self) -> tuple[float, float | None]:
        """Batch mean and its standard error (over instances, plus the draws' own error)."""
        n = self.value.numel()
        value = self.value.detach()
        mean = float(value.mean())
        if n < 2 and self.stderr is None:
            return mean, None
        spread = float(value.var(unbiased=True)) / n if n > 1 else 0.0
        draws = float((self.stderr.detach() ** 2).sum()) / n**2 if self.stderr is not None else 0.0
        return mean, math.sqrt(spread + draws)

    def __str__(self) -> str:
        mean, err = self.mean()
        label = {"exact": "exact", "bound": "upper bound", "estimate": "estimate"}[self.kind]
        err_text = f" ± {err:.4f}" if err is not None else ""
        return f"{mean:.4f}{err_text} bits/dim ({label})"


@dataclass
class Score:
    """Per-instance sums from a teacher-forced pass (internal currency between levels).

    Attributes:
        logp: ``[N]`` log-probability of the scored elements (weighted L/m in estimate mode).
        dims: ``[N]`` number of scored elements (weighted the same way).
        objective: ``[N]`` training objective, an NLL sum in which the leaf may weight its
            elements (e.g. the red channel); equals ``-logp`` outside training.
        aux: auxiliary terms, name -> (sum over instances, count), e.g. the guiding pixel's NLL.
        kind: the kind of ``logp``.
    """

    logp: Tensor
    dims: Tensor
    objective: Tensor
    aux: dict[str, tuple[Tensor, Tensor]] = field(default_factory=dict)
    kind: Kind = "exact"

    def reduce_to(self, index: Tensor, n: int, weight: Tensor | None = None) -> Score:
        """Sum rows into ``n`` parents: row i goes to parent ``index[i]``, scaled by ``weight``.

        Args:
            index: int64 ``[M]`` parent of each row.
            n: number of parents.
            weight: ``[n]`` per-parent factor applied after summing (e.g. L/m), or None.
        """

        def fold(t: Tensor) -> Tensor:
            out = t.new_zeros(n).index_add_(0, index, t)
            return out if weight is None else out * weight.to(out.dtype)

        return Score(fold(self.logp), fold(self.dims), fold(self.objective), self.aux, self.kind)

    def add(self, other: Score) -> Score:
        """Sum two scores of the same instances (e.g. a guiding pixel's and the children's)."""
        aux = dict(self.aux)
        for name, (s, c) in other.aux.items():
            if name in aux:
                aux[name] = (aux[name][0] + s, aux[name][1] + c)
            else:
                aux[name] = (s, c)
        return Score(
            self.logp + other.logp,
            self.dims + other.dims,
            self.objective + other.objective,
            aux,
            combine_kinds(self.kind, other.kind),
        )


@runtime_checkable
class Generator(Protocol):
    """What every level and leaf provides (``typing_extensions.Protocol``).

    Attributes:
        event_shape: shape of one instance.
        cond_dim: D, width of the condition tokens it receives.
        cond_tokens: T, condition tokens per instance it receives.
        num_values: V, discrete values per element (elements are integers in ``[0, V)``).
    """

    event_shape: tuple[int, ...]
    cond_dim: int
    cond_tokens: int

    @property
    def num_values(self) -> int: ...

    def log_prob(self, x: Tensor, cond: Tensor) -> LogProb:
        """Log-likelihood of integer ``x [N, *event_shape]`` given ``cond [N, T, D]``: a
        :class:`LogProb` with ``value [N]`` in nats, summed over each instance, and its kind."""
        ...

    def sample(
        self, cond: Tensor, *, options: SampleOptions | None = None, generator=None
    ) -> Tensor:
        """One draw per condition row of ``cond [N, T, D]``: int64 ``[N, *event_shape]``."""
        ...


class AbstractGenerator(nn.Module, abc.ABC):
    """Base class of levels and leaves: validation plus the user-facing methods.

    Subclasses implement :meth:`score` and :meth:`decode`; they declare ``event_shape``,
    ``cond_dim`` and ``cond_tokens`` in their constructor.
    """

    event_shape: tuple[int, ...]
    cond_dim: int
    cond_tokens: int

    @property
    @abc.abstractmethod
    def num_values(self) -> int:
        """V: elements of this generator's data are integers in ``[0, V)``."""

    @property
    def num_elements(self) -> int:
        """E: elements per instance, ``prod(event_shape)``."""
        return math.prod(self.event_shape)

    @abc.abstractmethod
    def score(self, x: Tensor, cond: Tensor, ctx: ScoreContext) -> Score:
        """Teacher-forced per-instance log-probabilities.

        Args:
            x: int64 ``[N, *event_shape]``.
            cond: ``[N, T, D]``.
            ctx: how to score (train / exact / estimate), this level's plan and the random
                stream.

        Returns:
            A :class:`Score` of N rows.
        """

    @abc.abstractmethod
    def decode(
        self, x: Tensor, known: Tensor, cond: Tensor, ctx: DecodeContext
    ) -> tuple[Tensor, Tensor]:
        """Decide the unknown elements of ``x`` step by step.

        Args:
            x: int64 ``[N, *event_shape]``; known entries are kept, others are placeholders.
                With ``ctx.force`` every entry is a given value to walk the decoding path with.
            known: bool ``[N, *event_shape]``.
            cond: ``[N, T, D]``; with ``ctx.guided`` rows ``[:N/2]`` are conditional and
                ``[N/2:]`` unconditional, and both halves receive the same values.
            ctx: options, random stream, guidance state.

        Returns:
            ``(x, logp)``: int64 ``[N, *event_shape]`` and ``[N]`` log-probability (under the
            distribution actually sampled from) of the elements decided here.
        """

    # ---- validation -------------------------------------------------------------------------

    def check_cond(self, cond: Tensor, n: int | None = None) -> None:
        """Raise a ValueError unless ``cond`` is ``[N, T, D]`` with this generator's T and D."""
        if not isinstance(cond, Tensor):
            raise TypeError(f"{type(self).__name__}: cond must be a Tensor, got {type(cond)}")
        expected = (n if n is not None else cond.shape[0], self.cond_tokens, self.cond_dim)
        if cond.dim() != 3 or tuple(cond.shape) != expected:
            raise ValueError(
                f"{type(self).__name__}: cond must have shape [N, T={self.cond_tokens}, "
                f"D={self.cond_dim}] = {list(expected)}, got {list(cond.shape)}"
            )
        check_finite_tensor(type(self).__name__, "cond", cond)

    def check_x(self, x: Tensor, name: str = "x") -> None:
        """Raise unless ``x`` is integer ``[N, *event_shape]`` with values in ``[0, V)``."""
        if not isinstance(x, Tensor):
            raise TypeError(f"{type(self).__name__}: {name} must be a Tensor, got {type(x)}")
        if x.dtype.is_floating_point or x.dtype == torch.bool or x.dtype.is_complex:
            raise TypeError(
                f"{type(self).__name__}: {name} must hold integers in [0, {self.num_values}) "
                f"(e.g. uint8 pixels), got dtype {x.dtype}; convert with x.round().long() if "
                "the values are whole numbers"
            )
        if tuple(x.shape[1:]) != tuple(self.event_shape):
            raise ValueError(
                f"{type(self).__name__}: {name} must have shape [N, {', '.join(map(str, self.event_shape))}]"
                f", got {list(x.shape)}"
            )
        if x.numel() and (int(x.min()) < 0 or int(x.max()) >= self.num_values):
            raise ValueError(
                f"{type(self).__name__}: {name} values must lie in [0, {self.num_values}), "
                f"got min {int(x.min())} and max {int(x.max())}"
            )

    # ---- user-facing API on a bare generator (Fractal adds conditioners, loss, guidance) -----

    def log_prob(self, x: Tensor, cond: Tensor) -> LogProb:
        """Exact teacher-forced log-likelihood ``[N]`` (nats) given ``cond [N, T, D]``.

        MAR levels are scored with identity orders here; use :class:`fractalkit.Fractal` for
        random orders and estimates.
        """
        self.check_x(x)
        self.check_cond(cond, x.shape[0])
        ctx = ScoreContext("exact", default_plan=LevelPlan(order="identity"))  # at every depth
        score = self.score(x.long(), cond, ctx)
        check_log_prob(f"{type(self).__name__}.log_prob", score.logp, self)
        return LogProb(score.logp, score.kind)

    def sample(
        self,
        cond: Tensor,
        *,
        options: SampleOptions | None = None,
        generator: torch.Generator | None = None,
    ) -> Tensor:
        """Draw one instance per condition row: int64 ``[N, *event_shape]`` (no guidance)."""
        self.check_cond(cond)
        options = options or SampleOptions()
        n = cond.shape[0]
        x = torch.zeros(n, *self.event_shape, dtype=torch.long, device=cond.device)
        known = torch.zeros_like(x, dtype=torch.bool)
        ctx = DecodeContext(options, generator, guided=False, scale=1.0)
        return self.decode(x, known, cond, ctx)[0]

    def complete(
        self,
        x: Tensor,
        known: Tensor,
        cond: Tensor,
        *,
        options: SampleOptions | None = None,
        generator: torch.Generator | None = None,
    ) -> Tensor:
        """Fill in the unknown elements of ``x`` given ``cond [N, T, D]`` (no guidance).

        Args:
            x: integer ``[N, *event_shape]``; unknown entries may hold anything in range.
            known: bool ``[N, *event_shape]``, True where ``x`` is given.
            cond: ``[N, T, D]``.
            options, generator: as in :meth:`sample`.

        Returns:
            int64 ``[N, *event_shape]`` equal to ``x`` wherever ``known``.
        """
        self.check_x(x)
        self.check_cond(cond, x.shape[0])
        if not isinstance(known, Tensor) or known.dtype != torch.bool or known.shape != x.shape:
            raise ValueError(
                f"{type(self).__name__}.complete: known must be a bool tensor of x's shape "
                f"{list(x.shape)}, got {getattr(known, 'dtype', type(known))} "
                f"{list(getattr(known, 'shape', []))}"
            )
        ctx = DecodeContext(options or SampleOptions(), generator, guided=False, scale=1.0)
        out = self.decode(x.long(), known, cond, ctx)[0]
        return torch.where(known, x.long(), out)
