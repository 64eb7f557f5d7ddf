"""Training for a fixed wall-clock budget, to compare models at equal training time.

The examples (text, audio, molecules) each train a fractal and a flat baseline for the same
number of seconds and compare them; the pieces they share live here:

- :func:`train_for_budget`: AdamW for ``budget_s`` seconds (or ``max_steps`` steps), a linear
  warm-up in steps then a cosine in elapsed time / budget (:func:`budget_lr`), gradient clipping,
  batches drawn from a seeded random stream.
- :func:`synchronize` and :class:`Stopwatch`: wall-clock timings that include queued GPU work.
- :func:`device_description` and :func:`add_budget_arguments`: the command-line options and
  the device label the example scripts share.
"""

from __future__ import annotations

import argparse
import math
import time
from collections.abc import Callable, Sequence
from pathlib import Path

import torch
from torch import Tensor, nn

from fractalkit.cli import output_folder, positive_float, positive_int
from fractalkit.training.loop import Trainer
from fractalkit.validation import check_finite_number, check_integer

#: what ``next_batch`` may return: ``x``, or the positional arguments of ``model.loss``
#: (``(x,)`` or ``(x, y)``; ``y`` may be None).
Batch = Tensor | tuple[Tensor | None, ...]


def synchronize(device: torch.device | str) -> None:
    """Wait for the work queued on ``device``, so that wall-clock timings include it.

    A no-op on the CPU; ``torch.cuda.synchronize`` on a CUDA device, ``torch.mps.synchronize``
    on MPS.
    """
    device = torch.device(device)
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    elif device.type == "mps":
        torch.mps.synchronize()


class Stopwatch:
    """Wall-clock seconds of a ``with`` block on ``device``, queued work included.

    :func:`synchronize` runs on entry (work queued before the block is not counted) and on exit
    (work the block queued is).

    Args:
        device: where the timed work runs (a ``torch.device`` or a string such as ``"cuda"``).

    Attributes:
        seconds: the block's duration in seconds (float; NaN until the block has ended).

    Example:
        >>> with Stopwatch("cpu") as clock:   # doctest: +SKIP
        ...     x = model.sample(num_samples=4)
        >>> clock.seconds / 4                  # seconds per sample
    """

    def __init__(self, device: torch.device | str) -> None:
        self.device = torch.device(device)
        self.seconds = float("nan")
        self._start = 0.0

    def __enter__(self) -> Stopwatch:
        synchronize(self.device)
        self._start = time.perf_counter()
        return self

    def __exit__(self, *exc: object) -> None:
        synchronize(self.device)
        self.seconds = time.perf_counter() - self._start


def budget_lr(step: int, elapsed_s: float, *, peak_lr: float, budget_s: float,
              warmup_steps: int = 20) -> float:
    """The learning rate of a budgeted run: warm-up in steps times a cosine in elapsed time.

    ``peak_lr * min(1, (step + 1) / warmup_steps) * (1 + cos(pi * min(elapsed_s / budget_s, 1))) / 2``
    (no warm-up factor when ``warmup_steps`` is 0): the rate reaches 0 when the budget is spent,
    however many steps that took.

    Args:
        step: optimizer steps taken so far (0-based).
        elapsed_s: seconds of training so far.
        peak_lr: the learning rate after warm-up, at the start of the cosine.
        budget_s: the run's length in seconds (``math.inf``: the cosine stays at 1).
        warmup_steps: steps of linear warm-up.

    Returns:
        The learning rate for the next optimizer step (float).
    """
    warm = 1.0 if warmup_steps == 0 else min(1.0, (step + 1) / warmup_steps)
    return peak_lr * warm * 0.5 * (1 + math.cos(math.pi * min(elapsed_s / budget_s, 1.0)))


def _parameter_device(model: nn.Module) -> torch.device:
    param = next(model.parameters(), None)
    if param is None:
        raise ValueError("train_for_budget: the model has no parameters to train")
    return param.device


def summarise_runs(values: Sequence[float]) -> str:
    """A figure over seeds as ``"mean ± sample std (n)"`` (std ``nan`` for one run).

    Args:
        values: one figure per run (e.g. bits/dim of each seed).

    Returns:
        e.g. ``"2.784 ± 0.016 (3)"``.
    """
    runs = [float(v) for v in values]
    mean = sum(runs) / len(runs)
    std = math.sqrt(sum((v - mean) ** 2 for v in runs) / (len(runs) - 1)) if len(runs) > 1 else math.nan
    return f"{mean:.3f} ± {std:.3f} ({len(runs)})"


def train_for_budget(
    model: nn.Module,
    next_batch: Callable[[torch.Generator], Batch],
    *,
    budget_s: float,
    lr: float = 1e-3,
    max_steps: int | None = None,
    warmup_steps: int = 20,
    grad_clip: float | None = 1.0,
    weight_decay: float = 0.01,
    betas: tuple[float, float] = (0.9, 0.95),
    generator: torch.Generator,
    clock: Callable[[], float] = time.perf_counter,
) -> dict[str, float]:
    """Train ``model`` with AdamW for ``budget_s`` seconds of wall-clock (or ``max_steps`` steps).

    ``clock=time.process_time`` makes the budget CPU time of this process instead (all its
    threads), which other jobs on a shared machine do not eat into.

    A thin front to :class:`fractalkit.training.Trainer` (one parameter group, no checkpoints,
    no signal handling). Each step draws a batch with ``next_batch(generator)``, moves its
    tensors to the device of the model's parameters (their dtypes are left alone), calls
    ``model.loss(*batch, generator=generator)`` (a :meth:`fractalkit.Fractal.loss`-like method
    returning an object with ``total`` and ``nll`` scalars), back-propagates ``total``, clips the
    gradient norm and steps. The learning rate before each step is :func:`budget_lr`. The loop
    stops before the first step that would start after ``budget_s`` seconds or after
    ``max_steps`` steps, whichever comes first; the last step may end past the budget.

    Args:
        model: the model, already on its device; put in training mode here.
        next_batch: ``generator -> batch``: a tensor ``x`` (e.g. int64 ``[N, *event_shape]``)
            or a tuple of ``model.loss``'s positional arguments, such as ``(x, y)`` with ``y``
            int64 ``[N]`` labels. It should draw its randomness from the generator it is given,
            so that a run is reproducible from the generator's seed.
        budget_s: training seconds (> 0; ``math.inf`` with ``max_steps`` for a step count only).
        lr: the peak learning rate (> 0).
        max_steps: stop after this many optimizer steps as well (>= 0); None: no step limit.
        warmup_steps: steps of linear learning-rate warm-up (>= 0).
        grad_clip: the maximum global gradient norm (> 0); None: no clipping.
        weight_decay: AdamW's decoupled weight decay (>= 0).
        betas: AdamW's ``(beta1, beta2)``.
        generator: the random stream for batches and for the loss (masks, orders, label drop);
            a CPU ``torch.Generator``, as batches are usually drawn on the CPU.
        clock: seconds since an arbitrary origin; what ``budget_s`` and the cosine measure
            (``time.perf_counter``: wall-clock; ``time.process_time``: this process's CPU time).

    Returns:
        ``{"steps", "seconds", "s_per_step", "last_loss_nats"}``: optimizer steps taken,
        seconds of the loop on ``clock`` (queued GPU work included), seconds per step, and the
        last step's ``nll`` (mean nats per scored dimension; NaN when no step was taken).

    Raises:
        NonFiniteLoss: the loss, its NLL or the gradient norm became NaN or infinite (on the CPU
            before that step's update; on accelerators within :data:`CHECK_EVERY` steps).
        ValueError: for a non-positive ``budget_s`` or ``lr``, a negative ``max_steps``,
            ``warmup_steps`` or ``weight_decay``, a non-positive ``grad_clip``, a model without
            parameters, or a ``next_batch`` result that is neither a tensor nor a tuple.
    """
    if not budget_s > 0:  # math.inf is allowed: a step count only
        raise ValueError(f"train_for_budget: budget_s must be > 0, got {budget_s}")
    check_finite_number("train_for_budget", "lr", lr, positive=True)
    check_integer("train_for_budget", "warmup_steps", warmup_steps)
    if max_steps is not None:
        check_integer("train_for_budget", "max_steps", max_steps)
    if max_steps is not None and max_steps < 0:
        raise ValueError(f"train_for_budget: max_steps must be >= 0 or None, got {max_steps}")
    if warmup_steps < 0:
        raise ValueError(f"train_for_budget: warmup_steps must be >= 0, got {warmup_steps}")
    if grad_clip is not None and not grad_clip > 0:
        raise ValueError(f"train_for_budget: grad_clip must be > 0 or None, got {grad_clip}")
    if not weight_decay >= 0:
        raise ValueError(f"train_for_budget: weight_decay must be >= 0, got {weight_decay}")
    _parameter_device(model)  # a clear error for a model without parameters
    opt = torch.optim.AdamW(model.parameters(), lr=lr, betas=betas, weight_decay=weight_decay)
    trainer = Trainer(
        model, opt, generator=generator, steps=max_steps, budget_s=budget_s, clock=clock,
        schedule=lambda step, elapsed: budget_lr(
            step, elapsed, peak_lr=lr, budget_s=budget_s, warmup_steps=warmup_steps),
        grad_clip=grad_clip, advice="train_for_budget: lower lr or set grad_clip",
        handle_signals=False,  # no checkpoints here: Ctrl-C stops the script as before
    )
    result = trainer.fit(next_batch)
    return {
        "steps": result.steps,
        "seconds": result.seconds,
        "s_per_step": result.seconds / max(result.steps, 1),
        "last_loss_nats": result.last_nll,
    }


def device_description(device: torch.device | str, threads: int) -> str:
    """A label for results tables: the GPU's name on CUDA, else ``"<type> x <threads> threads"``."""
    device = torch.device(device)
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return f"{device.type} x {threads} threads"


def add_budget_arguments(
    parser: argparse.ArgumentParser,
    *,
    batch: int,
    out: Path,
    budget_s: float = 240.0,
    models: str = "fractal,flat",
    threads: int = 2,
    device_help: str = "torch device, e.g. cpu or cuda",
) -> argparse.ArgumentParser:
    """Add the options of an equal-budget comparison script to ``parser`` and return it.

    ``--budget-s`` (float, training seconds per model), ``--batch`` (int), ``--models``
    (comma-separated model kinds), ``--threads`` (int, for ``torch.set_num_threads``),
    ``--out`` (a results folder, ``Path``) and ``--device`` (default ``"cpu"``).

    Args:
        parser: the parser to extend.
        batch: the default batch size.
        out: the default results folder.
        budget_s, models, threads: the other defaults.
        device_help: the ``--device`` help text.

    Returns:
        ``parser``.
    """
    parser.add_argument("--budget-s", type=positive_float, default=budget_s, help="training seconds per model")
    parser.add_argument("--batch", type=positive_int, default=batch)
    parser.add_argument("--models", default=models)
    parser.add_argument("--threads", type=positive_int, default=threads)
    parser.add_argument("--out", type=output_folder, default=out, help="results folder (created)")
    parser.add_argument("--device", default="cpu", help=device_help)
    return parser
