"""Several processes under ``torchrun``: process-group set-up and a weight digest to compare ranks."""

from __future__ import annotations

import hashlib
import os

import torch
import torch.distributed as dist
from torch import nn

__all__ = ["init_distributed", "is_distributed", "parameter_digest"]


def is_distributed() -> bool:
    """True inside an initialised process group of more than one process."""
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def init_distributed(device: str | torch.device | None = None) -> tuple[int, int, torch.device]:
    """``(rank, world_size, device)``, initialising the process group when ``torchrun`` started
    several processes (``WORLD_SIZE > 1``): NCCL with one CUDA device per process (``LOCAL_RANK``),
    gloo on the CPU.

    Args:
        device: ``"cpu"``, ``"cuda"``, ``"cuda:N"`` or None (CUDA when present, else the CPU).
            Under torchrun a CUDA device is replaced by ``cuda:LOCAL_RANK``.

    Returns:
        The process's rank, the number of processes and its device.

    Raises:
        ValueError: a CUDA device is asked for on a machine without CUDA.
    """
    world = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    want = torch.device(device) if device is not None else None
    if want is not None and want.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"device {device}: CUDA is not available on this machine")
    use_cuda = torch.cuda.is_available() and (want is None or want.type == "cuda")
    if world <= 1:
        if want is not None:
            return 0, 1, want
        return 0, 1, torch.device("cuda" if use_cuda else "cpu")
    if use_cuda:
        local = int(os.environ.get("LOCAL_RANK", "0"))
        torch.cuda.set_device(local)
        chosen = torch.device("cuda", local)
    else:
        chosen = torch.device("cpu")
    if not dist.is_initialized():
        dist.init_process_group("nccl" if use_cuda else "gloo")
    return rank, world, chosen


def parameter_digest(model: nn.Module) -> str:
    """SHA-256 of every parameter's bytes (as float32), in name order: identical weights on two
    ranks give equal digests.

    Args:
        model: any module (unwrap DistributedDataParallel first).

    Returns:
        A 64-character hex string.
    """
    h = hashlib.sha256()
    for name, p in sorted(model.named_parameters()):
        h.update(name.encode())
        h.update(p.detach().to("cpu", torch.float32).contiguous().numpy().tobytes())
    return h.hexdigest()
