"""Training-step and sampling throughput with peak memory, against this machine's own limits.

For each preset and batch size: a training step (forward, backward, AdamW) in fp32 and, with
``--bf16``, under bf16 autocast; and sampling seconds per image with the preset's published
settings. Each run first measures the machine's float32/bfloat16 matmul rates and memory
bandwidth in the same process (benchmarks/machine.py) and reports the achieved fraction of the
fp32 rate, counting the FLOPs a training step really executes (benchmarks/cost_table.py).

Run: ``python benchmarks/throughput.py --presets tiny-in32 small-in64 --batches 1 8``
(writes benchmarks/results/throughput_<host>.json). Peak memory is the process's peak RSS on
CPU (``resource.getrusage``), or ``torch.cuda.max_memory_allocated`` on a GPU.
"""

from __future__ import annotations

import argparse
import json
import resource
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from cost_table import level_flops, mean_mask_ratio
from machine import describe

from fractalkit import SampleOptions
from fractalkit.presets import PRESETS, build_preset

RESULTS = Path(__file__).resolve().parent / "results"


def peak_memory_gib(device: torch.device) -> float:
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated() / 2**30
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20  # KiB on Linux


def executed_step_flops(name: str) -> float:
    """FLOPs one training step executes per image (fwd + bwd = 3 x fwd), from the meta device."""
    with torch.device("meta"):
        model = build_preset(name)
    return 3 * sum(level_flops(model, executed=True, ratio=mean_mask_ratio()))


def train_step(name, batch, device, bf16, steps=3) -> dict:
    torch.manual_seed(0)
    model = build_preset(name).to(device).train()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4, betas=(0.9, 0.95), weight_decay=0.05)
    size = PRESETS[name].image_size
    g = torch.Generator(device=device).manual_seed(0)
    x = torch.randint(0, 256, (batch, 3, size, size), generator=g, device=device)
    y = torch.randint(0, model.num_classes, (batch,), generator=g, device=device)
    times = []
    for _ in range(steps + 1):
        start = time.perf_counter()
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=bf16):
            loss = model.loss(x, y, generator=g)
        loss.total.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        if device.type == "cuda":
            torch.cuda.synchronize()
        times.append(time.perf_counter() - start)
    step = sorted(times[1:])[len(times[1:]) // 2]
    return {"kind": "train", "preset": name, "batch": batch, "bf16": bf16, "step_s": step,
            "images_per_s": batch / step, "peak_memory_GiB": peak_memory_gib(device)}


def sample_time(name, batch, device, bf16) -> dict:
    torch.manual_seed(0)
    model = build_preset(name).to(device).eval()
    options: SampleOptions = PRESETS[name].sampling
    y = torch.arange(batch, device=device) % model.num_classes
    g = torch.Generator(device=device).manual_seed(0)
    start = time.perf_counter()
    with torch.autocast(device.type, dtype=torch.bfloat16, enabled=bf16):
        model.sample(y=y, options=options, generator=g)
    seconds = time.perf_counter() - start
    return {"kind": "sample", "preset": name, "batch": batch, "bf16": bf16,
            "seconds_per_image": seconds / batch, "peak_memory_GiB": peak_memory_gib(device)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--presets", nargs="+", default=["tiny-in32", "small-in64"], choices=sorted(PRESETS))
    parser.add_argument("--batches", nargs="+", type=int, default=[1, 8])
    parser.add_argument("--bf16", action="store_true", help="also run under bf16 autocast")
    parser.add_argument("--no-sample", action="store_true", help="training steps only")
    parser.add_argument("--no-train", action="store_true", help="sampling only")
    args = parser.parse_args()
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    machine = describe(device.type)
    print(json.dumps(machine, indent=1), flush=True)
    runs = []
    for name in args.presets:
        flops = executed_step_flops(name)
        for batch in args.batches:
            for bf16 in [False, True] if args.bf16 else [False]:
                if not args.no_train:
                    r = train_step(name, batch, device, bf16)
                    rate = machine["bf16_flops" if bf16 else "fp32_flops"]
                    r["executed_gflops_per_image"] = flops / 1e9
                    r["fraction_of_matmul_rate"] = flops * r["images_per_s"] / rate
                    print(json.dumps(r), flush=True)
                    runs.append(r)
                if not args.no_sample:
                    r = sample_time(name, batch, device, bf16)
                    print(json.dumps(r), flush=True)
                    runs.append(r)
    RESULTS.mkdir(exist_ok=True)
    tag = "_".join(args.presets) if len(args.presets) < 3 else "presets"
    tag += "_sampling" if args.no_train else ""
    out = RESULTS / f"throughput_{device.type}_{tag}.json"
    out.write_text(json.dumps({"machine": machine, "runs": runs}, indent=2))
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
