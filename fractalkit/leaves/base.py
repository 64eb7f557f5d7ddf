"""The leaf contract: p(element values | condition) over an instance's few elements.

Shape letters: M instances, T condition tokens, D condition width, E elements, V values.
"""

from __future__ import annotations

import abc
import contextlib
import math
from collections.abc import Iterator
from typing import TYPE_CHECKING, ClassVar

import torch
from torch import Tensor

from fractalkit.protocol import AbstractGenerator, Score, accumulation_dtype
from fractalkit.protocol.contexts import DecodeContext, ScoreContext
from fractalkit.sampling.guidance import guided_logits
from fractalkit.sampling.rng import sample_categorical
from fractalkit.validation import check_integer, check_probabilities

if TYPE_CHECKING:
    from fractalkit.leaves.slots import SlotKinds


class Leaf(AbstractGenerator):
    """A generator with no child: categorical distributions over its E elements.

    Subclasses implement :meth:`element_logits`; element e's logits may depend on the condition
    and, when ``autoregressive`` is True, on elements ``< e`` only. Scoring, sampling, guidance and
    completion are shared here.

    Args:
        event_shape: shape of one instance (E = its number of elements).
        cond_dim: D of the incoming condition.
        cond_tokens: T of the incoming condition (the leaf reads token 0, the "middle" one).
        num_values: V.
        channel_weights: per-element weights of the *training* objective (e.g. the paper's red
            weight 5: ``(5, 1, 1)``); likelihoods never use them.
    """

    autoregressive: ClassVar[bool] = False

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
        #: per-element slot kinds and their allowed values (opt-in: :meth:`use_slot_kinds`)
        self.slot_kinds: SlotKinds | None = None

    def use_slot_kinds(self, slot_kinds: SlotKinds) -> None:
        """Opt in to slot kinds: each element of the top-level instance has a kind with a set
        of allowed values; the leaf's distribution is normalised over the allowed values only
        (a kind with one allowed value, a structural zero, has probability 1) and a learned
        embedding of the kinds of the instance's elements is added to the condition.

        Call it from a subclass's ``__init__`` (after ``super().__init__``); the model must then
        be scored and sampled through :class:`fractalkit.Fractal`, which tracks each element's
        position (see :attr:`fractalkit.sampling.options.ScoreContext.positions`).

        Args:
            slot_kinds: the kinds (one per element of the *top-level* event, flattened) and
                each kind's allowed values.

        Raises:
            ValueError: if an allowed value is outside ``[0, V)``.
        """
        slot_kinds.check(self.num_values)
        self.slot_kinds = slot_kinds
        # Not persistent: derived from the config.
        self.register_buffer("slot_kind_of", torch.tensor(slot_kinds.element_kinds, dtype=torch.long),
                             persistent=False)  # [D]
        self.register_buffer("slot_allowed", slot_kinds.allowed_mask(self.num_values),
                             persistent=False)  # [K, V]
        e, k = self.num_elements, slot_kinds.num_kinds
        self.slot_embed = torch.nn.Embedding(e * k, self.cond_dim)  # a vector per (element, kind)
        torch.nn.init.normal_(self.slot_embed.weight, std=0.02)
        self.register_buffer("slot_offset", torch.arange(e) * k, persistent=False)

    def _slot_kinds_of(self, positions: Tensor | None, rows: int) -> Tensor:
        """int64 ``[M, E]`` kinds of the elements at ``positions`` (flat canvas indices)."""
        if positions is None:
            raise ValueError(
                f"{type(self).__name__}: this leaf has slot kinds and needs each element's "
                "position; score and sample it through fractalkit.Fractal (log_prob, loss, "
                "sample), which tracks them"
            )
        d = self.slot_kind_of.shape[0]
        return self.slot_kind_of[positions.reshape(rows, self.num_elements) % d]

    def _with_slot_kinds(self, cond: Tensor, kinds: Tensor) -> Tensor:
        """``cond [M, T, D]`` plus the embedding of the elements' kinds ``[M, E]`` (every token)."""
        emb = self.slot_embed(kinds + self.slot_offset).sum(1)  # [M, D]
        return cond + emb[:, None].to(cond.dtype)

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
        return logits.to(acc).log_softmax(-1).gather(-1, x[..., None]).squeeze(-1)

    def score(self, x: Tensor, cond: Tensor, ctx: ScoreContext) -> Score:
        """Exact log-probabilities of ``x [M, *event]``; see :meth:`AbstractGenerator.score`."""
        flat = x.reshape(x.shape[0], self.num_elements)  # [M, E] (explicit E: M may be 0)
        if self.slot_kinds is None:
            lp = self.observed_log_probs(flat, cond)  # [M, E]
        else:  # normalised over each element's allowed values only
            kinds = self._slot_kinds_of(ctx.positions, flat.shape[0])  # [M, E]
            logits = self.element_logits(flat, self._with_slot_kinds(cond, kinds))  # [M, E, V]
            logits = logits.to(accumulation_dtype(logits.dtype))
            logits = logits.masked_fill(~self.slot_allowed[kinds], -math.inf)
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
        allowed = None
        if self.slot_kinds is not None:
            kinds = self._slot_kinds_of(ctx.positions, rows)  # [R, E]
            cond = self._with_slot_kinds(cond, kinds)
            allowed = self.slot_allowed[kinds[:half]]  # [M', E, V]
        positions = None if ctx.positions is None else ctx.positions.reshape(rows, self.num_elements)
        constraint = None if ctx.force or positions is None else opts.constraint
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
                mask = self._constrain(constraint, ctx, positions[:half, cols], mask)
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
            if ctx.canvas is not None and positions is not None:  # what later elements see
                ctx.canvas.view(-1)[positions[:, cols].reshape(-1)] = cur[:, cols].reshape(-1)
                ctx.canvas_decided.view(-1)[positions[:, cols].reshape(-1)] = True
        if ctx.guided:
            logp = logp.repeat(2)
        return cur.view_as(x), logp

    def _constrain(self, constraint, ctx: DecodeContext, positions: Tensor, mask: Tensor | None) -> Tensor:
        """The allowed values ``[M', e, V]`` of ``options.constraint`` (and ``mask``), checked."""
        d = ctx.canvas.shape[1]
        rows = positions[:, 0] // d  # [M']: each leaf row is one canvas row
        allowed = constraint(ctx.canvas[rows], ctx.canvas_decided[rows], positions % d)
        want = (*positions.shape, self.num_values)
        if not isinstance(allowed, Tensor) or allowed.dtype != torch.bool or tuple(allowed.shape) != want:
            raise ValueError(
                f"SampleOptions.constraint must return a bool tensor of shape {list(want)} "
                f"(rows, elements, values), got {getattr(allowed, 'dtype', type(allowed))} "
                f"{list(getattr(allowed, 'shape', []))}"
            )
        if mask is not None:
            allowed = allowed & mask
        if positions.shape[0] and not bool(allowed.any(-1).all()):
            raise ValueError(
                f"{type(self).__name__} (level {ctx.depth}): the sampling constraint (with the "
                "slot kinds) allows no value for some element; it must allow at least one"
            )
        return allowed
