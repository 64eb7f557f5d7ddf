"""Exponential moving average of a model's parameters."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import torch
from torch import Tensor, nn


class EMA:
    """A float32 shadow copy of a model's parameters, ``s <- d * s + (1 - d) * p`` per update.

    Buffers are not averaged (fractalkit models hold only derived, non-persistent buffers).

    Args:
        model: the model to track (unwrap DDP first: pass ``ddp.module``).
        decay: d in ``[0, 1)``.

    Example:
        >>> ema = EMA(model, decay=0.999)   # doctest: +SKIP
        >>> ema.update(model)               # after every optimizer step
        >>> with ema.applied(model):        # evaluate or save with the averaged weights
        ...     model.save("ema.safetensors")
    """

    def __init__(self, model: nn.Module, decay: float = 0.9999) -> None:
        if not 0 <= decay < 1:
            raise ValueError(f"EMA: decay must lie in [0, 1), got {decay}")
        self.decay = float(decay)
        self.shadow: dict[str, Tensor] = {
            name: p.detach().to(torch.float32).clone() for name, p in model.named_parameters()
        }

    @torch.no_grad()
    def update(self, model: nn.Module) -> None:
        """Blend the model's current parameters into the average."""
        for name, p in model.named_parameters():
            self.shadow[name].lerp_(p.detach().to(torch.float32), 1.0 - self.decay)

    @torch.no_grad()
    def copy_to(self, model: nn.Module) -> None:
        """Overwrite the model's parameters with the average (cast to each parameter's dtype)."""
        for name, p in model.named_parameters():
            p.copy_(self.shadow[name].to(p.dtype))

    @contextlib.contextmanager
    def applied(self, model: nn.Module) -> Iterator[nn.Module]:
        """Temporarily load the average into ``model``; the live weights come back on exit."""
        saved = {name: p.detach().clone() for name, p in model.named_parameters()}
        self.copy_to(model)
        try:
            yield model
        finally:
            with torch.no_grad():
                for name, p in model.named_parameters():
                    p.copy_(saved[name])

    def state_dict(self) -> dict[str, Tensor]:
        """The shadow tensors by parameter name (float32)."""
        return dict(self.shadow)

    def load_state_dict(self, state: dict[str, Tensor]) -> None:
        """Restore :meth:`state_dict` output.

        Raises:
            ValueError: the names differ from the tracked model's.
        """
        if set(state) != set(self.shadow):
            missing = sorted(set(self.shadow) - set(state))[:5]
            extra = sorted(set(state) - set(self.shadow))[:5]
            raise ValueError(f"EMA.load_state_dict: names differ: missing {missing}, unexpected {extra}")
        for name, t in state.items():
            self.shadow[name].copy_(t.to(torch.float32))
