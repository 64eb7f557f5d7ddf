"""Measure this machine's limits in-process: matrix-multiply rates and memory bandwidth.

Every benchmark reports its achieved fraction of these figures, so runs on different machines
compare. Run alone: ``python benchmarks/machine.py``.
"""

from __future__ import annotations

import json
import os
import platform
import time

import torch


def _best_time(fn, repeats: int) -> float:
    fn()  # warm-up
    best = float("inf")
    for _ in range(repeats):
        if torch.cuda.is_available():
            torch.cuda.synchronize()
        start = time.perf_counter()
        fn()
        if torch.cuda.is_available():
            torch.cuda.synchronize()
        best = min(best, time.perf_counter() - start)
    return best


def matmul_rate(dtype: torch.dtype, device: str, size: int = 2048, repeats: int = 5) -> float:
    """Sustained FLOP/s of a square ``size`` matmul in ``dtype`` on ``device`` (2 x MACs)."""
    a = torch.randn(size, size, device=device).to(dtype)
    b = torch.randn(size, size, device=device).to(dtype)
    t = _best_time(lambda: a @ b, repeats)
    return 2 * size**3 / t


def memory_bandwidth(device: str, megabytes: int = 512, repeats: int = 5) -> float:
    """Bytes/s of a large tensor copy (read + write counted)."""
    n = megabytes * 2**20 // 4
    src = torch.empty(n, device=device)
    src.fill_(1.0)
    dst = torch.empty_like(src)
    t = _best_time(lambda: dst.copy_(src), repeats)
    return 2 * n * 4 / t


#: the CPU flags that decide which matrix kernels run (bf16 arithmetic: avx512_bf16, amx_bf16)
FLAGS_OF_INTEREST = ("avx2", "fma", "avx512f", "avx512_bf16", "avx512_vnni", "amx_tile", "amx_bf16")


def cpu_flags() -> dict:
    """Which of :data:`FLAGS_OF_INTEREST` this CPU reports (``/proc/cpuinfo``; empty elsewhere)."""
    try:
        with open("/proc/cpuinfo") as f:
            flags = next((line.split(":", 1)[1].split() for line in f if line.startswith("flags")), [])
    except OSError:
        return {}
    return {name: name in flags for name in FLAGS_OF_INTEREST}


def describe(device: str | None = None) -> dict:
    """A description of the machine plus its measured rates (FLOP/s, bytes/s)."""
    device = device or ("cuda" if torch.cuda.is_available() else "cpu")
    info = {
        "device": device,
        "torch": torch.__version__,
        "python": platform.python_version(),
        "cpu": platform.processor() or platform.machine(),
        "cores": os.cpu_count(),
        "threads": torch.get_num_threads(),
        "cpu_flags": cpu_flags(),
        # Other jobs on a shared machine slow every figure: recorded beside them.
        "load_average_1_5_15_min": list(os.getloadavg()),
    }
    if device == "cuda":
        info["gpu"] = torch.cuda.get_device_name()
        size = 8192
    else:
        size = 2048
        try:
            with open("/proc/cpuinfo") as f:
                for line in f:
                    if line.startswith("model name"):
                        info["cpu"] = line.split(":", 1)[1].strip()
                        break
        except OSError:
            pass
    info["fp32_flops"] = matmul_rate(torch.float32, device, size)
    # Some CPU builds have no fast bf16 kernel (a 2048^3 product can take minutes): size down.
    info["bf16_flops"] = matmul_rate(torch.bfloat16, device, size if device == "cuda" else 512)
    info["bandwidth_bytes"] = memory_bandwidth(device, 2048 if device == "cuda" else 512)
    return info


if __name__ == "__main__":
    d = describe()
    print(json.dumps(d, indent=2))
