"""Optimizer steps taken inside the backward pass, so the full set of gradients never exists.

A training step normally holds every parameter's gradient until ``optimizer.step()``: one more
copy of the model (1.7 GB for FractalMAR-64 in float32, beside 1.7 GB of weights and 3.5 GB of
AdamW moments). :class:`OptimizerInBackward` gives each parameter its own optimizer, steps it
from a post-accumulate-grad hook as soon as that parameter's gradient is complete, and frees the
gradient at once. Element-wise optimizers (SGD, Adam, AdamW) then compute exactly what one
optimizer over all parameters would.

What it rules out: global gradient-norm clipping and gradient accumulation over several
backward passes (each backward pass steps), and any optimizer whose update couples parameters.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any

import torch
from torch import nn


class OptimizerInBackward:
    """One optimizer per parameter, stepped during ``loss.backward()``; gradients freed at once.

    Args:
        params: the parameters to train (those without ``requires_grad`` are skipped).
        make: builds the optimizer of one parameter from a one-element list, e.g.
            ``lambda ps: torch.optim.AdamW(ps, lr=1e-4, fused=True)``.

    Example:
        >>> model = torch.nn.Linear(4, 2)
        >>> opt = OptimizerInBackward(model.parameters(), lambda ps: torch.optim.SGD(ps, lr=0.1))
        >>> model(torch.ones(3, 4)).sum().backward()  # parameters updated here
        >>> model.weight.grad is None
        True
    """

    def __init__(
        self,
        params: Iterable[nn.Parameter],
        make: Callable[[list[nn.Parameter]], torch.optim.Optimizer],
    ) -> None:
        self.params = [p for p in params if p.requires_grad]
        if not self.params:
            raise ValueError("OptimizerInBackward: no parameter requires a gradient")
        self.optimizers = [make([p]) for p in self.params]
        #: False: the hooks leave gradients alone (e.g. for an evaluation-only backward pass)
        self.enabled = True
        self._handles = [
            p.register_post_accumulate_grad_hook(self._hook(opt)) for p, opt in zip(
                self.params, self.optimizers, strict=True)
        ]

    def _hook(self, optimizer: torch.optim.Optimizer) -> Callable[[torch.Tensor], None]:
        def step(param: torch.Tensor) -> None:
            if self.enabled:
                optimizer.step()
                optimizer.zero_grad(set_to_none=True)

        return step

    def set_lr(self, lr: float) -> None:
        """Set every parameter's learning rate (what a schedule does once per step)."""
        for opt in self.optimizers:
            for group in opt.param_groups:
                group["lr"] = lr

    def state_dict(self) -> dict[str, Any]:
        """The optimizers' states, in parameter order (for checkpoints)."""
        return {"optimizers": [opt.state_dict() for opt in self.optimizers]}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore :meth:`state_dict` output (same parameters, same order)."""
        states = state.get("optimizers")
        if not isinstance(states, list) or len(states) != len(self.optimizers):
            got = len(states) if isinstance(states, list) else type(states).__name__
            raise ValueError(
                f"OptimizerInBackward.load_state_dict: expected {len(self.optimizers)} optimizer "
                f"states (one per parameter), got {got}"
            )
        for opt, s in zip(self.optimizers, states, strict=True):
            opt.load_state_dict(s)

    def remove(self) -> None:
        """Detach the hooks: backward passes no longer step (gradients accumulate again)."""
        for h in self._handles:
            h.remove()
        self._handles = []
