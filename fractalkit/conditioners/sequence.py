"""Variable-length sequences (tokens or feature frames) as a condition: ``Sequence(...)``.

Shape letters: N instances, L sequence length (padded), F features per frame, T the
condition tokens the top level reads, D its width.

Design: pooled summary tokens. A small transformer encoder reads the sequence (padding masked
out of attention), then T learned queries attend to it (learned-query pooling, as in the
Perceiver and Q-Former) and become the T condition tokens. Why not the alternatives:

- *prefix tokens* (the encoded sequence itself as the condition) would make T vary with the
  input, but every level reads a fixed ``[N, T, D]`` condition, set by its config;
- *cross-attention* in every block would change the levels' blocks and their parameter names
  (old files must load), and cost attention over L at every decoding step of every level.

Pooling keeps the level contract unchanged, costs one encoder pass per instance (not per
step) and lets the condition carry T different summaries.
"""

from __future__ import annotations

import dataclasses
from typing import Any, NamedTuple

import torch
from torch import Tensor, nn

from fractalkit.conditioners.base import Conditioner, ConditionerConfig
from fractalkit.config import BuildContext
from fractalkit.registry import register
from fractalkit.validation import check_count, check_probability


class Padded(NamedTuple):
    """A batch of sequences already padded: ``values [N, L]`` (int tokens) or ``[N, L, F]``
    (float frames), and ``valid`` bool ``[N, L]`` (True for real entries, False for padding)."""

    values: Tensor
    valid: Tensor


class SequenceConditioner(Conditioner):
    """The module :class:`Sequence` builds (see the module docstring for the design).

    Args:
        width: D (must be divisible by ``config.heads``).
        tokens: T.
        config: the :class:`Sequence` config.
    """

    def __init__(self, width: int, tokens: int, config: Sequence) -> None:
        super().__init__(width, tokens, drop=config.drop)
        if width % config.heads:
            raise ValueError(f"Sequence: the top level's width {width} is not divisible by heads={config.heads}")
        self.config = config
        self.null_embedding = nn.Parameter(torch.randn(tokens, width) * 0.02)
        if config.vocab:
            self.inputs: nn.Module = nn.Embedding(config.vocab, width)
        else:
            self.inputs = nn.Linear(config.features, width)
        self.positions = nn.Parameter(torch.randn(config.max_len, width) * 0.02)
        self.encoder = nn.ModuleList(
            nn.TransformerEncoderLayer(
                width, config.heads, dim_feedforward=2 * width, dropout=0.0, batch_first=True,
                norm_first=True,
            )
            for _ in range(config.depth)
        )
        self.queries = nn.Parameter(torch.randn(tokens, width) * 0.02)
        self.pool = nn.MultiheadAttention(width, config.heads, batch_first=True)
        self.norm = nn.LayerNorm(width)

    def padded(self, c: Any) -> Padded:
        """The condition as :class:`Padded` (a list of sequences is padded with zeros)."""
        if isinstance(c, Padded):
            return c
        lengths = [int(s.shape[0]) for s in c]
        values = torch.nn.utils.rnn.pad_sequence(list(c), batch_first=True)
        valid = torch.arange(values.shape[1])[None] < torch.tensor(lengths)[:, None]
        return Padded(values, valid.to(values.device))

    def check(self, c: Any, n: int | None) -> int:
        """``c``: a list of N tensors (``[L_i]`` int tokens or ``[L_i, F]`` float frames), or
        :class:`Padded`; every sequence holds 1 to ``max_len`` entries."""
        cfg = self.config
        kind = f"int64 tokens [L] in [0, {cfg.vocab})" if cfg.vocab else f"float frames [L, {cfg.features}]"
        if isinstance(c, Padded):
            values, valid = c
            if not (isinstance(values, Tensor) and isinstance(valid, Tensor) and valid.dtype == torch.bool
                    and valid.dim() == 2 and tuple(values.shape[:2]) == tuple(valid.shape)):
                raise ValueError("Sequence: Padded(values, valid) needs values [N, L(, F)] and bool valid [N, L]")
            rows, lengths = list(values), valid.sum(1).tolist()
        elif isinstance(c, list | tuple) and all(isinstance(s, Tensor) for s in c):
            rows, lengths = list(c), [int(s.shape[0]) if s.dim() else -1 for s in c]
        else:
            raise TypeError(f"Sequence: the condition must be a list of N tensors ({kind}) or Padded, got {type(c).__name__}")
        if n is not None and len(rows) != n:
            raise ValueError(f"Sequence: the condition holds {len(rows)} sequences but {n} instances were given")
        for i, (s, length) in enumerate(zip(rows, lengths, strict=True)):
            want_dim = 1 if cfg.vocab else 2
            if s.dim() != want_dim or (not cfg.vocab and s.shape[-1] != cfg.features):
                raise ValueError(f"Sequence: sequence {i} has shape {list(s.shape)}; expected {kind}")
            if cfg.vocab and (s.dtype.is_floating_point or s.dtype == torch.bool):
                raise TypeError(f"Sequence: sequence {i} must hold integer tokens, got {s.dtype}")
            if not cfg.vocab and not s.dtype.is_floating_point:
                raise TypeError(f"Sequence: sequence {i} must hold float frames, got {s.dtype}")
            if not 1 <= length <= cfg.max_len:
                raise ValueError(
                    f"Sequence: sequence {i} has {length} entries; this conditioner takes 1 to "
                    f"max_len={cfg.max_len} (crop it, or build the model with a larger max_len)"
                )
            real = s if isinstance(c, Padded) is False else s[c.valid[i]]
            if cfg.vocab and real.numel() and (int(real.min()) < 0 or int(real.max()) >= cfg.vocab):
                raise ValueError(f"Sequence: sequence {i} holds tokens outside [0, {cfg.vocab})")
            if not cfg.vocab and not bool(torch.isfinite(real).all()):
                raise ValueError(f"Sequence: sequence {i} holds non-finite values")
        return len(rows)

    def embed(self, c: Any, *, drop: bool, generator: torch.Generator | None) -> Tensor:
        """``[N, T, D]`` summary tokens."""
        values, valid = self.padded(c)
        w = self.positions
        values, valid = values.to(w.device), valid.to(w.device)
        if self.config.vocab:
            h = self.inputs(values.long().masked_fill(~valid, 0))
        else:
            h = self.inputs(values.to(w.dtype).masked_fill(~valid[..., None], 0))
        h = h + w[: h.shape[1]]
        for layer in self.encoder:
            h = layer(h, src_key_padding_mask=~valid)
        q = self.queries[None].expand(h.shape[0], -1, -1)
        out, _ = self.pool(q, h, h, key_padding_mask=~valid, need_weights=False)
        return self.norm(out + q)


@register("sequence")
@dataclasses.dataclass(frozen=True)
class Sequence(ConditionerConfig):
    """Condition on a variable-length sequence of tokens (``vocab > 0``) or frames (``features > 0``).

    ``c`` is a list of N tensors (``[L_i]`` int64 tokens or ``[L_i, F]`` float frames) or a
    :class:`Padded` batch; it becomes T learned-query summary tokens (module docstring).

    Attributes:
        max_len: longest sequence accepted (L <= max_len; positions are learned up to it).
        vocab: token vocabulary size (0 for frames).
        features: F, floats per frame (0 for tokens).
        depth: encoder layers.
        heads: attention heads (must divide the top level's width).
        drop: whole-condition dropout probability in training mode.
    """

    max_len: int
    vocab: int = 0
    features: int = 0
    depth: int = 1
    heads: int = 2
    drop: float = 0.1

    def __post_init__(self) -> None:
        object.__setattr__(self, "max_len", check_count("Sequence", "max_len", self.max_len))
        for name, minimum in (("vocab", 0), ("features", 0), ("depth", 0), ("heads", 1)):
            object.__setattr__(self, name, check_count("Sequence", name, getattr(self, name), minimum))
        if (self.vocab > 0) == (self.features > 0):
            raise ValueError(
                f"Sequence: give exactly one of vocab (tokens) or features (frames) > 0, got "
                f"vocab={self.vocab}, features={self.features}"
            )
        check_probability("Sequence", "drop", self.drop)

    def build(self, ctx: BuildContext) -> SequenceConditioner:
        """A :class:`SequenceConditioner` for the top condition ``[N, ctx.cond_tokens, ctx.cond_dim]``."""
        return SequenceConditioner(ctx.cond_dim, ctx.cond_tokens, self)
