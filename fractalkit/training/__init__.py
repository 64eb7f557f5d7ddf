"""Training: one loop for every example (:class:`Trainer`) and the pieces it is made of.

- :class:`Trainer`: the loop (steps or seconds, schedule, clipping, EMA, non-finite stop,
  checkpoints with exact resume, Ctrl-C/SIGTERM save, DDP under torchrun, progress and logs);
  every example trains through it (see ``docs/training.md``).
- :func:`parameter_groups`: weight-decay groups from what modules declare
  (:func:`declare_no_weight_decay`, a ``no_weight_decay()`` method, norms and biases).
- :func:`init_distributed`: the process group under ``torchrun``.
- :class:`WarmupCosine`: linear warm-up then cosine decay, with a ``state_dict`` for resuming.
- :class:`EMA`: an exponential moving average of a model's parameters (float32 shadow copy).
- :func:`save_checkpoint` / :func:`load_checkpoint`: a checkpoint folder with the model in the
  library's safetensors format (:meth:`fractalkit.Fractal.save`), the optimizer, schedule, step,
  random-stream states and the full config, written atomically (crash-consistent at every
  filesystem step: :func:`resolve_checkpoint` finds the newest complete copy) and verified on load.
- :class:`FolderInUseError`: a second writer of a run folder is refused (one writer per run
  folder: :class:`Trainer` and :func:`save_checkpoint` hold its lock).
- :class:`NonFiniteLoss`: what a training loop raises on a NaN/inf loss or gradient.
- :class:`OptimizerInBackward`: optimizer steps inside the backward pass, so the gradients of the
  whole model never exist at once (less peak memory).
"""

from fractalkit.filelock import FolderInUseError
from fractalkit.training.budget import (
    Stopwatch,
    add_budget_arguments,
    budget_lr,
    device_description,
    summarise_runs,
    synchronize,
    train_for_budget,
)
from fractalkit.training.checkpoint import (
    Checkpoint,
    CheckpointError,
    load_checkpoint,
    load_model,
    resolve_checkpoint,
    save_checkpoint,
)
from fractalkit.training.distributed import init_distributed, parameter_digest
from fractalkit.training.ema import EMA
from fractalkit.training.groups import (
    declare_no_weight_decay,
    no_weight_decay_parameters,
    parameter_groups,
)
from fractalkit.training.in_backward import OptimizerInBackward
from fractalkit.training.loop import Trainer, TrainResult
from fractalkit.training.nonfinite import NonFiniteLoss
from fractalkit.training.schedule import WarmupCosine, warmup_cosine

__all__ = [
    "EMA",
    "Checkpoint",
    "CheckpointError",
    "FolderInUseError",
    "NonFiniteLoss",
    "OptimizerInBackward",
    "Stopwatch",
    "TrainResult",
    "Trainer",
    "WarmupCosine",
    "add_budget_arguments",
    "budget_lr",
    "declare_no_weight_decay",
    "device_description",
    "init_distributed",
    "load_checkpoint",
    "load_model",
    "no_weight_decay_parameters",
    "parameter_digest",
    "parameter_groups",
    "resolve_checkpoint",
    "save_checkpoint",
    "summarise_runs",
    "synchronize",
    "train_for_budget",
    "warmup_cosine",
]
