"""Learning-rate schedule: linear warm-up, then cosine decay (the paper's recipe)."""

from __future__ import annotations

import math
from typing import Any

import torch

from fractalkit.validation import check_finite_number, check_integer


def warmup_cosine(step: int, *, peak_lr: float, warmup_steps: int, total_steps: int, min_lr: float = 0.0) -> float:
    """The learning rate at optimizer step ``step`` (0-based).

    Linear from ``peak_lr / warmup_steps`` at step 0 to ``peak_lr`` at ``warmup_steps - 1``,
    then ``min_lr + (peak_lr - min_lr) * (1 + cos(pi * t)) / 2`` with t going from 0 to 1 over
    the remaining steps (and ``min_lr`` beyond ``total_steps``).

    Args:
        step: optimizer steps taken so far.
        peak_lr: the learning rate after warm-up.
        warmup_steps: steps of linear warm-up (0: none).
        total_steps: steps in the whole run.
        min_lr: the floor of the cosine.

    Returns:
        The learning rate (float).
    """
    if step < warmup_steps:
        return peak_lr * (step + 1) / warmup_steps
    span = max(1, total_steps - warmup_steps)
    t = min(1.0, (step - warmup_steps) / span)
    return min_lr + (peak_lr - min_lr) * 0.5 * (1.0 + math.cos(math.pi * t))


class WarmupCosine:
    """Sets an optimizer's learning rate from :func:`warmup_cosine` at every :meth:`step` (or,
    as a :class:`fractalkit.training.Trainer` schedule, when called with the step).

    Args:
        optimizer: a ``torch.optim.Optimizer``; every parameter group gets the same lr.
        peak_lr: lr after warm-up (the paper: ``5e-5 * batch / 256``).
        warmup_steps: optimizer steps of linear warm-up.
        total_steps: optimizer steps in the whole run.
        min_lr: cosine floor.

    Raises:
        ValueError: negative or inconsistent step counts, or a non-positive ``peak_lr``.
    """

    def __init__(
        self,
        optimizer: torch.optim.Optimizer,
        *,
        peak_lr: float,
        warmup_steps: int,
        total_steps: int,
        min_lr: float = 0.0,
    ) -> None:
        check_finite_number("WarmupCosine", "peak_lr", peak_lr, positive=True)
        check_finite_number("WarmupCosine", "min_lr", min_lr)
        check_integer("WarmupCosine", "warmup_steps", warmup_steps)
        check_integer("WarmupCosine", "total_steps", total_steps)
        if warmup_steps < 0 or total_steps < 1:
            raise ValueError(
                f"WarmupCosine: need warmup_steps >= 0 and total_steps >= 1, got {warmup_steps} "
                f"and {total_steps}"
            )
        self.optimizer = optimizer
        self.peak_lr = float(peak_lr)
        self.warmup_steps = int(warmup_steps)
        self.total_steps = int(total_steps)
        self.min_lr = float(min_lr)
        self.last_step = 0
        self._apply()

    def lr(self) -> float:
        """The learning rate in force for the next optimizer step."""
        return warmup_cosine(
            self.last_step,
            peak_lr=self.peak_lr,
            warmup_steps=self.warmup_steps,
            total_steps=self.total_steps,
            min_lr=self.min_lr,
        )

    def _apply(self) -> None:
        lr = self.lr()
        for group in self.optimizer.param_groups:
            group["lr"] = lr

    def __call__(self, step: int, elapsed_s: float = 0.0) -> float:
        """The learning rate for optimizer step ``step`` (0-based; ``elapsed_s`` is ignored), as a
        :class:`fractalkit.training.Trainer` schedule; the counter moves to ``step``.

        Returns:
            The learning rate (float); also set on the optimizer's groups.
        """
        self.last_step = int(step)
        self._apply()
        return self.lr()

    def step(self) -> None:
        """Advance by one optimizer step and set the next learning rate."""
        self.last_step += 1
        self._apply()

    def state_dict(self) -> dict[str, Any]:
        """Everything needed to continue: the settings and the step counter."""
        return {
            "peak_lr": self.peak_lr,
            "warmup_steps": self.warmup_steps,
            "total_steps": self.total_steps,
            "min_lr": self.min_lr,
            "last_step": self.last_step,
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore :meth:`state_dict` output and set the optimizer's lr accordingly."""
        self.peak_lr = float(state["peak_lr"])
        self.warmup_steps = int(state["warmup_steps"])
        self.total_steps = int(state["total_steps"])
        self.min_lr = float(state["min_lr"])
        self.last_step = int(state["last_step"])
        self._apply()
