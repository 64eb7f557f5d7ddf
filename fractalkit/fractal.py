"""Fractal: the user API of a fractal model (likelihoods, training loss, sampling, completion).

The levels are checked and built by :mod:`fractalkit.composer`, configs and files are
:mod:`fractalkit.persistence`'s, ``compile`` is :func:`fractalkit.nn.compile.compile_blocks`;
:mod:`fractalkit.conditioners` turn conditions into the top condition; this module holds the
user-facing methods.

Shape letters: N instances (images, clips, ...), K classes, D0 the top level's width, T0 the
condition tokens the top level reads.

``log p(x | y) = sum over children j of log p_child(x_j | c_j)`` at every level, down to the
leaf; the conditioner's output for ``c`` (or its learned null condition) is the top condition.
"""

from __future__ import annotations

import math
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from fractalkit import legacy, persistence
from fractalkit.composer import check_levels, compose, level_plans
from fractalkit.conditioners import ClassLabel, Conditioner, ConditionerConfig, Unconditional
from fractalkit.config import (
    BuildContext,
    FractalConfig,
    LeafConfig,
    LevelConfig,
    build_component,
    load_entry_points,
)
from fractalkit.leaves.base import Leaf
from fractalkit.levels.base import Level
from fractalkit.nn.linear import packed_weights
from fractalkit.normalisation import ValueNormalisation
from fractalkit.partition import Partitioner
from fractalkit.protocol import (
    AbstractGenerator,
    BitsPerDim,
    Canvas,
    DecodeContext,
    LevelPlan,
    LogProb,
    OrderSpec,
    SampleOptions,
    ScoreContext,
)
from fractalkit.validation import check_log_prob, check_probability

# Re-exported for the converter and presets, which write version-2 (class-label) config dicts;
# those load through the one conversion (fractalkit.legacy.upgrade_config).
FORMAT, FORMAT_VERSION = persistence.FORMAT, persistence.LABEL_FORMAT_VERSION


#: the default of ``value_mean`` and ``value_std`` (a distinct object: tells "not given" apart)
_DEFAULT_NORM: float = float("0.5")


def _conditioner_of(
    num_classes: int, label_drop: float | None, conditioner: ConditionerConfig | None
) -> ConditionerConfig:
    """The conditioner config of the short spellings (``num_classes=``, ``label_drop=``)."""
    if not isinstance(num_classes, int) or isinstance(num_classes, bool) or num_classes < 0:
        raise ValueError(f"Fractal: num_classes must be an integer >= 0, got {num_classes}")
    if conditioner is not None:
        if not isinstance(conditioner, ConditionerConfig):
            raise TypeError(
                "Fractal: conditioner must be a ConditionerConfig (ClassLabel(K), Vector(F), "
                f"Sequence(...), or your own registered one), got {type(conditioner).__name__}"
            )
        if num_classes or label_drop is not None:
            raise ValueError(
                "Fractal: give either conditioner= or num_classes=/label_drop= (the old "
                "spelling of conditioner=ClassLabel(num_classes, drop=label_drop)), not both"
            )
        return conditioner
    label_drop = 0.1 if label_drop is None else check_probability("Fractal", "label_drop", label_drop)
    return ClassLabel(num_classes, drop=float(label_drop)) if num_classes else Unconditional()


def _config_of(
    levels: Any, leaf: Any, num_classes: int, label_drop: float | None, value_mean: Any,
    value_std: Any, conditioner: ConditionerConfig | None, config: FractalConfig | None,
) -> FractalConfig:
    """The :class:`FractalConfig` of ``Fractal(...)``'s arguments: the one given
    (``Fractal(config)`` or ``config=``), or the one the short spellings describe."""
    if isinstance(levels, FractalConfig):  # Fractal(config)
        if config is not None:
            raise ValueError("Fractal: give the FractalConfig once (positionally or as config=)")
        levels, config = None, levels
    if config is None:
        if levels is None or leaf is None:
            raise TypeError("Fractal: give levels and leaf (or one FractalConfig)")
        return FractalConfig(
            tuple(check_levels(levels, leaf)),
            leaf,
            _conditioner_of(num_classes, label_drop, conditioner),
            value_mean=value_mean,
            value_std=value_std,
        )
    if not isinstance(config, FractalConfig):
        raise TypeError(
            f"Fractal: config must be a fractalkit.FractalConfig (FractalConfig.from_dict reads a "
            f"dict), got {type(config).__name__}"
        )
    given = [
        name for name, value, default in (
            ("levels", levels, None), ("leaf", leaf, None), ("num_classes", num_classes, 0),
            ("label_drop", label_drop, None), ("conditioner", conditioner, None),
            ("value_mean", value_mean, _DEFAULT_NORM), ("value_std", value_std, _DEFAULT_NORM),
        ) if value is not default
    ]
    if given:
        raise ValueError(
            f"Fractal: give either a FractalConfig or the short spellings, not both (also "
            f"given: {given}); use dataclasses.replace(config, ...) to change one"
        )
    return config


@dataclass(frozen=True)
class TrainingLoss:
    """The training objective and its parts.

    Attributes:
        total: scalar to call ``.backward()`` on: the (possibly channel-weighted) mean NLL per
            scored dimension plus every auxiliary term.
        nll: scalar mean NLL per scored dimension, in nats, unweighted.
        aux: auxiliary terms by name (e.g. ``"guiding_pixel_nll"``), each a scalar mean.
    """

    total: Tensor
    nll: Tensor
    aux: dict[str, Tensor]

    @property
    def bits_per_dim(self) -> float:
        """``nll`` in bits per dimension (for logging)."""
        return float(self.nll.detach()) / math.log(2)


class Fractal(nn.Module):
    """A fractal generative model: levels of AR/MAR models in models, ending in a leaf.

    The model is described by one :class:`fractalkit.FractalConfig` (:attr:`config`): pass one
    (``Fractal(config)``), or the short spellings below, which build it.

    Args:
        levels: ``(partitioner, level_config)`` pairs, top first, or a whole
            :class:`fractalkit.FractalConfig` (then give nothing else); each partitioner's child shape
            must be the next one's event shape. Configs: :class:`fractalkit.ARLevelConfig`,
            :class:`fractalkit.MARLevelConfig`, or a registered plug-in.
        leaf: the leaf's config (:class:`fractalkit.RGBLeafConfig`,
            :class:`fractalkit.CategoricalLeafConfig`, ...), modelling the last child shape.
        num_classes: K for class-conditional models (builds ``ClassLabel(K)``); 0 for
            unconditional ones (unless ``conditioner`` is given).
        label_drop: with ``num_classes``: probability of replacing a label by the null
            embedding in training (classifier-free guidance needs it); default 0.1.
        conditioner: what the model is conditioned on, e.g. :class:`fractalkit.Vector` ``(3)``
            or :class:`fractalkit.Sequence` ``(...)`` (see :mod:`fractalkit.conditioners`);
            exclusive with ``num_classes`` and ``label_drop``.
        value_mean, value_std: how integer values become floats for linear embeddings,
            ``(v / (V - 1) - mean) / std``; a number or one per entry of the data's leading axis
            (per channel; the original uses ImageNet's mean and std).
        config: a :class:`fractalkit.FractalConfig`, instead of all of the above.

    Example:
        >>> from fractalkit import Fractal, ImagePatches, MARLevelConfig, RGBLeafConfig
        >>> model = Fractal(
        ...     [(ImagePatches(8, 4), MARLevelConfig(width=32, depth=1, heads=2)),
        ...      (ImagePatches(4, 1), MARLevelConfig(width=16, depth=1, heads=2))],
        ...     leaf=RGBLeafConfig(width=16, depth=1, heads=2),
        ...     num_classes=10,
        ... )
        >>> model.event_shape
        (3, 8, 8)
    """

    #: Sampling settings stored with a pretrained model (set by :meth:`from_pretrained`).
    pretrained_options: SampleOptions | None = None

    def __init__(
        self,
        levels: Sequence[tuple[Partitioner, LevelConfig]] | FractalConfig | None = None,
        leaf: LeafConfig | None = None,
        *,
        num_classes: int = 0,
        label_drop: float | None = None,
        value_mean: float | Sequence[float] = _DEFAULT_NORM,
        value_std: float | Sequence[float] = _DEFAULT_NORM,
        conditioner: ConditionerConfig | None = None,
        config: FractalConfig | None = None,
    ) -> None:
        super().__init__()
        config = _config_of(levels, leaf, num_classes, label_drop, value_mean, value_std, conditioner, config)
        levels = check_levels(config.levels, config.leaf)
        if not isinstance(config.conditioner, ConditionerConfig):
            raise TypeError(
                "Fractal: conditioner must be a ConditionerConfig (ClassLabel(K), Vector(F), "
                f"Sequence(...), or your own registered one), got {type(config.conditioner).__name__}"
            )
        self._config = config
        self.event_shape = config.event_shape

        normalisation = ValueNormalisation.of(self.event_shape, config.value_mean, config.value_std)
        self.root: Level = compose(levels, config.leaf, normalisation)
        # Old files' parameter names load through the one key map (fractalkit.legacy).
        self._register_load_state_dict_pre_hook(legacy.state_dict_pre_hook, with_module=True)
        kinds = getattr(self.leaf, "slot_kinds", None)
        if kinds is not None and kinds.num_elements != math.prod(self.event_shape):
            raise ValueError(
                f"Fractal: the leaf's slot kinds describe {kinds.num_elements} elements but an "
                f"instance has {math.prod(self.event_shape)} (event shape {list(self.event_shape)})"
            )
        self.top_tokens = levels[0][1].out_tokens
        # Built after the levels, as always: the same weights from the same seed.
        ctx = BuildContext(levels[0][1].width, self.top_tokens, self.event_shape)
        built = build_component(config.conditioner, ctx, "conditioner")
        if not isinstance(built, Conditioner):
            raise TypeError(
                f"Fractal: {type(config.conditioner).__name__}.build must return a "
                f"fractalkit.conditioners.Conditioner, got {type(built).__name__}"
            )
        self.conditioner = built

    @property
    def num_classes(self) -> int:
        """K for a class-label model, else 0."""
        cond = self._config.conditioner
        return cond.num_classes if isinstance(cond, ClassLabel) else 0

    @property
    def label_drop(self) -> float:
        """The conditioner's condition-dropout probability (0.1 for one without dropout, the
        default older versions reported)."""
        return float(getattr(self._config.conditioner, "drop", 0.1))

    # ---- structure ---------------------------------------------------------------------------

    @property
    def levels(self) -> list[AbstractGenerator]:
        """The generators top first, the leaf last."""
        out: list[AbstractGenerator] = [self.root]
        while isinstance(out[-1], Level):
            out.append(out[-1].child)
        return out

    @property
    def leaf(self) -> Leaf:
        """The leaf generator."""
        return self.levels[-1]  # type: ignore[return-value]

    @property
    def num_values(self) -> int:
        """V: data values are integers in ``[0, V)``."""
        return self.root.num_values

    @property
    def num_dims(self) -> int:
        """Dimensions per instance (H*W*C for an image), the bits/dim denominator."""
        return math.prod(self.event_shape)

    # ---- conditions --------------------------------------------------------------------------

    def _condition(self, c: Any, y: Any, n: int | None) -> Any:
        """The one condition of ``c`` and ``y`` (the class-label spelling), checked for ``n``."""
        if y is not None:
            if c is not None:
                raise ValueError("Fractal: give the condition as c or as y (class labels), not both")
            if not isinstance(self._config.conditioner, ClassLabel | Unconditional):
                raise ValueError(
                    f"Fractal: y= is the spelling for class labels; this model's conditioner is "
                    f"{type(self._config.conditioner).__name__}: pass c="
                )
            c = y
        if c is not None:
            self.conditioner.check(c, n)
        elif not self.conditioner.has_null:
            raise ValueError(
                f"Fractal: this model's conditioner ({type(self.conditioner).__name__}) has no "
                "null condition: pass a condition c"
            )
        return c

    def top_condition(
        self,
        c: Any,
        n: int,
        *,
        drop: bool = False,
        generator: torch.Generator | None = None,
    ) -> Tensor:
        """The top level's condition ``[N, T0, D0]`` from the conditioner (None: the null one).

        Args:
            c: a condition the conditioner accepts (int64 ``[N]`` labels for class labels), or
                None for the null condition.
            n: N.
            drop: training mode: replace conditions by the null one with the conditioner's
                ``drop`` probability (and its own per-part dropout).
            generator: random stream for the dropout.
        """
        return self._checked_top(self.conditioner(c, n, drop=drop, generator=generator), n, c is None)

    def _checked_top(self, e: Any, n: int, null: bool) -> Tensor:
        """The conditioner's output ``e``, checked to be the top condition ``[N, T0, D0]``.

        A floating ``e`` of another dtype than the model's parameters is cast to it (outside
        autocast, which chooses dtypes itself); anything else is refused with an error naming
        the conditioner's class and kind, what was expected and what came back.
        """
        width, tokens = self.root.cond_dim, self.root.cond_tokens
        what = (
            f"Fractal: the conditioner {type(self.conditioner).__name__} (kind "
            f"{getattr(type(self._config.conditioner), 'kind', '?')!r}) returned"
            + (" for the null condition" if null else "")
        )
        want = f"the top condition [N={n}, T={tokens}, D={width}]"
        if not isinstance(e, Tensor):
            raise TypeError(f"{what} a {type(e).__name__}; expected a float tensor, {want}")
        if tuple(e.shape) != (n, tokens, width):
            raise ValueError(
                f"{what} shape {list(e.shape)}; expected {want} (N instances, T the top level's "
                "out_tokens, D its width; embed may return [N, D], one vector every token reads)"
            )
        if not e.dtype.is_floating_point:
            raise TypeError(f"{what} dtype {e.dtype}; expected a floating dtype for {want}")
        dtype = next(self.root.parameters()).dtype
        if e.dtype != dtype and not torch.is_autocast_enabled(e.device.type):
            e = e.to(dtype)
        if e.numel() and not bool(torch.isfinite(e).all()):
            raise ValueError(
                f"{what} non-finite values (NaN or inf) in {want}; check its embedding of this "
                "condition (and its weights)"
            )
        return e

    def _canvas(self, x: Tensor, known: Tensor | None = None, needed: bool = False) -> Canvas | None:
        """The element positions of ``x [N, *event]`` (and, decoding, the decided values from
        ``known``) when a component declares ``needs_positions`` (a slot-kinds leaf) or
        ``needed``; None otherwise (the default path tracks nothing)."""
        if not needed and not any(getattr(g, "needs_positions", False) for g in self.levels):
            return None
        return Canvas.of(x, known)

    def _plans(
        self, orders: OrderSpec | Sequence[OrderSpec] = None, steps: Sequence[int | None] | None = None
    ) -> tuple[LevelPlan, ...]:
        """One plan per level (order, steps), resolved once by the composer for a whole pass."""
        return level_plans(self.levels[:-1], orders, steps)

    def _has_orders(self) -> bool:
        return any(level.uses_orders for level in self.levels[:-1])

    # ---- likelihood and training -------------------------------------------------------------

    def loss(self, x: Tensor, c: Any = None, *, y: Tensor | None = None, generator=None) -> TrainingLoss:
        """The training objective on a batch.

        MAR levels mask children with the paper's truncated-normal ratio and score the masked
        ones only; conditions are dropped (replaced by the null condition) with the
        conditioner's ``drop`` probability when the module is in training mode.

        Args:
            x: integer ``[N, *event_shape]`` in ``[0, V)``.
            c: the condition for the model's conditioner (e.g. float ``[N, F]`` for
                :class:`fractalkit.Vector`), or None (the null condition).
            y: int64 ``[N]`` class labels: the class-label spelling of ``c``.
            generator: random stream for masks, orders and condition dropout.

        Returns:
            A :class:`TrainingLoss` (nats per scored dimension).
        """
        self.root.check_x(x)
        c = self._condition(c, y, x.shape[0])
        cond = self.top_condition(c, x.shape[0], drop=self.training, generator=generator)
        score = self.root.score(
            x.long(), cond,
            ScoreContext("train", generator, self._plans(), canvas=self._canvas(x)),
        )
        dims = score.dims.sum().clamp(min=1)
        nll = -score.logp.sum() / dims
        total = score.objective.sum() / dims
        aux = {name: s / c.clamp(min=1) for name, (s, c) in score.aux.items()}
        for term in aux.values():
            total = total + term
        return TrainingLoss(total, nll, aux)

    def log_prob(
        self,
        x: Tensor,
        c: Any = None,
        *,
        y: Tensor | None = None,
        orders: OrderSpec | Sequence[OrderSpec] = None,
        num_draws: int = 1,
        generator: torch.Generator | None = None,
    ) -> LogProb:
        """Per-instance log-likelihood in nats, with its kind.

        - Only AR levels: exact.
        - MAR levels with ``orders`` given (``"identity"``, ``"random"``, a permutation, or one
          entry per level): exact for the AR model of those orders (one pass per child).
        - MAR levels and ``orders=None``: an unbiased estimate of the any-order bound
          ``E_order[log p_order(x)]``: per instance, m ~ U{1..L} random children are masked and
          scored (recursively) with weight L/m; ``num_draws`` draws are averaged and their
          standard error reported.
        - A guiding pixel makes any of these a bound (log p(g) + log p(x | g)).

        Call ``model.eval()`` first to switch dropout off.

        Args:
            x: integer ``[N, *event_shape]`` in ``[0, V)``.
            c: the condition, or None for the likelihood under the null condition.
            y: int64 ``[N]`` class labels: the class-label spelling of ``c``.
            orders: see above; a tensor is ``[L]`` (shared) or ``[N, L]`` (top level only).
            num_draws: draws averaged for an estimate.
            generator: random stream for orders and masks.

        Returns:
            :class:`fractalkit.LogProb` with ``value [N]``.
        """
        self.root.check_x(x)
        c = self._condition(c, y, x.shape[0])
        if isinstance(num_draws, bool) or not isinstance(num_draws, int) or num_draws < 1:
            raise ValueError(f"Fractal.log_prob: num_draws must be a positive integer, got {num_draws}")
        x = x.long()
        cond = self.top_condition(c, x.shape[0])
        canvas = self._canvas(x)
        if orders is not None or not self._has_orders():
            ctx = ScoreContext("exact", generator, self._plans(orders), canvas=canvas)
            score = self.root.score(x, cond, ctx)
            check_log_prob("Fractal.log_prob", score.logp, self)
            return LogProb(score.logp, score.kind)
        ctx = ScoreContext("estimate", generator, self._plans(), canvas=canvas)
        draws = [self.root.score(x, cond, ctx) for _ in range(num_draws)]
        values = torch.stack([d.logp for d in draws])  # [draws, N]
        check_log_prob("Fractal.log_prob", values, self)
        stderr = None
        if num_draws > 1:
            stderr = values.std(dim=0, unbiased=True) / math.sqrt(num_draws)
        return LogProb(values.mean(0), draws[0].kind, stderr, num_draws)

    def bits_per_dim(self, x: Tensor, c: Any = None, **kwargs: Any) -> BitsPerDim:
        """``-log_prob / (num_dims ln 2)`` per instance, labelled with its kind.

        Takes the arguments of :meth:`log_prob`; no condition gives the unconditional figure.
        """
        return self.log_prob(x, c, **kwargs).bits_per_dim(self.num_dims)

    # ---- sampling ------------------------------------------------------------------------------

    def _decode(
        self,
        x: Tensor,
        known: Tensor,
        c: Any,
        options: SampleOptions,
        generator,
        orders,
        force: bool = False,
    ) -> tuple[Tensor, Tensor]:
        n = x.shape[0]
        plans = self._plans(orders, options.steps)
        guided = options.guidance != 1.0
        if guided and (c is None or not self.conditioner.has_null):
            raise ValueError(
                "guidance needs a class-conditional model (or any conditioner with a null "
                "condition) and a condition c (labels y); use guidance=1.0 for unconditional sampling"
            )
        cond = self.top_condition(c, n)
        if guided:  # the unconditional half reads the null condition
            cond = torch.cat([cond, self.top_condition(None, n).to(cond.dtype)])
            x, known = x.repeat(2, *([1] * (x.dim() - 1))), known.repeat(2, *([1] * (x.dim() - 1)))
        # The leaf records what it decides on the canvas, for later elements and the constraint.
        canvas = self._canvas(x, known, needed=options.constraint is not None)
        ctx = DecodeContext(
            options, generator, guided, scale=options.guidance, force=force, plans=plans, canvas=canvas
        )
        # Skinny bf16 products (bf16 weights, or bf16 CPU autocast) read weights packed once per call.
        with packed_weights():
            out, logp = self.root.decode(x, known, cond, ctx)
        return out[:n], logp[:n]

    @torch.no_grad()
    def sample(
        self,
        num_samples: int | None = None,
        c: Any = None,
        *,
        y: Tensor | None = None,
        options: SampleOptions | None = None,
        generator: torch.Generator | None = None,
        orders: OrderSpec | Sequence[OrderSpec] = None,
        **overrides: Any,
    ) -> Tensor:
        """Draw instances depth-first through the levels.

        Args:
            num_samples: N for unconditional sampling (or with a condition, must match it).
            c: the condition for N instances (the conditioner's kind), or None (unconditional).
            y: int64 ``[N]`` class labels: the class-label spelling of ``c``.
            options: a :class:`fractalkit.SampleOptions`; keyword ``overrides`` replace its fields
                (``guidance=4.0, temperature=0.9, steps=(64, 16)``; unknown names raise).
                Guidance works with every conditioner that has a null condition: the
                unconditional half reads it.
            generator: the random stream; the same seed gives the same samples.
            orders: MAR orders (default: random per instance from ``generator``).

        Returns:
            int64 ``[N, *event_shape]`` on the model's device.
        """
        options = SampleOptions.make(options, **overrides)
        if num_samples is not None and (isinstance(num_samples, bool) or not isinstance(num_samples, int)):
            raise TypeError(f"sample: num_samples must be a non-negative int or None, got {num_samples!r}")
        if c is not None or y is not None:
            c = self._condition(c, y, num_samples)
            n = self.conditioner.check(c, num_samples)
        elif num_samples is None or not isinstance(num_samples, int) or num_samples < 0:
            raise ValueError(
                f"sample: give num_samples (a non-negative int) or a condition c (labels y), got {num_samples!r}"
            )
        else:
            c = self._condition(None, None, num_samples)
            n = num_samples
        device = next(self.root.parameters()).device
        x = torch.zeros(n, *self.event_shape, dtype=torch.long, device=device)
        return self._decode(x, torch.zeros_like(x, dtype=torch.bool), c, options, generator, orders)[0]

    @torch.no_grad()
    def complete(
        self,
        x: Tensor,
        known: Tensor,
        c: Any = None,
        *,
        y: Tensor | None = None,
        options: SampleOptions | None = None,
        generator: torch.Generator | None = None,
        orders: OrderSpec | Sequence[OrderSpec] = None,
        **overrides: Any,
    ) -> Tensor:
        """Fill in the unknown elements of ``x`` (inpainting, outpainting, uncropping, editing).

        At each level, fully known children are teacher-forced context, fully unknown children
        are sampled and partially known ones recurse with their part of the mask. Exact (a draw
        from the model's conditional) when the known elements come first in the model's own
        order: for AR levels a prefix of the patch-then-pixel-then-channel raster order; for MAR
        levels, fully known children (placed first in the order) and no partially known child.
        Otherwise it is the standard approximation: siblings do not see a partially known
        child's known part until that child is decided, and a guiding pixel is drawn rather
        than inferred from the known part.

        Args:
            x: integer ``[N, *event_shape]``; unknown entries may hold anything in range.
            known: bool ``[N, *event_shape]``, True where ``x`` is given.
            c, y, options, generator, orders, overrides: as in :meth:`sample`.

        Returns:
            int64 ``[N, *event_shape]`` equal to ``x`` wherever ``known``.
        """
        self.root.check_x(x)
        if not isinstance(known, Tensor) or known.dtype != torch.bool or known.shape != x.shape:
            raise ValueError(
                f"complete: known must be a bool tensor of x's shape {list(x.shape)}, got "
                f"{getattr(known, 'dtype', type(known))} {list(getattr(known, 'shape', []))}"
            )
        c = self._condition(c, y, x.shape[0])
        options = SampleOptions.make(options, **overrides)
        out = self._decode(x.long(), known, c, options, generator, orders)[0]
        return torch.where(known, x.long(), out)

    @torch.no_grad()
    def stepwise_log_prob(
        self,
        x: Tensor,
        c: Any = None,
        *,
        y: Tensor | None = None,
        orders: OrderSpec | Sequence[OrderSpec] = "identity",
        kv_cache: bool = True,
    ) -> Tensor:
        """Exact log-likelihood ``[N]`` computed along the *sampling* path, one child per step.

        Walks the decoding loops (KV caches, MAR one-child-per-step rounds) but feeds the given
        values instead of drawing, summing the log-probability of each step. It is an
        independent path to :meth:`log_prob` with the same ``orders``; tests check both agree.
        """
        self.root.check_x(x)
        c = self._condition(c, y, x.shape[0])
        options = SampleOptions(kv_cache=kv_cache)
        known = torch.ones_like(x, dtype=torch.bool)
        return self._decode(x.long(), known, c, options, None, orders, force=True)[1]

    # ---- speed -------------------------------------------------------------------------------

    def compile(self, *, fixed_shape_caches: bool = False, **kwargs: Any) -> Fractal:
        """Opt in to ``torch.compile``: compile every transformer block in place; returns self.

        See :func:`fractalkit.nn.compile.compile_blocks` for what is compiled and why.
        Parameter names, ``state_dict`` and files are unchanged; likelihoods agree with the
        eager model to float rounding (tests: 1e-4).

        Args:
            fixed_shape_caches: decode with KV caches attended to whole under a mask, so every
                step has exactly the same shapes (for ``mode="reduce-overhead"`` on a GPU).
            **kwargs: passed to ``torch.compile`` (e.g. ``backend="eager"``).

        Returns:
            This model.

        Example:
            >>> model = build_preset("tiny-in32").compile()  # doctest: +SKIP
        """
        from fractalkit.nn.compile import compile_blocks

        return compile_blocks(self, fixed_shape_caches=fixed_shape_caches, **kwargs)

    # ---- configuration and files -----------------------------------------------------------

    @property
    def config(self) -> FractalConfig:
        """The model's one description, a frozen :class:`fractalkit.FractalConfig`.

        ``Fractal(model.config)`` (or :meth:`from_config`) rebuilds the model freshly
        initialised; ``model.config.to_dict()`` is the JSON a file stores.
        """
        return self._config

    @classmethod
    def from_config(cls, config: FractalConfig | dict[str, Any]) -> Fractal:
        """Build a freshly initialised model from a :class:`fractalkit.FractalConfig` or its dict
        (any readable format version; load weights separately)."""
        return cls(FractalConfig.from_dict(config))

    def save(self, path: str | os.PathLike) -> None:
        """Write weights (safetensors) with the JSON config in the file's metadata, atomically.

        Args:
            path: file to write, conventionally ``*.safetensors``.
        """
        persistence.save(self, path)

    @classmethod
    def from_pretrained(cls, name_or_path: str | os.PathLike, **kwargs: Any) -> Fractal:
        """A pretrained model: a saved folder, a released model's name or a Hub id; see
        :func:`fractalkit.hub.from_pretrained` (the keyword arguments are its).

        The released paper models are found by name because ``import fractalkit`` registers
        them (:mod:`fractalkit.imagenet`); the Hub code builds this class (``cls``)."""
        from fractalkit.hub import from_pretrained

        return from_pretrained(name_or_path, cls=cls, **kwargs)

    def save_pretrained(self, folder: str | os.PathLike, **kwargs: Any) -> Path:
        """Write a Hub-style folder; see :func:`fractalkit.hub.save_pretrained`."""
        from fractalkit.hub import save_pretrained

        return save_pretrained(self, folder, **kwargs)

    def push_to_hub(self, repo_id: str, **kwargs: Any) -> str:
        """Upload to the Hugging Face Hub; see :func:`fractalkit.hub.push_to_hub`."""
        from fractalkit.hub import push_to_hub

        return push_to_hub(self, repo_id, **kwargs)

    @classmethod
    def load(
        cls, path: str | os.PathLike, *, device: str | torch.device = "cpu", import_plugins: bool = False
    ) -> Fractal:
        """Rebuild a model saved with :meth:`save` (any format version, 1 to 4).

        Args:
            path: the file.
            device: where to put the model.
            import_plugins: first import every installed plug-in declared under the entry-point
                group ``fractalkit.components`` (:func:`fractalkit.config.load_entry_points`).
                Importing runs their code, so it is off by default.

        Raises:
            FileNotFoundError: no such file.
            ValueError: the file is not a fractalkit safetensors file, is truncated or corrupt,
                or its tensors do not match its config (each names the file); a plug-in kind
                nothing registered (naming the module the file says it comes from); a config
                declaring more than the file holds (a
                :class:`fractalkit.validation.DeclaredSizeError`, refused in time and memory
                proportional to the file, not to the declaration).
        """
        if import_plugins:
            load_entry_points()
        return persistence.load(cls, path, device=device)
