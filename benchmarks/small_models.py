"""Small-model training overhead: a 3-level MAR against the AR version of the same widths.

The configuration of issue 15: 32x32 RGB images, levels 32 -> 4x4 patches -> pixels -> RGB
leaf, widths 256 / 128 / 64 (the last is the leaf), blocks 4 / 2 / 1, 5 condition tokens per
child (MAR neighbours), mask ratio fixed at 0.8 (``ceil(0.8 k)`` children masked per instance),
no dropout, batch 32, fp32. AR levels use the paper's AR blocks (LLaMA, 2-D RoPE).

For each model it times whole training steps (forward, backward, AdamW), then one more step
split level by level: each level's transformer forward (module hooks on its ``backbone``, the
leaf's included) and the rest of the forward pass (embeddings, masking, gathering and scattering
children, condition assembly, the loss), and the backward pass as a whole.

Run: ``PYTHONPATH=. python benchmarks/small_models.py --threads 2``
(writes benchmarks/results/small_models[_TAG].json).
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
import sys
import time
from pathlib import Path
from unittest import mock

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from machine import cpu_flags

from fractalkit import Fractal
from fractalkit.leaves.rgb import RGBLeafConfig
from fractalkit.levels.ar import ARLevelConfig
from fractalkit.levels.mar import MARLevelConfig
from fractalkit.partition import ImagePatches

RESULTS = Path(__file__).resolve().parent / "results"
MASK_RATIO = 0.8


def small_config(kind: str) -> dict:
    """The issue's 3-level model over 32x32 images as a ``Fractal.from_config`` dict."""
    from fractalkit.fractal import FORMAT, FORMAT_VERSION

    levels = []
    for (size, child), width, depth, heads in zip(((32, 4), (4, 1)), (256, 128), (4, 2), (8, 4), strict=True):
        if kind == "mar":
            level = MARLevelConfig(width=width, depth=depth, heads=heads, block="vit", neighbours=True)
        else:
            level = ARLevelConfig(width=width, depth=depth, heads=heads, block="llama", rope=True)
        part = ImagePatches(size, child, channels=3)
        levels.append({"partitioner": part.config(), "level": level.to_dict()})
    leaf = RGBLeafConfig(width=64, depth=1, heads=4)
    return {"format": FORMAT, "version": FORMAT_VERSION, "levels": levels, "leaf": leaf.to_dict(),
            "num_classes": 10, "label_drop": 0.0, "value_mean": 0.5, "value_std": 0.5}


def fixed_mask_counts(n: int, length: int, *, generator, device) -> torch.Tensor:
    """``ceil(0.8 L)`` masked children for every instance (replaces the random ratio)."""
    return torch.full((n,), math.ceil(MASK_RATIO * length), dtype=torch.long, device=device)


def measure(kind: str, batch: int, steps: int) -> dict:
    """Median training-step seconds and one step split by level (see the module docstring)."""
    torch.manual_seed(0)
    model = Fractal.from_config(small_config(kind)).train()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4, fused=True)
    g = torch.Generator().manual_seed(0)
    x = torch.randint(0, 256, (batch, 3, 32, 32), generator=g)
    y = torch.randint(0, 10, (batch,), generator=g)

    def step() -> tuple[float, float, float]:
        t0 = time.perf_counter()
        loss = model.loss(x, y, generator=g)
        t1 = time.perf_counter()
        loss.total.backward()
        t2 = time.perf_counter()
        opt.step()
        opt.zero_grad(set_to_none=True)
        return t1 - t0, t2 - t1, time.perf_counter() - t2

    step()  # warm-up
    times = [step() for _ in range(steps)]
    timed = [getattr(gen, "backbone", None) for gen in model.levels]
    spent = [0.0] * len(timed)
    starts: dict[int, float] = {}
    hooks = []
    for i, module in enumerate(timed):
        hooks.append(module.register_forward_pre_hook(
            lambda m, a, i=i: starts.__setitem__(i, time.perf_counter())))
        hooks.append(module.register_forward_hook(
            lambda m, a, o, i=i: spent.__setitem__(i, spent[i] + time.perf_counter() - starts[i])))
    fwd, bwd, opt_s = step()
    for h in hooks:
        h.remove()
    return {
        "kind": kind, "batch": batch, "steps_timed": steps,
        "step_s_median": statistics.median(sum(t) for t in times),
        "forward_s_median": statistics.median(t[0] for t in times),
        "backward_s_median": statistics.median(t[1] for t in times),
        "optimizer_s_median": statistics.median(t[2] for t in times),
        "split_step": {
            "transformer_forward_s": {f"g{i + 1}": s for i, s in enumerate(spent)},
            "other_forward_s": fwd - sum(spent), "forward_s": fwd, "backward_s": bwd,
            "optimizer_s": opt_s,
        },
        "parameters": sum(p.numel() for p in model.parameters()),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--steps", type=int, default=5, help="timed steps per model")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--models", nargs="+", default=["mar", "ar"], choices=["mar", "ar"])
    parser.add_argument("--tag", default="", help="suffix of the results file name")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    runs = []
    with mock.patch("fractalkit.levels.mar.training_mask_counts", fixed_mask_counts):
        for kind in args.models:
            r = measure(kind, args.batch, args.steps)
            print(json.dumps(r), flush=True)
            runs.append(r)
    machine = {"cpu_flags": cpu_flags(), "threads": args.threads, "torch": torch.__version__,
               "load_average": list(__import__("os").getloadavg())}
    RESULTS.mkdir(exist_ok=True)
    out = RESULTS / f"small_models{'_' + args.tag if args.tag else ''}.json"
    out.write_text(json.dumps({"machine": machine, "runs": runs}, indent=2))
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
