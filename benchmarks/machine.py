"""Measure this machine's limits in-process: matrix-multiply rates and memory bandwidth.

Every benchmark reports its achieved fraction of these figures, so runs on different machines
compare. Run alone: ``python benchmarks/machine.py`` (``--repeat N``: N separate measurements,
each in a fresh process, with their spread).

The reference matmul rate (what a bound or a fraction of the rate divides by) is pinned: each
product is timed alone, many times (:data:`RATE_REPEATS`), the samples are all recorded, and the
rate is the best sample seen (:func:`rate_of`). A benchmark measures before its timed work
(:func:`describe`) and again after it (:func:`remeasure`), so a run whose first measurement fell
on a busy moment still gets the machine's rate. The best is the conservative choice: it makes a
FLOP bound smallest and an achieved fraction lowest. The spread ``(best - worst) / best`` of the
samples is recorded beside it, with the load average.
"""

from __future__ import annotations

import json
import os
import platform
import time

import torch


def _times(fn, repeats: int) -> list[float]:
    """Seconds of each of ``repeats`` calls of ``fn`` after one warm-up call."""
    fn()  # warm-up
    times = []
    for _ in range(repeats):
        if torch.cuda.is_available():
            torch.cuda.synchronize()
        start = time.perf_counter()
        fn()
        if torch.cuda.is_available():
            torch.cuda.synchronize()
        times.append(time.perf_counter() - start)
    return times


#: timed products per reference-rate measurement (each one a sample; the best counts)
RATE_REPEATS = 20


def matmul_samples(dtype: torch.dtype, device: str, size: int = 2048,
                   repeats: int = RATE_REPEATS) -> list[float]:
    """FLOP/s (2 x MACs) of each of ``repeats`` square ``size`` matmuls in ``dtype`` on ``device``."""
    a = torch.randn(size, size, device=device).to(dtype)
    b = torch.randn(size, size, device=device).to(dtype)
    out = torch.empty_like(a)
    return [2 * size**3 / t for t in _times(lambda: torch.mm(a, b, out=out), repeats)]


def matmul_rate(dtype: torch.dtype, device: str, size: int = 2048, repeats: int = 5) -> float:
    """Sustained FLOP/s of a square ``size`` matmul in ``dtype`` on ``device`` (the best of
    ``repeats`` products, 2 x MACs)."""
    return max(matmul_samples(dtype, device, size, repeats))


def summarise_rates(samples: list[float]) -> dict:
    """The best, median and worst of rate samples (FLOP/s) and their spread (best - worst) / best.

    Raises:
        ValueError: no samples.
    """
    if not samples:
        raise ValueError("summarise_rates: no rate samples (measure at least one product)")
    ordered = sorted(samples)
    best, worst = ordered[-1], ordered[0]
    return {"best": best, "median": ordered[len(ordered) // 2], "worst": worst,
            "spread": (best - worst) / best, "samples": len(samples)}


#: the precisions whose reference rates a machine description records, with their key
PRECISIONS = {"fp32": torch.float32, "bf16": torch.bfloat16}


def _rate_size(precision: str, device: str) -> int:
    # Some CPU builds have no fast bf16 kernel (a 2048^3 product can take minutes): size down.
    if device == "cuda":
        return 8192
    return 2048 if precision == "fp32" else 512


def record_rates(info: dict, when: str, samples: dict[str, list[float]]) -> dict:
    """Add one measurement's rate samples (FLOP/s per precision) to a machine description.

    ``info["rate_samples"][precision][when]`` keeps every sample, ``info["rates"][precision]``
    their summary over all measurements so far, and ``info["fp32_flops"]`` /
    ``info["bf16_flops"]`` the best sample seen (what :func:`rate_of` returns). Pure bookkeeping:
    returns ``info``, changed in place.

    Raises:
        ValueError: ``when`` was already recorded for a precision (a measurement is kept whole),
            or a precision has no samples; ``info`` is then left as it was.
    """
    for precision, values in samples.items():
        if when in info.get("rate_samples", {}).get(precision, {}):
            raise ValueError(f"record_rates: {precision} rates measured {when!r} are already recorded")
        if not values:
            raise ValueError(f"record_rates: no {precision} rate samples measured {when!r}")
    for precision, values in samples.items():
        kept = info.setdefault("rate_samples", {}).setdefault(precision, {})
        kept[when] = list(values)
        every = [v for vs in kept.values() for v in vs]
        info.setdefault("rates", {})[precision] = summarise_rates(every)
        info[f"{precision}_flops"] = max(every)
    info.setdefault("rate_loads", {})[when] = list(os.getloadavg())
    return info


def measure_rates(device: str, repeats: int = RATE_REPEATS) -> dict[str, list[float]]:
    """Rate samples (FLOP/s) of each precision in :data:`PRECISIONS` on ``device``."""
    return {name: matmul_samples(dtype, device, _rate_size(name, device), repeats)
            for name, dtype in PRECISIONS.items()}


def remeasure(info: dict, when: str = "after", repeats: int = RATE_REPEATS) -> dict:
    """Measure the reference rates again (after the timed work) into ``info``; see :func:`record_rates`."""
    return record_rates(info, when, measure_rates(info["device"], repeats))


def reference_rates(device: str = "cpu", repeats: int = RATE_REPEATS) -> dict:
    """A machine description holding only the reference rates, measured now (``"before"``):
    for benchmarks that set a time against the FLOP bound without the rest of :func:`describe`."""
    info = {"device": device, "threads": torch.get_num_threads(),
            "rate_sizes": {name: _rate_size(name, device) for name in PRECISIONS}}
    return record_rates(info, "before", measure_rates(device, repeats))


def rate_of(info: dict, bf16: bool = False) -> float:
    """The reference matmul rate (FLOP/s) of a precision: the best sample seen in any measurement
    recorded in ``info`` (before and, once :func:`remeasure` ran, after the timed work).

    Raises:
        KeyError: the description holds no rate for that precision.
    """
    precision = "bf16" if bf16 else "fp32"
    samples = info.get("rate_samples", {}).get(precision)
    if samples:
        return max(v for vs in samples.values() for v in vs)
    if f"{precision}_flops" in info:  # a description written before the samples were kept
        return info[f"{precision}_flops"]
    raise KeyError(f"rate_of: the machine description holds no {precision} matmul rate; "
                   "make it with machine.describe()")


def memory_bandwidth(device: str, megabytes: int = 512, repeats: int = 5) -> float:
    """Bytes/s of a large tensor copy (read + write counted)."""
    n = megabytes * 2**20 // 4
    src = torch.empty(n, device=device)
    src.fill_(1.0)
    dst = torch.empty_like(src)
    t = min(_times(lambda: dst.copy_(src), repeats))
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
    else:
        try:
            with open("/proc/cpuinfo") as f:
                for line in f:
                    if line.startswith("model name"):
                        info["cpu"] = line.split(":", 1)[1].strip()
                        break
        except OSError:
            pass
    info["rate_sizes"] = {name: _rate_size(name, device) for name in PRECISIONS}
    record_rates(info, "before", measure_rates(device))
    info["bandwidth_bytes"] = memory_bandwidth(device, 2048 if device == "cuda" else 512)
    return info


def main(argv: list[str] | None = None) -> None:
    from fractalkit import cli

    parser = cli.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=cli.positive_int, default=1,
                        help="measure N times, each in a fresh process, and report the spread")
    parser.add_argument("--threads", type=cli.positive_int, default=None, help="torch threads (default: torch's)")
    parser.add_argument("--out", default=None, help="also write the JSON here")
    cli.add_debug_argument(parser)
    args = parser.parse_args(argv)
    if args.repeat == 1:
        if args.threads:
            torch.set_num_threads(args.threads)
        result = describe()
    else:  # fresh processes: what one benchmark run would measure, N times
        import subprocess
        import sys

        command = [sys.executable, __file__] + (["--threads", str(args.threads)] if args.threads else [])
        runs = [json.loads(subprocess.run(command, check=True, capture_output=True, text=True).stdout)
                for _ in range(args.repeat)]
        result = {"runs": runs}
        for precision in PRECISIONS:
            bests = [r["rates"][precision]["best"] for r in runs]
            result[f"{precision}_best_per_process"] = {**summarise_rates(bests), "values": bests}
    text = json.dumps(result, indent=2)
    print(text)
    if args.out:
        with open(args.out, "w") as f:
            f.write(text)


if __name__ == "__main__":
    from fractalkit import cli

    cli.run(main)
