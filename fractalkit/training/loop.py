"""The training loop every fractalkit example uses: :class:`Trainer`.

What it owns, so that a training script only builds its model, its optimizer and its batches:

- **steps or seconds**: stop after ``steps`` optimizer steps, after ``budget_s`` seconds of a
  clock (wall-clock, or ``time.process_time`` for CPU time), or both, whichever comes first;
- **a learning-rate schedule**: any ``(step, elapsed_s) -> lr`` callable (e.g.
  :class:`~fractalkit.training.WarmupCosine`, :func:`~fractalkit.training.budget_lr`), set on
  every parameter group before each step;
- **gradient clipping**, **bf16 autocast**, an **EMA** of the weights;
- **non-finite stop**: a NaN/inf loss, NLL or gradient norm stops the run before that step's
  update is applied (or, opted in, skips the batch), naming the step and the term;
- **checkpoints** every N steps, at the end and on **Ctrl-C/SIGTERM** (the step in progress is
  finished, saved, and the run returns with ``result["interrupted"]``), atomic and verified
  (:func:`~fractalkit.training.save_checkpoint`); :meth:`Trainer.restore` continues one exactly:
  optimizer, schedule, EMA, step and every random stream (the batch generator and torch's own,
  which dropout uses), so a resumed CPU run gives the same losses and weights as an
  uninterrupted one;
- **several processes** under ``torchrun`` (NCCL on GPUs, gloo on CPUs): the loss is wrapped in
  ``DistributedDataParallel``; which parameters a step may leave unused is found by one probe
  step (no knowledge of level classes), and stop decisions, non-finite flags and logged losses
  are agreed between ranks;
- **progress and logs**: a tqdm bar and ``log.jsonl`` (one JSON object per logged step), with
  an optional held-out evaluation every N steps.

Why our own loop and not PyTorch Lightning or Hugging Face Accelerate? Both are well kept and
would give multi-node, mixed precision and loggers for free. We chose a small loop of our own
because (1) exact resumption is a promise of this toolkit, and it depends on saving *our* random
streams (the generator that draws masks, orders and label dropout, passed to
:meth:`fractalkit.Fractal.loss`) beside the optimizer: Lightning checkpoints its own state and the
global RNGs, and Accelerate's ``save_state`` does not know a user's ``torch.Generator`` either, so
both would need the same custom code around them; (2) our checkpoints are the library's
verified, crash-consistent format that ``Fractal.load`` and the Hub read, which both libraries
would replace with theirs; (3) neither is installed here and either would become a dependency of
every user for about 400 lines of loop; (4) the examples' figures must stay reproducible bit for
bit, which a loop whose order of operations we own guarantees. A user who prefers Lightning can
still train a :class:`fractalkit.Fractal` with it: ``model.loss(x, y, generator=g).total`` is an
ordinary differentiable scalar, and :func:`parameter_groups` gives the optimizer groups.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
from torch import Tensor, nn

from fractalkit.filelock import writer_lock
from fractalkit.hostmem import keep_freed_host_memory
from fractalkit.training.checkpoint import Checkpoint, save_checkpoint
from fractalkit.training.distributed import is_distributed, parameter_digest
from fractalkit.training.ema import EMA
from fractalkit.training.nonfinite import NonFiniteLoss, describe, nonfinite_terms
from fractalkit.training.signals import StopRequests
from fractalkit.validation import check_integer

__all__ = ["Batch", "LossModule", "TrainResult", "Trainer", "default_loss"]

#: one batch: a tensor ``x`` or a tuple of the loss's positional arguments (``(x, y)``; None allowed)
Batch = Tensor | tuple[Any, ...]

#: on accelerators, steps between two reads of the non-finite flag (one device sync each)
CHECK_EVERY = 16


def default_loss(model: nn.Module, batch: tuple[Any, ...], generator: torch.Generator) -> Any:
    """``model.loss(*batch, generator=generator)``: an object with ``total`` and ``nll`` scalars
    (:class:`fractalkit.TrainingLoss` for a :class:`fractalkit.Fractal`)."""
    return model.loss(*batch, generator=generator)


class LossModule(nn.Module):
    """The loss as ``forward``, so that DistributedDataParallel can average its gradients.

    Args:
        model: the trained module.
        loss: ``(model, batch tuple, generator) -> object with .total and .nll`` (or a
            ``(total, nll)`` pair).
    """

    def __init__(self, model: nn.Module, loss: Callable[..., Any]) -> None:
        super().__init__()
        self.model = model
        self.loss = loss

    def forward(self, batch: tuple[Any, ...], generator: torch.Generator) -> tuple[Tensor, Tensor]:
        """Returns ``(total, nll)`` scalars: what is back-propagated and the NLL that is logged."""
        out = self.loss(self.model, batch, generator)
        if isinstance(out, tuple):
            return out[0], out[1]
        return out.total, out.nll


@dataclass
class TrainResult:
    """What :meth:`Trainer.fit` returns.

    Attributes:
        steps: optimizer steps counted so far (skipped non-finite batches included), resumed
            steps included.
        steps_this_run: steps taken by this call.
        seconds: seconds of the loop on the trainer's clock (queued GPU work included).
        last_nll: the last step's NLL (nats per scored dimension, averaged over ranks when
            logged; NaN when no step was taken).
        last_loss: the last step's total loss (NaN when no step was taken).
        stopped_by: ``"steps"``, ``"budget"``, ``"data"`` (the batches ran out) or the signal's
            name (``"SIGINT"``/``"SIGTERM"``).
        interrupted: the signal's name when a signal stopped the run, else None.
        skipped_nonfinite: batches skipped for a non-finite loss or gradient.
        last_log: the last ``log.jsonl`` record (empty when nothing was logged).
        saved_step: the step of the last checkpoint written or restored (None: none).
        parameter_digests: one weight digest per rank (several processes only).
    """

    steps: int
    steps_this_run: int
    seconds: float
    last_nll: float
    last_loss: float
    stopped_by: str
    interrupted: str | None = None
    skipped_nonfinite: int = 0
    last_log: dict[str, Any] = field(default_factory=dict)
    saved_step: int | None = None
    parameter_digests: list[str] | None = None


class Trainer:
    """Trains a model with a given optimizer until a step count, a time budget or a signal.

    Shape letters: N examples per batch (per process under torchrun).

    Args:
        model: the module to train, already on its device (a :class:`fractalkit.Fractal` when
            checkpoints are written). Put in training mode by :meth:`fit`.
        optimizer: e.g. ``torch.optim.AdamW(parameter_groups(model, 0.05), lr=1e-3)``.
        generator: the random stream of batches and of the loss (masks, orders, label dropout);
            its state is checkpointed per process.
        steps: stop after this many optimizer steps in all (resumed steps count); None: no limit.
        budget_s: stop before the first step that would start ``budget_s`` seconds (of ``clock``)
            after :meth:`fit` began; None or ``math.inf``: no time limit. One of ``steps`` and
            ``budget_s`` must be finite.
        clock: seconds since an arbitrary origin (``time.perf_counter``: wall-clock;
            ``time.process_time``: this process's CPU time). Called once when the loop starts,
            once before each step and once at the end.
        schedule: ``(step, elapsed_s) -> lr`` set on every parameter group before each step
            (``step`` 0-based); None: the optimizer's rates are left alone. Its ``state_dict`` /
            ``load_state_dict``, if it has them, go into checkpoints.
        grad_clip: the largest global gradient norm (> 0); None: no clipping (the norm is still
            computed and checked for NaN/inf).
        loss: ``(model, batch tuple, generator) -> object with .total and .nll``;
            default :func:`default_loss` (``model.loss(*batch, generator=generator)``).
        ema_decay: keep an :class:`~fractalkit.training.EMA` of the weights with this decay
            (saved beside them as ``ema.safetensors``); None: no EMA.
        bf16: run the loss under bf16 autocast on the model's device.
        out: the run folder: ``checkpoint/`` and ``log.jsonl`` go there; None: no files.
        save_every: checkpoint every this many steps (needs ``out``); a checkpoint is also
            written when the loop stops for any reason other than an error. None: only then.
        extra: JSON-able data stored in every checkpoint's manifest (arguments, preset, ...).
        log_every: write a ``log.jsonl`` record every this many steps and at the last step;
            None: records only at evaluations.
        on_log: ``record -> None``, may add entries to a log record before it is written (e.g.
            the epoch, images per second).
        evaluate: ``model -> dict`` of held-out figures, run every ``eval_every`` steps and at
            the last step (in eval mode, without gradients), merged into that step's record.
        eval_every: steps between evaluations (0: only at the last step; needs ``evaluate``).
        progress: show a tqdm progress bar (on the first process only).
        skip_nonfinite: skip up to this many non-finite batches in a row (their update is not
            applied; the step still counts, so the data order and schedule stay the run's) before
            stopping anyway; 0: stop at the first.
        check_every: steps between two reads of the non-finite flag (each read syncs the device);
            default 1 on the CPU, :data:`CHECK_EVERY` on accelerators. Must be 1 with
            ``skip_nonfinite``.
        advice: appended to the :class:`NonFiniteLoss` message (what the user can change).
        find_unused_parameters: for DistributedDataParallel; None: decided by one probe step
            (True when it leaves a parameter without a gradient).
        handle_signals: catch SIGINT/SIGTERM during :meth:`fit` (finish the step, save, return).
        keep_host_memory: for a model on the CPU, let :meth:`fit` call
            :func:`fractalkit.hostmem.keep_freed_host_memory` (glibc keeps freed tensor memory
            for the next step instead of page-faulting it back; process-wide; the process keeps
            its peak footprint). False: leave the C library's settings alone.

    Raises:
        ValueError: inconsistent settings (no stopping rule, ``save_every`` without ``out``,
            negative counts, a model without parameters).

    Example:
        >>> opt = torch.optim.AdamW(parameter_groups(model, 0.05), lr=1e-3)   # doctest: +SKIP
        >>> trainer = Trainer(model, opt, generator=torch.Generator().manual_seed(0), steps=1000,
        ...                   schedule=WarmupCosine(opt, peak_lr=1e-3, warmup_steps=50, total_steps=1000),
        ...                   out="runs/mine", save_every=200, log_every=10, progress=True)
        >>> result = trainer.fit(lambda g: x[torch.randint(0, len(x), (64,), generator=g)])
    """

    def __init__(
        self,
        model: nn.Module,
        optimizer: torch.optim.Optimizer,
        *,
        generator: torch.Generator,
        steps: int | None = None,
        budget_s: float | None = None,
        clock: Callable[[], float] = time.perf_counter,
        schedule: Callable[[int, float], float] | None = None,
        grad_clip: float | None = 1.0,
        loss: Callable[..., Any] | None = None,
        ema_decay: float | None = None,
        bf16: bool = False,
        out: str | os.PathLike | None = None,
        save_every: int | None = None,
        extra: dict[str, Any] | None = None,
        log_every: int | None = None,
        on_log: Callable[[dict[str, Any]], None] | None = None,
        evaluate: Callable[[nn.Module], dict[str, Any]] | None = None,
        eval_every: int = 0,
        progress: bool = False,
        skip_nonfinite: int = 0,
        check_every: int | None = None,
        advice: str = "lower the learning rate or clip gradients",
        find_unused_parameters: bool | None = None,
        handle_signals: bool = True,
        keep_host_memory: bool = True,
    ) -> None:
        if steps is not None:
            check_integer("Trainer", "steps", steps)
            if steps < 0:
                raise ValueError(f"Trainer: steps must be >= 0 or None, got {steps}")
        if budget_s is not None and not budget_s > 0:
            raise ValueError(f"Trainer: budget_s must be > 0 (math.inf: none) or None, got {budget_s}")
        if steps is None and (budget_s is None or math.isinf(budget_s)):
            raise ValueError("Trainer: give steps or a finite budget_s, or the run never stops")
        if grad_clip is not None and not grad_clip > 0:
            raise ValueError(f"Trainer: grad_clip must be > 0 or None, got {grad_clip}")
        for name, value in (("save_every", save_every), ("log_every", log_every), ("check_every", check_every)):
            if value is not None:
                check_integer("Trainer", name, value)
                if value < 1:
                    raise ValueError(f"Trainer: {name} must be >= 1 or None, got {value}")
        check_integer("Trainer", "skip_nonfinite", skip_nonfinite)
        check_integer("Trainer", "eval_every", eval_every)
        if skip_nonfinite < 0 or eval_every < 0:
            raise ValueError("Trainer: skip_nonfinite and eval_every must be >= 0")
        if save_every is not None and out is None:
            raise ValueError("Trainer: save_every needs a run folder (out=...)")
        if eval_every and evaluate is None:
            raise ValueError("Trainer: eval_every needs an evaluate function")
        param = next(model.parameters(), None)
        if param is None:
            raise ValueError("Trainer: the model has no parameters to train")
        self.model = model
        self.optimizer = optimizer
        self.generator = generator
        self.device = param.device
        self.steps = steps
        self.budget_s = budget_s if budget_s is not None else math.inf
        self.clock = clock
        self.schedule = schedule
        self.grad_clip = grad_clip
        self.loss = loss or default_loss
        self.ema = EMA(model, ema_decay) if ema_decay is not None else None
        self.bf16 = bf16
        self.out = Path(out) if out is not None else None
        self.save_every = save_every
        self.extra = extra or {}
        self.log_every = log_every
        self.on_log = on_log
        self.evaluate = evaluate
        self.eval_every = eval_every
        self.progress = progress
        self.skip_nonfinite = skip_nonfinite
        if check_every is None:
            check_every = 1 if self.device.type == "cpu" or skip_nonfinite else CHECK_EVERY
        if skip_nonfinite and check_every != 1:
            raise ValueError("Trainer: skip_nonfinite needs check_every=1 (a batch is skipped before its update)")
        self.check_every = check_every
        self.advice = advice
        self.find_unused_parameters = find_unused_parameters
        self.handle_signals = handle_signals
        self.keep_host_memory = keep_host_memory
        self.rank = dist.get_rank() if is_distributed() else 0
        self.world = dist.get_world_size() if is_distributed() else 1
        #: optimizer steps taken (restored by :meth:`restore`)
        self.step = 0
        #: the step of the last checkpoint written or restored
        self.saved_step: int | None = None
        self._elapsed = 0.0  # seconds of the clock at the last step's end

    # ---- state ---------------------------------------------------------------------------------

    @property
    def checkpoint_path(self) -> Path | None:
        """``out / "checkpoint"`` (None without a run folder)."""
        return self.out / "checkpoint" if self.out is not None else None

    def restore(self, checkpoint: Checkpoint) -> None:
        """Continue from ``checkpoint`` (:func:`~fractalkit.training.load_checkpoint`): optimizer,
        schedule, EMA, step and random streams. Load the model's weights from it first (build the
        trainer around ``checkpoint.model``).

        Raises:
            ValueError: the checkpoint holds no trainer state, was written by another number of
                processes, or lacks the EMA this trainer keeps.
        """
        states = checkpoint.rng.get("model")
        if checkpoint.optimizer is None or not states:
            raise ValueError(
                f"Trainer.restore: {checkpoint.path} holds no trainer state (optimizer, random "
                "streams): it can be sampled from but not continued"
            )
        if len(states) != self.world:
            raise ValueError(
                f"Trainer.restore: {checkpoint.path} was written by {len(states)} process(es); "
                f"continue it with {len(states)}, not {self.world} (exact resumption needs the same count)"
            )
        self.optimizer.load_state_dict(checkpoint.optimizer)
        if checkpoint.scheduler is not None and hasattr(self.schedule, "load_state_dict"):
            self.schedule.load_state_dict(checkpoint.scheduler)
        if self.ema is not None:
            if checkpoint.ema is None:
                raise ValueError(f"Trainer.restore: {checkpoint.path} holds no EMA weights; train without one")
            self.ema.load_state_dict(checkpoint.ema)
        self.generator.set_state(states[self.rank].cpu())
        torch_states = checkpoint.rng.get("torch")
        if torch_states:
            torch.set_rng_state(torch_states[self.rank].cpu())
        self.step = checkpoint.step
        self.saved_step = checkpoint.step

    def save(self) -> Path | None:
        """Write a checkpoint of the current step into ``out/checkpoint`` (all processes must
        call it: the random streams of every rank are gathered; the first process writes)."""
        if self.checkpoint_path is None:
            raise ValueError("Trainer.save: no run folder (out=...)")
        if hasattr(self.schedule, "state_dict"):  # a stateful schedule saves the next step's rate
            self.schedule(self.step, self._elapsed)
        states = [self.generator.get_state(), torch.get_rng_state()]
        gathered: list[Any] = [states]
        if self.world > 1:
            gathered = [None] * self.world
            dist.all_gather_object(gathered, states)
        if self.rank == 0:
            save_checkpoint(
                self.checkpoint_path, self.model, step=self.step, optimizer=self.optimizer,
                scheduler=self.schedule if hasattr(self.schedule, "state_dict") else None, ema=self.ema,
                rng={"model": [s[0] for s in gathered], "torch": [s[1] for s in gathered]},
                extra={**self.extra, "world_size": self.world},
            )
        self.saved_step = self.step
        if self.world > 1:
            dist.barrier()
        return self.checkpoint_path

    # ---- helpers ----------------------------------------------------------------------------------

    def _any_rank(self, flag: bool) -> bool:
        if self.world == 1:
            return flag
        t = torch.tensor([float(flag)], device=self.device)
        dist.all_reduce(t)
        return bool(t > 0)

    def _to_device(self, batch: Batch) -> tuple[Any, ...]:
        if isinstance(batch, Tensor):
            batch = (batch,)
        elif not isinstance(batch, tuple) or not batch:
            raise ValueError(
                "Trainer: next_batch/batches must give a tensor or a non-empty tuple of the loss's "
                "arguments, "
                f"got {type(batch).__name__}"
            )
        return tuple(t.to(self.device, non_blocking=True) if isinstance(t, Tensor) else t for t in batch)

    def _autocast(self) -> contextlib.AbstractContextManager:
        return torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=self.bf16)

    def _wrap(self, module: LossModule, batch: tuple[Any, ...]) -> nn.Module:
        """DistributedDataParallel around the loss; unused parameters found by one probe step
        whose random draws are undone (the run stays the same as without the probe)."""
        find_unused = self.find_unused_parameters
        if find_unused is None:
            gen_state, rng_state = self.generator.get_state(), torch.get_rng_state()
            cuda_state = torch.cuda.get_rng_state(self.device) if self.device.type == "cuda" else None
            with self._autocast():
                total, _ = module(batch, self.generator)
            total.backward()
            unused = [n for n, p in self.model.named_parameters() if p.requires_grad and p.grad is None]
            self.optimizer.zero_grad(set_to_none=True)
            for p in self.model.parameters():
                p.grad = None
            self.generator.set_state(gen_state)
            torch.set_rng_state(rng_state)
            if cuda_state is not None:
                torch.cuda.set_rng_state(cuda_state, self.device)
            find_unused = self._any_rank(bool(unused))
        return nn.parallel.DistributedDataParallel(
            module, device_ids=[self.device.index] if self.device.type == "cuda" else None,
            find_unused_parameters=find_unused,
        )

    def _write_log(self, record: dict[str, Any]) -> None:
        if self.out is not None and self.rank == 0:
            self.out.mkdir(parents=True, exist_ok=True)
            with open(self.out / "log.jsonl", "a") as f:
                f.write(json.dumps(record) + "\n")

    def _stop_reason(self, elapsed: float, requests: StopRequests | None) -> str | None:
        reason = None
        if requests is not None and requests.requested is not None:
            reason = requests.requested
        elif self.steps is not None and self.step >= self.steps:
            reason = "steps"
        elif elapsed >= self.budget_s:
            reason = "budget"
        if self.world > 1:  # every rank stops at the same step (one all-reduce per step)
            flags = torch.tensor([float(requests is not None and requests.requested is not None),
                                  float(elapsed >= self.budget_s)], device=self.device)
            dist.all_reduce(flags)
            if flags[0] > 0 and reason not in ("SIGINT", "SIGTERM"):
                reason = "SIGTERM"  # another rank was signalled
            elif reason is None and flags[1] > 0:
                reason = "budget"
        return reason

    # ---- the loop ---------------------------------------------------------------------------------

    def fit(
        self,
        next_batch: Callable[[torch.Generator], Batch] | None = None,
        *,
        batches: Callable[[int], Iterable[Batch]] | None = None,
    ) -> TrainResult:
        """Train until ``steps``, ``budget_s``, the end of the data or a signal.

        Give exactly one of:

        Args:
            next_batch: ``generator -> batch``, called once per step with the trainer's generator
                (draw every random choice from it, so a resumed run draws the same batches).
            batches: ``start_step -> iterable of batches`` from that step on (e.g. an epoch-aware
                loader that skips the batches already seen): resuming calls it with the
                restored step.

        A batch is a tensor ``x`` or a tuple of the loss's positional arguments (``(x, y)``,
        ``y`` may be None); its tensors are moved to the model's device.

        Returns:
            A :class:`TrainResult`.

        Raises:
            NonFiniteLoss: a NaN/inf loss, NLL or gradient norm (after ``skip_nonfinite`` skips in
                a row); the step's update was not applied and the last checkpoint is untouched.
            ValueError: not exactly one data source, or a malformed batch.
            fractalkit.filelock.FolderInUseError: another live process writes the run folder
                ``out`` (the message names it: pid, host, since when, command).
        """
        if (next_batch is None) == (batches is None):
            raise ValueError("Trainer.fit: give exactly one of next_batch and batches")
        if self.keep_host_memory and self.device.type == "cpu":
            keep_freed_host_memory()  # each step reuses the last one's buffers, no page faults
        # One writer per run folder, for the whole run (its checkpoint saves take the same lock)
        lock = (
            writer_lock(self.out, what="Trainer.fit")
            if self.out is not None and self.rank == 0 else contextlib.nullcontext()
        )
        with lock:
            return self._fit(next_batch, batches)

    def _fit(
        self,
        next_batch: Callable[[torch.Generator], Batch] | None,
        batches: Callable[[int], Iterable[Batch]] | None,
    ) -> TrainResult:
        """The body of :meth:`fit`, run under the run folder's writer lock."""
        if batches is not None:
            iterator: Iterator[Batch] = iter(batches(self.step))
        else:
            iterator = (next_batch(self.generator) for _ in iter(int, 1))
        module = LossModule(self.model, self.loss)
        wrapped: nn.Module | None = None if self.world > 1 else module
        params = [p for p in self.model.parameters() if p.requires_grad]
        main = self.rank == 0
        bar = None
        if self.progress and main:
            from tqdm.auto import tqdm

            bar = tqdm(total=self.steps, initial=self.step, unit="step", dynamic_ncols=True)
        self.model.train()
        first = self.step
        start = self.clock()
        started = time.perf_counter()  # for the log's rates (the clock may count steps)
        window_t, window_steps = started, 0
        bad_seen = torch.zeros((), dtype=torch.bool, device=self.device)
        checked = self.step
        skipped = in_a_row = 0
        total = nll = None
        last_log: dict[str, Any] = {}
        requests = StopRequests() if self.handle_signals else None
        with contextlib.ExitStack() as stack:
            if requests is not None:
                stack.enter_context(requests)
            if bar is not None:
                stack.callback(bar.close)
            elapsed = self.clock() - start
            reason = self._stop_reason(elapsed, requests)
            while reason is None:
                try:
                    batch = self._to_device(next(iterator))
                except StopIteration:
                    reason = "data"
                    break
                if self.schedule is not None:
                    lr = self.schedule(self.step, elapsed)
                    for group in self.optimizer.param_groups:
                        group["lr"] = lr
                if wrapped is None:
                    wrapped = self._wrap(module, batch)
                with self._autocast():
                    total, nll = wrapped(batch, self.generator)
                self.optimizer.zero_grad(set_to_none=True)
                total.backward()
                gnorm = torch.nn.utils.clip_grad_norm_(
                    params, self.grad_clip if self.grad_clip is not None else math.inf
                )
                terms = {"total loss": total.detach(), "nll": nll.detach(), "gradient norm": gnorm.detach()}
                if self.check_every == 1:
                    bad = nonfinite_terms(terms)
                    if self._any_rank(bool(bad)):  # every rank takes the same decision
                        bad = bad or {"loss on another rank": math.nan}
                        self._write_log({"step": self.step + 1, "nonfinite": bad})
                        if in_a_row >= self.skip_nonfinite:
                            raise NonFiniteLoss(self._nonfinite_message(
                                f"step {self.step + 1}", describe(self.step + 1, bad)))
                        skipped, in_a_row = skipped + 1, in_a_row + 1
                        self.optimizer.zero_grad(set_to_none=True)
                    else:
                        in_a_row = 0
                        self._apply()
                    checked = self.step + 1
                else:  # a flag on the device, read every check_every steps: no sync per step
                    for value in terms.values():
                        bad_seen |= ~torch.isfinite(value.float())
                    if self.step + 1 - checked >= self.check_every:
                        self._raise_if_flagged(bad_seen, checked + 1, self.step + 1)
                        checked = self.step + 1
                    self._apply()
                self.step += 1
                window_steps += 1
                elapsed = self._elapsed = self.clock() - start
                reason = self._stop_reason(elapsed, requests)
                last = reason is not None
                evaluate = self.evaluate is not None and (
                    last or (self.eval_every > 0 and self.step % self.eval_every == 0)
                )
                if evaluate or (self.log_every is not None and (self.step % self.log_every == 0 or last)):
                    last_log = self._log(total, nll, gnorm, window_t, window_steps, started, evaluate)
                    window_t, window_steps = time.perf_counter(), 0
                if bar is not None:
                    if last_log.get("step") == self.step:
                        bar.set_postfix(loss=f"{last_log['loss']:.4f}", nll=f"{last_log['nll']:.4f}")
                    bar.update(1)
                if self.out is not None and (
                    last or (self.save_every is not None and self.step % self.save_every == 0)
                ):
                    if self.check_every != 1:  # never save weights a NaN step may have touched
                        self._raise_if_flagged(bad_seen, checked + 1, self.step)
                        checked = self.step
                    self.save()
            if self.check_every != 1 and checked < self.step:
                self._raise_if_flagged(bad_seen, checked + 1, self.step)
        if self.device.type == "cuda":  # the seconds include queued work
            torch.cuda.synchronize(self.device)
        elif self.device.type == "mps":
            torch.mps.synchronize()
        seconds = self.clock() - start
        if self.out is not None and self.saved_step != self.step:
            self.save()  # the data ran out, or the run stopped before its first step
        digests = None
        if self.world > 1:
            digests = [None] * self.world
            dist.all_gather_object(digests, parameter_digest(self.model))
        return TrainResult(
            steps=self.step,
            steps_this_run=self.step - first,
            seconds=seconds,
            last_nll=float("nan") if nll is None else float(nll.detach()),
            last_loss=float("nan") if total is None else float(total.detach()),
            stopped_by=reason,
            interrupted=reason if reason in ("SIGINT", "SIGTERM") else None,
            skipped_nonfinite=skipped,
            last_log=last_log,
            saved_step=self.saved_step,
            parameter_digests=digests,
        )

    def _apply(self) -> None:
        self.optimizer.step()
        if self.ema is not None:
            self.ema.update(self.model)

    def _nonfinite_message(self, where: str, terms: str | None = None, deferred: str | None = None) -> str:
        """``"step 3: total loss = nan, ...; NaN/inf at step 3: the run stopped ..."``."""
        path = self.checkpoint_path
        if path is None:
            kept = "no checkpoint is kept by this loop"
        elif self.saved_step is not None:
            kept = f"the last good checkpoint {path} (step {self.saved_step}) is untouched"
        else:
            kept = "no checkpoint was written"
        head = f"{terms}; " if terms else ""
        applied = (f"stopped ({deferred}: earlier updates of that range may have been applied)"
                   if deferred else "stopped before applying it")
        return f"{head}the training loss or gradient became NaN/inf at {where}: the run {applied} and {kept}. {self.advice}"

    def _raise_if_flagged(self, bad_seen: Tensor, first: int, last: int) -> None:
        """Raise if a term of steps ``first .. last`` (1-based) was NaN/inf (deferred checks:
        the updates before the last step of the range may have been applied)."""
        if self._any_rank(bool(bad_seen)):
            where = f"step {last}" if first == last else f"a step in {first}..{last}"
            raise NonFiniteLoss(self._nonfinite_message(
                where, deferred=f"checked every {self.check_every} steps on {self.device.type}"))

    def _log(self, total: Tensor, nll: Tensor, gnorm: Tensor, window_t: float, window_steps: int,
             started: float, evaluate: bool) -> dict[str, Any]:
        nll_v = float(nll.detach())
        if self.world > 1:
            t = torch.tensor([nll_v], device=self.device)
            dist.all_reduce(t)
            nll_v = float(t) / self.world
        now = time.perf_counter()
        record: dict[str, Any] = {
            "step": self.step, "loss": float(total.detach()), "nll": nll_v,
            "lr": self.optimizer.param_groups[0]["lr"], "grad_norm": float(gnorm),
            "steps_per_s": window_steps / max(now - window_t, 1e-9), "elapsed_s": now - started,
        }
        if self.on_log is not None:
            self.on_log(record)
        if evaluate:
            was = self.model.training
            self.model.eval()
            with torch.no_grad():
                record.update(self.evaluate(self.model))
            self.model.train(was)
        self._write_log(record)
        return record
