"""Fractal: composes levels and a leaf to any depth and exposes the user API.

Shape letters: N instances (images, clips, ...), K classes, D0 the top level's width, T0 the
condition tokens the top level reads.

``log p(x | y) = sum over children j of log p_child(x_j | c_j)`` at every level, down to the
leaf; the class embedding (or the learned null embedding) is the top condition.
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from fractalkit.config import ComponentConfig, config_from_dict
from fractalkit.filemodes import apply_umask
from fractalkit.leaves.base import Leaf
from fractalkit.levels.base import Level
from fractalkit.nn.blocks import Backbone, PreNormBlock
from fractalkit.partition import Partitioner, partitioner_from_config
from fractalkit.protocol import AbstractGenerator, BitsPerDim, LogProb
from fractalkit.sampling.options import DecodeContext, OrderSpec, SampleOptions, ScoreContext
from fractalkit.sampling.rng import uniform
from fractalkit.validation import (
    check_finite_tensor,
    check_log_prob,
    checked_model_file,
    nonfinite_tensors,
)

FORMAT = "fractalkit.Fractal"
FORMAT_VERSION = 1


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


def _event_tensor(value: float | Sequence[float], event_shape: tuple[int, ...], name: str) -> Tensor:
    """A per-element tensor of ``event_shape`` from a scalar or one value per leading axis entry."""
    # Config constants: built on the CPU so that checks on them work under any default device
    # (e.g. ``with torch.device("meta"):``); buffers made from them follow ``model.to(...)``.
    t = torch.as_tensor(value, dtype=torch.float32, device="cpu")
    check_finite_tensor("Fractal", name, t, positive=name == "value_std")
    if t.dim() == 1:
        if t.numel() != event_shape[0]:
            raise ValueError(
                f"Fractal: {name} has {t.numel()} entries but the data's leading axis has "
                f"{event_shape[0]} (give one value, or one per channel)"
            )
        t = t.view(-1, *([1] * (len(event_shape) - 1)))
    elif t.dim() != 0:
        raise ValueError(f"Fractal: {name} must be a number or a list of numbers, got {value!r}")
    return t.expand(event_shape)


class Fractal(nn.Module):
    """A fractal generative model: levels of AR/MAR models in models, ending in a leaf.

    Args:
        levels: ``(partitioner, level_config)`` pairs, top first; each partitioner's child shape
            must be the next one's event shape. Configs: :class:`fractalkit.ARLevelConfig`,
            :class:`fractalkit.MARLevelConfig`, or a registered plug-in.
        leaf: the leaf's config (:class:`fractalkit.RGBLeafConfig`,
            :class:`fractalkit.CategoricalLeafConfig`, ...), modelling the last child shape.
        num_classes: K for class-conditional models; 0 for unconditional ones.
        label_drop: probability of replacing a label by the null embedding in training
            (classifier-free guidance needs it).
        value_mean, value_std: how integer values become floats for linear embeddings,
            ``(v / (V - 1) - mean) / std``; a number or one per entry of the data's leading axis
            (per channel; the original uses ImageNet's mean and std).

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

    def __init__(
        self,
        levels: Sequence[tuple[Partitioner, ComponentConfig]],
        leaf: ComponentConfig,
        *,
        num_classes: int = 0,
        label_drop: float = 0.1,
        value_mean: float | Sequence[float] = 0.5,
        value_std: float | Sequence[float] = 0.5,
    ) -> None:
        super().__init__()
        levels = list(levels)
        if not levels:
            raise ValueError("Fractal: levels must hold at least one (partitioner, config) pair")
        for i, pair in enumerate(levels):
            if not (isinstance(pair, tuple | list) and len(pair) == 2):
                raise TypeError(f"Fractal: levels[{i}] must be a (partitioner, config) pair")
            if not isinstance(pair[0], Partitioner):
                raise TypeError(f"Fractal: levels[{i}][0] must be a Partitioner, got {type(pair[0])}")
            if not hasattr(pair[1], "build") or not hasattr(pair[1], "out_tokens"):
                raise TypeError(f"Fractal: levels[{i}][1] must be a level config, got {type(pair[1])}")
        for i in range(len(levels) - 1):
            above, below = levels[i][0], levels[i + 1][0]
            if tuple(above.child_shape) != tuple(below.event_shape):
                raise ValueError(
                    f"Fractal: level {i} hands down children of shape {list(above.child_shape)} "
                    f"but level {i + 1} expects instances of shape {list(below.event_shape)}"
                )
        if not isinstance(num_classes, int) or isinstance(num_classes, bool) or num_classes < 0:
            raise ValueError(f"Fractal: num_classes must be an integer >= 0, got {num_classes}")
        if not 0 <= label_drop < 1:
            raise ValueError(f"Fractal: label_drop must lie in [0, 1), got {label_drop}")
        self._spec = {
            "levels": [(p, c) for p, c in levels],
            "leaf": leaf,
            "num_classes": num_classes,
            "label_drop": float(label_drop),
            "value_mean": value_mean,
            "value_std": value_std,
        }
        self.event_shape = tuple(levels[0][0].event_shape)
        self.num_classes = num_classes
        self.label_drop = float(label_drop)

        # Each level's children share one normalisation: split the per-element tensors down.
        means, stds = [], []
        mean = _event_tensor(value_mean, self.event_shape, "value_mean")[None]
        std = _event_tensor(value_std, self.event_shape, "value_std")[None]
        for i, (part, _) in enumerate(levels):
            m, s = part.split(mean.contiguous()), part.split(std.contiguous())  # [1, k, *child]
            if not (bool((m == m[:, :1]).all()) and bool((s == s[:, :1]).all())):
                raise ValueError(
                    f"Fractal: level {i}'s children would need different value normalisations; "
                    "give value_mean/value_std per channel (the leading axis) only"
                )
            means.append(m[0, 0])
            stds.append(s[0, 0])
            mean, std = m[:, 0], s[:, 0]

        child: AbstractGenerator = leaf.build(
            tuple(levels[-1][0].child_shape), levels[-1][1].width, levels[-1][1].out_tokens
        )
        for i in reversed(range(len(levels))):
            part, cfg = levels[i]
            parent = levels[i - 1][1] if i > 0 else cfg  # the top level reads the class token
            child = cfg.build(
                part,
                child,
                cond_dim=parent.width,
                cond_tokens=parent.out_tokens,
                value_mean=means[i],
                value_std=stds[i],
            )
        self.root: Level = child  # type: ignore[assignment]
        width = levels[0][1].width
        self.top_tokens = levels[0][1].out_tokens
        # The unconditional ("null") condition: a learned vector, not a magic class index.
        self.null_embedding = nn.Parameter(torch.zeros(1, width))
        self.class_embedding = nn.Embedding(num_classes, width) if num_classes else None
        nn.init.normal_(self.null_embedding, std=0.02)
        if self.class_embedding is not None:
            nn.init.normal_(self.class_embedding.weight, std=0.02)

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

    def _check_labels(self, y: Tensor | None, n: int | None) -> None:
        if y is None:
            return
        if self.class_embedding is None:
            raise ValueError(
                "Fractal: this model is unconditional (num_classes=0); pass y=None"
            )
        if not isinstance(y, Tensor) or y.dtype.is_floating_point or y.dtype == torch.bool:
            raise TypeError(f"Fractal: y must be an integer tensor of class labels, got {y!r:.80}")
        if y.dim() != 1 or (n is not None and y.shape[0] != n):
            raise ValueError(f"Fractal: y must have shape [{n if n is not None else 'N'}], got {list(y.shape)}")
        if y.numel() and (int(y.min()) < 0 or int(y.max()) >= self.num_classes):
            raise ValueError(
                f"Fractal: labels must lie in [0, {self.num_classes}), got min {int(y.min())} "
                f"and max {int(y.max())}"
            )

    def top_condition(
        self,
        y: Tensor | None,
        n: int,
        *,
        drop: bool = False,
        generator: torch.Generator | None = None,
    ) -> Tensor:
        """The top level's condition ``[N, T0, D0]``: class embeddings, or the null embedding.

        Args:
            y: int64 ``[N]`` labels, or None for unconditional.
            n: N.
            drop: replace each label by the null embedding with probability ``label_drop``.
            generator: random stream for the drop.
        """
        null = self.null_embedding.expand(n, -1)
        if y is None:
            e = null
        else:
            e = self.class_embedding(y.to(null.device).long())
            if drop and self.label_drop > 0:
                dropped = uniform((n,), generator=generator, device=null.device) < self.label_drop
                e = torch.where(dropped[:, None], null.to(e.dtype), e)
        return e[:, None].expand(n, self.top_tokens, e.shape[-1])

    def _orders(self, orders: OrderSpec | Sequence[OrderSpec]) -> tuple[OrderSpec, ...]:
        levels = self.levels[:-1]
        if orders is None or isinstance(orders, str | Tensor):
            spec = [orders if getattr(level, "uses_orders", False) else None for level in levels]
            return tuple(spec)
        spec = list(orders)
        if len(spec) != len(levels):
            raise ValueError(
                f"Fractal: orders must have one entry per level ({len(levels)}), got {len(spec)}"
            )
        for i, (o, level) in enumerate(zip(spec, levels, strict=True)):
            if o is not None and not getattr(level, "uses_orders", False) and not (
                isinstance(o, str) and o == "identity"
            ):
                raise ValueError(
                    f"Fractal: orders[{i}] is given but level {i} ({type(level).__name__}) has a "
                    "fixed raster order; use None there"
                )
        return tuple(spec)

    def _has_orders(self) -> bool:
        return any(getattr(level, "uses_orders", False) for level in self.levels[:-1])

    # ---- likelihood and training -------------------------------------------------------------

    def loss(self, x: Tensor, y: Tensor | None = None, *, generator=None) -> TrainingLoss:
        """The training objective on a batch.

        MAR levels mask children with the paper's truncated-normal ratio and score the masked
        ones only; labels are dropped with ``label_drop`` when the module is in training mode.

        Args:
            x: integer ``[N, *event_shape]`` in ``[0, V)``.
            y: int64 ``[N]`` labels or None.
            generator: random stream for masks, orders and label dropout.

        Returns:
            A :class:`TrainingLoss` (nats per scored dimension).
        """
        self.root.check_x(x)
        self._check_labels(y, x.shape[0])
        cond = self.top_condition(y, x.shape[0], drop=self.training, generator=generator)
        score = self.root.score(x.long(), cond, ScoreContext("train", generator=generator))
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
        y: Tensor | None = None,
        *,
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
            y: int64 ``[N]`` labels, or None for the unconditional likelihood.
            orders: see above; a tensor is ``[L]`` (shared) or ``[N, L]`` (top level only).
            num_draws: draws averaged for an estimate.
            generator: random stream for orders and masks.

        Returns:
            :class:`fractalkit.LogProb` with ``value [N]``.
        """
        self.root.check_x(x)
        self._check_labels(y, x.shape[0])
        if not isinstance(num_draws, int) or num_draws < 1:
            raise ValueError(f"Fractal.log_prob: num_draws must be a positive integer, got {num_draws}")
        x = x.long()
        cond = self.top_condition(y, x.shape[0])
        if orders is not None or not self._has_orders():
            ctx = ScoreContext("exact", generator=generator, orders=self._orders(orders))
            score = self.root.score(x, cond, ctx)
            check_log_prob("Fractal.log_prob", score.logp, self)
            return LogProb(score.logp, score.kind)
        ctx = ScoreContext("estimate", generator=generator, orders=self._orders(None))
        draws = [self.root.score(x, cond, ctx) for _ in range(num_draws)]
        values = torch.stack([d.logp for d in draws])  # [draws, N]
        check_log_prob("Fractal.log_prob", values, self)
        stderr = None
        if num_draws > 1:
            stderr = values.std(dim=0, unbiased=True) / math.sqrt(num_draws)
        return LogProb(values.mean(0), draws[0].kind, stderr, num_draws)

    def bits_per_dim(self, x: Tensor, y: Tensor | None = None, **kwargs: Any) -> BitsPerDim:
        """``-log_prob / (num_dims ln 2)`` per instance, labelled with its kind.

        Takes the arguments of :meth:`log_prob`; ``y=None`` gives the unconditional figure.
        """
        return self.log_prob(x, y, **kwargs).bits_per_dim(self.num_dims)

    def teacher_forced(
        self, x: Tensor, y: Tensor | None, masks: Sequence[Tensor | None]
    ) -> LogProb:
        """Score with explicit MAR masks (one bool ``[n_level, L]`` per MAR level, None for AR).

        Reproduces a given computation exactly (e.g. one draw of another implementation's
        estimate); the rows of level i+1 are the masked children of level i in (instance,
        child index) order. The result is unweighted, labelled an estimate.
        """
        self.root.check_x(x)
        self._check_labels(y, x.shape[0])
        cond = self.top_condition(y, x.shape[0])
        score = self.root.score(x.long(), cond, ScoreContext("masks", masks=tuple(masks)))
        return LogProb(score.logp, "estimate")

    # ---- sampling ------------------------------------------------------------------------------

    def _decode(
        self,
        x: Tensor,
        known: Tensor,
        y: Tensor | None,
        options: SampleOptions,
        generator,
        orders,
        force: bool = False,
    ) -> tuple[Tensor, Tensor]:
        n = x.shape[0]
        if options.steps is not None and len(options.steps) > len(self.levels) - 1:
            raise ValueError(
                f"steps: expected at most one entry per level ({len(self.levels) - 1}), "
                f"got {len(options.steps)}"
            )
        guided = options.guidance != 1.0
        if guided and (y is None or self.class_embedding is None):
            raise ValueError(
                "guidance needs a class-conditional model and labels y; use guidance=1.0 for "
                "unconditional sampling"
            )
        cond = self.top_condition(y, n)
        if guided:
            cond = torch.cat([cond, self.top_condition(None, n).to(cond.dtype)])
            x, known = x.repeat(2, *([1] * (x.dim() - 1))), known.repeat(2, *([1] * (x.dim() - 1)))
        ctx = DecodeContext(
            options, generator, guided, scale=options.guidance, force=force, orders=self._orders(orders)
        )
        out, logp = self.root.decode(x, known, cond, ctx)
        return out[:n], logp[:n]

    @torch.no_grad()
    def sample(
        self,
        num_samples: int | None = None,
        y: Tensor | None = None,
        *,
        options: SampleOptions | None = None,
        generator: torch.Generator | None = None,
        orders: OrderSpec | Sequence[OrderSpec] = None,
        **overrides: Any,
    ) -> Tensor:
        """Draw instances depth-first through the levels.

        Args:
            num_samples: N for unconditional sampling (or with ``y``, must match it).
            y: int64 ``[N]`` class labels, or None (unconditional).
            options: a :class:`fractalkit.SampleOptions`; keyword ``overrides`` replace its fields
                (``guidance=4.0, temperature=0.9, steps=(64, 16)``; unknown names raise).
            generator: the random stream; the same seed gives the same samples.
            orders: MAR orders (default: random per instance from ``generator``).

        Returns:
            int64 ``[N, *event_shape]`` on the model's device.
        """
        options = SampleOptions.make(options, **overrides)
        if y is not None:
            self._check_labels(y, num_samples)
            n = y.shape[0]
        elif num_samples is None or not isinstance(num_samples, int) or num_samples < 0:
            raise ValueError(f"sample: give num_samples (a non-negative int) or labels y, got {num_samples!r}")
        else:
            n = num_samples
        device = self.null_embedding.device
        x = torch.zeros(n, *self.event_shape, dtype=torch.long, device=device)
        return self._decode(x, torch.zeros_like(x, dtype=torch.bool), y, options, generator, orders)[0]

    @torch.no_grad()
    def complete(
        self,
        x: Tensor,
        known: Tensor,
        y: Tensor | None = None,
        *,
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
            y, options, generator, orders, overrides: as in :meth:`sample`.

        Returns:
            int64 ``[N, *event_shape]`` equal to ``x`` wherever ``known``.
        """
        self.root.check_x(x)
        if not isinstance(known, Tensor) or known.dtype != torch.bool or known.shape != x.shape:
            raise ValueError(
                f"complete: known must be a bool tensor of x's shape {list(x.shape)}, got "
                f"{getattr(known, 'dtype', type(known))} {list(getattr(known, 'shape', []))}"
            )
        self._check_labels(y, x.shape[0])
        options = SampleOptions.make(options, **overrides)
        out = self._decode(x.long(), known, y, options, generator, orders)[0]
        return torch.where(known, x.long(), out)

    @torch.no_grad()
    def stepwise_log_prob(
        self,
        x: Tensor,
        y: Tensor | None = None,
        *,
        orders: OrderSpec | Sequence[OrderSpec] = "identity",
        kv_cache: bool = True,
    ) -> Tensor:
        """Exact log-likelihood ``[N]`` computed along the *sampling* path, one child per step.

        Walks the decoding loops (KV caches, MAR one-child-per-step rounds) but feeds the given
        values instead of drawing, summing the log-probability of each step. It is an
        independent path to :meth:`log_prob` with the same ``orders``; tests check both agree.
        """
        self.root.check_x(x)
        self._check_labels(y, x.shape[0])
        options = SampleOptions(kv_cache=kv_cache)
        known = torch.ones_like(x, dtype=torch.bool)
        return self._decode(x.long(), known, y, options, None, orders, force=True)[1]

    # ---- speed -------------------------------------------------------------------------------

    def compile(self, *, fixed_shape_caches: bool = False, **kwargs: Any) -> Fractal:
        """Opt in to ``torch.compile``: compile every transformer block in place; returns self.

        Blocks are where training and sampling spend their time, and all blocks of a level share
        one compiled graph (parameters are graph inputs), so compiling costs one trace per block
        type and input shape rather than one per model. A decoding step passes its KV-cache
        length as a tensor size, so as sequences grow dynamo traces one graph with a symbolic
        length instead of one per step. Parameter names, ``state_dict`` and files are unchanged;
        likelihoods agree with the eager model to float rounding (tests: 1e-4). Blocks of one
        class share dynamo's per-code recompile limit, so this raises
        ``torch._dynamo.config.recompile_limit`` to 8 per distinct (block class, width).

        Args:
            fixed_shape_caches: decode with KV caches attended to whole under a mask, so every
                step has exactly the same shapes (for ``mode="reduce-overhead"``, i.e. CUDA
                graphs, on a GPU), at the price of reading the caches' empty slots.
            **kwargs: passed to ``torch.compile`` (e.g. ``mode="reduce-overhead"``,
                ``dynamic=True``, ``backend="eager"`` to check tracing only).

        Returns:
            This model.

        Example:
            >>> model = build_preset("tiny-in32").compile()  # doctest: +SKIP
        """
        import torch._dynamo  # only here: importing dynamo takes a second

        blocks = [m for m in self.modules() if isinstance(m, PreNormBlock)]
        # Blocks of one class share a code object, so dynamo's per-code recompile limit must
        # hold every (class, width) with its few shapes (training, decoding, the leaf).
        kinds = {(type(b), b.attn.qkv.in_features) for b in blocks}
        limit = 8 * max(len(kinds), 1)
        torch._dynamo.config.recompile_limit = max(torch._dynamo.config.recompile_limit, limit)
        for block in blocks:
            block.compile(**kwargs)
        for module in self.modules():
            if isinstance(module, Backbone):
                module.fixed_shape_caches = fixed_shape_caches
        return self

    # ---- configuration and files -----------------------------------------------------------

    @property
    def config(self) -> dict[str, Any]:
        """A JSON-serialisable, versioned description; ``Fractal.from_config`` rebuilds the model."""
        spec = self._spec

        def plain(v):
            return v if isinstance(v, int | float) else [float(t) for t in v]

        return {
            "format": FORMAT,
            "version": FORMAT_VERSION,
            "levels": [
                {"partitioner": p.config(), "level": c.to_dict()} for p, c in spec["levels"]
            ],
            "leaf": spec["leaf"].to_dict(),
            "num_classes": spec["num_classes"],
            "label_drop": spec["label_drop"],
            "value_mean": plain(spec["value_mean"]),
            "value_std": plain(spec["value_std"]),
        }

    @classmethod
    def from_config(cls, config: dict[str, Any]) -> Fractal:
        """Build a freshly initialised model from :attr:`config` (load weights separately)."""
        if not isinstance(config, dict) or config.get("format") != FORMAT:
            raise ValueError(
                f"Fractal.from_config: expected a dict with format {FORMAT!r}, got "
                f"{config.get('format') if isinstance(config, dict) else type(config)}"
            )
        if config.get("version") != FORMAT_VERSION:
            raise ValueError(
                f"Fractal.from_config: config version {config.get('version')} is not supported "
                f"(this fractalkit reads version {FORMAT_VERSION})"
            )
        known = {"format", "version", "levels", "leaf", "num_classes", "label_drop", "value_mean", "value_std"}
        unknown = sorted(set(config) - known)
        if unknown:
            raise ValueError(f"Fractal.from_config: unknown keys {unknown}")
        levels = [
            (partitioner_from_config(entry["partitioner"]), config_from_dict(entry["level"]))
            for entry in config["levels"]
        ]
        return cls(
            levels,
            config_from_dict(config["leaf"]),
            num_classes=config["num_classes"],
            label_drop=config["label_drop"],
            value_mean=config["value_mean"],
            value_std=config["value_std"],
        )

    def save(self, path: str | os.PathLike) -> None:
        """Write weights (safetensors) with the JSON config in the file's metadata, atomically.

        Args:
            path: file to write, conventionally ``*.safetensors``.
        """
        from safetensors.torch import save_file

        path = Path(path)
        tmp = path.with_name(path.name + ".tmp")
        state = {k: v.detach().contiguous() for k, v in self.state_dict().items()}
        save_file(state, str(tmp), metadata={"fractalkit_config": json.dumps(self.config)})
        apply_umask(tmp)  # safetensors writes 0600; teammates may need to read it
        os.replace(tmp, path)

    @classmethod
    def load(cls, path: str | os.PathLike, *, device: str | torch.device = "cpu") -> Fractal:
        """Rebuild a model saved with :meth:`save`.

        Raises:
            FileNotFoundError: no such file.
            ValueError: the file is not a fractalkit safetensors file, is truncated or corrupt,
                or its tensors do not match its config (each names the file).
        """
        from safetensors.torch import load_file

        path = Path(path)
        if not path.is_file():
            raise FileNotFoundError(f"Fractal.load: no file at {path}")
        # Names and shapes are checked on the meta device before anything is allocated.
        config = checked_model_file("Fractal.load", path, "fractalkit_config", cls.from_config)
        try:
            state = load_file(str(path), device=str(device))
        except Exception as err:  # safetensors raises its own error types for bad data
            raise ValueError(
                f"Fractal.load: {path} is not a readable safetensors file (truncated or corrupt?): {err}"
            ) from err
        bad = nonfinite_tensors(state.items())
        if bad:
            raise ValueError(
                f"Fractal.load: {path} holds NaN/inf values in {len(bad)} tensor(s), e.g. {bad[:3]} "
                "(saved from a diverged run?); load an earlier checkpoint"
            )
        model = cls.from_config(config)
        dtypes = {t.dtype for t in state.values() if t.is_floating_point()}
        if len(dtypes) == 1:  # keep the saved precision (load_state_dict would cast to float32)
            model = model.to(dtypes.pop())
        missing, unexpected = model.load_state_dict(state, strict=False)
        if missing or unexpected:
            raise ValueError(
                f"Fractal.load: {path} does not match its config: missing {missing[:5]}, "
                f"unexpected {unexpected[:5]}"
            )
        return model.to(device)
