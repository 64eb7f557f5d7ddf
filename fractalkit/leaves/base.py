"""The leaf contract: p(element values | condition) over an instance's few elements.

Shape letters: M instances, T condition tokens, D condition width, E elements, V values.
"""

from __future__ import annotations

import abc
import contextlib
import math
from collections.abc import Iterator
from typing import ClassVar

import torch
from torch import Tensor

from fractalkit.protocol import AbstractGenerator, Score, accumulation_dtype
from fractalkit.protocol.contexts import DecodeContext, ScoreContext
from fractalkit.sampling.guidance import guided_logits
from fractalkit.sampling.rng import sample_categorical
from fractalkit.validation import check_integer, check_probabilities


class _ObservedLogSoftmax(torch.autograd.Function):
    """``log_softmax(logits).gather(index)`` with one fused backward pass.

    Autograd's backward of the two ops allocates and zero-fills a logits-sized gradient for the
    gather, then a second for the log-softmax; this forms ``onehot(index) - softmax`` scaled by
    the incoming gradient in one logits-sized buffer (the leaves' logits are the largest
    tensors of a small model's training step: 66 MB for the small MAR's pixels).
    """

    @staticmethod
    def forward(ctx, logits: Tensor, index: Tensor) -> Tensor:
        """``[..., V]`` logits and int64 ``[...]`` index to ``[...]`` log-probabilities."""
        logp = logits.log_softmax(-1)
        ctx.save_for_backward(logp, index)
        return logp.gather(-1, index[..., None]).squeeze(-1)

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad: Tensor):
        """``d/dlogits = grad * (onehot(index) - softmax(logits))`` (not differentiable again)."""
        logp, index = ctx.saved_tensors
        out = logp.exp().mul_(grad[..., None].neg())
        out.scatter_add_(-1, index[..., None], grad[..., None])
        return out, None


def observed_log_softmax(logits: Tensor, index: Tensor) -> Tensor:
    """The log-softmax of ``logits`` over their last dim, read at ``index``.

    Equal to ``logits.log_softmax(-1).gather(-1, index[..., None]).squeeze(-1)`` (the same
    values; the gradient up to rounding), with a backward pass that allocates one
    logits-sized buffer instead of two. That backward pass is not differentiable itself
    (``create_graph=True`` through it raises); compute the plain expression for higher-order
    derivatives.

    Args:
        logits: ``[..., V]`` floats.
        index: int64 ``[...]``, values in ``[0, V)``.

    Returns:
        ``[...]`` natural-log probabilities, ``logits``' dtype.
    """
    if torch.is_grad_enabled() and logits.requires_grad:
        return _ObservedLogSoftmax.apply(logits, index)
    return logits.log_softmax(-1).gather(-1, index[..., None]).squeeze(-1)


class Leaf(AbstractGenerator):
    """A generator with no child: categorical distributions over its E elements.

    Subclasses implement :meth:`element_logits`; element e's logits may depend on the condition
    and, when ``autoregressive`` is True, on elements ``< e`` only. Scoring, sampling, guidance and
    completion are shared here. A leaf may restrict each element's values and adjust the
    condition per call (:meth:`prepare`; e.g. :class:`fractalkit.leaves.SlotKindsLeaf`, which
    wraps another leaf).

    Args:
        event_shape: shape of one instance (E = its number of elements).
        cond_dim: D of the incoming condition.
        cond_tokens: T of the incoming condition (the leaf reads token 0, the "middle" one).
        num_values: V.
        channel_weights: per-element weights of the *training* objective (e.g. the paper's red
            weight 5: ``(5, 1, 1)``); likelihoods never use them.
    """

    autoregressive: ClassVar[bool] = False
    #: whether the leaf reads its elements' positions (``ctx.canvas``); :class:`fractalkit.Fractal`
    #: tracks positions only when a component declares it
    needs_positions: ClassVar[bool] = False

    def __init__(
        self,
        event_shape: tuple[int, ...],
        cond_dim: int,
        cond_tokens: int,
        num_values: int,
        channel_weights: tuple[float, ...] | None = None,
    ) -> None:
        super().__init__()
        self.event_shape = tuple(int(s) for s in event_shape)
        self.cond_dim = int(cond_dim)
        self.cond_tokens = int(cond_tokens)
        check_integer(type(self).__name__, "num_values", num_values)
        if num_values < 2:
            raise ValueError(f"{type(self).__name__}: num_values must be >= 2, got {num_values}")
        self._num_values = int(num_values)
        e = math.prod(self.event_shape)
        if channel_weights is not None and (
            len(channel_weights) != e or not all(math.isfinite(w) and w > 0 for w in channel_weights)
        ):
            raise ValueError(
                f"{type(self).__name__}: channel_weights must be {e} finite positive numbers "
                f"(one per element), got {channel_weights}"
            )
        self.channel_weights = None if channel_weights is None else tuple(channel_weights)
        #: while :meth:`recording` is active: the per-element log-probabilities of every score
        self._records: list[Tensor] | None = None
        self._keep_graph = False

    def prepare(self, cond: Tensor, ctx: ScoreContext | DecodeContext, rows: int) -> tuple[Tensor, Tensor | None]:
        """The condition the element logits read and the values each element may take, per call.

        The default: ``cond`` unchanged, every value allowed. A leaf that overrides it (slot
        kinds) gets each element's distribution normalised over its allowed values only.

        Args:
            cond: ``[M, T, D]``.
            ctx: the call's context (``ctx.canvas`` holds element positions when
                :attr:`needs_positions`).
            rows: M.

        Returns:
            ``([M, T, D] condition, bool [M, E, V] allowed values or None for all)``.
        """
        return cond, None

    @contextlib.contextmanager
    def recording(self, *, keep_graph: bool = False) -> Iterator[list[Tensor]]:
        """Collect the per-element log-probabilities of every :meth:`score` call in the block.

        Each call appends a float ``[M, E]`` tensor (detached unless ``keep_graph``: then a
        loss built from them, e.g. one masked to the real samples of padded clips, trains) (natural log of each element's
        probability, in the rows and element order the leaf saw). With exact teacher forcing
        (AR levels, or MAR levels under given orders) the rows are every pixel in the levels'
        split order, so merging them back up through the partitioners gives a per-element
        log-likelihood map whose sum is ``log_prob``.

        Args:
            keep_graph: keep the autograd graph of the recorded tensors.

        Yields:
            The list the tensors are appended to.
        """
        previous, self._records = self._records, []
        previous_keep, self._keep_graph = self._keep_graph, keep_graph
        try:
            yield self._records
        finally:
            self._records, self._keep_graph = previous, previous_keep

    @property
    def num_values(self) -> int:
        """V: values per element."""
        return self._num_values

    @abc.abstractmethod
    def element_logits(self, x: Tensor, cond: Tensor) -> Tensor:
        """Teacher-forced logits of every element.

        Args:
            x: int64 ``[M, E]`` flattened instance values.
            cond: ``[M, T, D]``.

        Returns:
            ``[M, E, V]``; row e depends on ``x[:, :e]`` only (or on nothing but ``cond``).
        """

    def observed_log_probs(self, x: Tensor, cond: Tensor) -> Tensor:
        """Teacher-forced log-probability of each element's observed value.

        The default normalises all V logits of :meth:`element_logits`; a leaf whose
        probability of one value is cheaper than all V of them (a discretised logistic over
        65,536 values) overrides it.

        Args:
            x: int64 ``[M, E]`` flattened instance values.
            cond: ``[M, T, D]``.

        Returns:
            ``[M, E]`` natural-log probabilities in the accumulation dtype of the logits.
        """
        logits = self.element_logits(x, cond)  # [M, E, V]
        acc = accumulation_dtype(logits.dtype)
        return observed_log_softmax(logits.to(acc), x)

    def score(self, x: Tensor, cond: Tensor, ctx: ScoreContext) -> Score:
        """Exact log-probabilities of ``x [M, *event]``; see :meth:`AbstractGenerator.score`."""
        flat = x.reshape(x.shape[0], self.num_elements)  # [M, E] (explicit E: M may be 0)
        cond, allowed = self.prepare(cond, ctx, flat.shape[0])
        if allowed is None:
            lp = self.observed_log_probs(flat, cond)  # [M, E]
        else:  # normalised over each element's allowed values only
            logits = self.element_logits(flat, cond)  # [M, E, V]
            logits = logits.to(accumulation_dtype(logits.dtype)).masked_fill(~allowed, -math.inf)
            lp = logits.log_softmax(-1).gather(-1, flat[..., None]).squeeze(-1)
        acc = lp.dtype
        if self._records is not None:
            self._records.append(lp if self._keep_graph else lp.detach())
        logp = lp.sum(-1)
        e = flat.shape[1]
        objective = -logp
        if ctx.mode == "train" and self.channel_weights is not None:
            w = torch.tensor(self.channel_weights, dtype=acc, device=lp.device)
            objective = -(lp * w).sum(-1) * (e / w.sum())
        dims = torch.full_like(logp, e)
        return Score(logp, dims, objective)

    def decode(
        self, x: Tensor, known: Tensor, cond: Tensor, ctx: DecodeContext
    ) -> tuple[Tensor, Tensor]:
        """Sample (or force) each unknown element; see :meth:`AbstractGenerator.decode`.

        On the CPU under autocast the leaf decodes in its weights' dtype with autocast off: it
        runs a few rows through tiny products per call, bound by per-operation overhead that
        autocast's casts only add to (bf16 autocast made FractalAR-64's leaf 1.3-1.6x slower).
        """
        device = cond.device.type
        if device == "cpu" and torch.is_autocast_enabled(device):
            dtype = next((p.dtype for p in self.parameters() if p.is_floating_point()), cond.dtype)
            with torch.autocast(device, enabled=False):
                return self._decode(x, known, cond.to(dtype), ctx)
        return self._decode(x, known, cond, ctx)

    def _decode(
        self, x: Tensor, known: Tensor, cond: Tensor, ctx: DecodeContext
    ) -> tuple[Tensor, Tensor]:
        rows = x.shape[0]
        half = rows // 2 if ctx.guided else rows
        cur = x.reshape(rows, self.num_elements).clone()  # [M, E]
        fixed = known.reshape(rows, self.num_elements)[:half]  # [M', E]
        opts = ctx.options
        logp = torch.zeros(half, dtype=accumulation_dtype(cond.dtype), device=cond.device)
        elements = range(cur.shape[1]) if self.autoregressive else [None]
        cond, allowed = self.prepare(cond, ctx, rows)
        allowed = None if allowed is None else allowed[:half]  # [M', E, V]
        canvas = ctx.canvas  # positions and decided values, when tracked
        positions = None if canvas is None else canvas.flat_positions(rows)  # [M, E]
        constraint = None if ctx.force or canvas is None else opts.constraint
        for e in elements:
            logits = self.element_logits(cur, cond)  # [M, E, V]
            if e is not None:
                logits = logits[:, e : e + 1]  # [M, 1, V]
            shaped = guided_logits(
                logits,
                guided=ctx.guided,
                scale=ctx.scale,
                temperature=opts.temperature,
                filter_threshold=opts.filter_threshold,
            )  # [M', e, V]
            cols = slice(e, e + 1) if e is not None else slice(None)
            mask = None if allowed is None else allowed[:, cols]
            if constraint is not None:
                mask = canvas.allowed(
                    constraint, positions[:half, cols], self.num_values, mask,
                    owner=f"{type(self).__name__} (level {ctx.depth})",
                )
            if mask is not None:
                shaped = shaped.masked_fill(~mask, -math.inf)
            logprobs = shaped.log_softmax(-1)
            given = cur[:half, cols]  # [M', e]
            if ctx.force:
                value, decided = given, torch.ones_like(given, dtype=torch.bool)
            else:
                check_probabilities(f"{type(self).__name__} (level {ctx.depth})", logprobs)
                drawn = sample_categorical(
                    logprobs.exp().flatten(0, 1), generator=ctx.generator
                ).view_as(given)
                keep = fixed[:, cols]
                value, decided = torch.where(keep, given, drawn), ~keep
            lp = logprobs.gather(-1, value[..., None]).squeeze(-1)  # [M', e]
            logp = logp + torch.where(decided, lp, torch.zeros_like(lp)).sum(-1).to(logp.dtype)
            cur[:, cols] = value.repeat(rows // half if half else 1, 1)  # no rows: no copies
            if canvas is not None:  # what later elements (and the constraint) see
                canvas.record(positions[:, cols], cur[:, cols])
        if ctx.guided:
            logp = logp.repeat(2)
        return cur.view_as(x), logp
