"""Where a training step's time goes, level by level.

Times the forward pass of each level's transformer and of the leaf with module hooks (the
backward pass is timed as a whole), beside the forward FLOPs each executes
(benchmarks/cost_table.py), so the achieved rate per level shows which level is inefficient.

Run: ``python benchmarks/profile_levels.py --preset fractalmar-in64 --batch 1``
(writes benchmarks/results/profile_<preset>_b<batch>.json).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from cost_table import level_flops, mean_mask_ratio

from fractalkit.presets import PRESETS, build_preset

RESULTS = Path(__file__).resolve().parent / "results"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--preset", default="small-in64", choices=sorted(PRESETS))
    parser.add_argument("--batch", type=int, default=1)
    args = parser.parse_args()
    with torch.device("meta"):
        meta = build_preset(args.preset)
    flops = level_flops(meta, executed=True, ratio=mean_mask_ratio())
    torch.manual_seed(0)
    model = build_preset(args.preset).train()
    # Each generator's transformer, the leaf's included (a head-only leaf has none: 0 s).
    timed = [getattr(g, "backbone", None) for g in model.levels]
    spent = [0.0] * len(timed)
    starts: dict[int, float] = {}
    for i, module in enumerate(timed):
        if module is None:
            continue
        module.register_forward_pre_hook(lambda m, a, i=i: starts.__setitem__(i, time.perf_counter()))
        module.register_forward_hook(
            lambda m, a, o, i=i: spent.__setitem__(i, spent[i] + time.perf_counter() - starts[i])
        )
    size = PRESETS[args.preset].image_size
    g = torch.Generator().manual_seed(0)
    x = torch.randint(0, 256, (args.batch, 3, size, size), generator=g)
    y = torch.randint(0, model.num_classes, (args.batch,), generator=g)
    model.loss(x, y, generator=g).total.backward()  # warm-up
    spent = [0.0] * len(timed)
    t0 = time.perf_counter()
    loss = model.loss(x, y, generator=g)
    t1 = time.perf_counter()
    loss.total.backward()
    t2 = time.perf_counter()
    rows = []
    for i, seconds in enumerate(spent):
        f = flops[i] * args.batch
        rows.append({"level": f"g{i + 1}", "forward_s": seconds, "forward_gflops": f / 1e9,
                     "gflops_per_s": f / seconds / 1e9 if seconds else None})
        print(f"g{i + 1}: forward {seconds:7.3f} s  {f / 1e9:8.1f} GFLOPs  "
              f"{f / seconds / 1e9 if seconds else 0:6.1f} GFLOP/s")
    print(f"forward total {t1 - t0:.3f} s, backward {t2 - t1:.3f} s")
    RESULTS.mkdir(exist_ok=True)
    out = RESULTS / f"profile_{args.preset}_b{args.batch}.json"
    out.write_text(json.dumps({"preset": args.preset, "batch": args.batch, "levels": rows,
                               "forward_s": t1 - t0, "backward_s": t2 - t1}, indent=2))


if __name__ == "__main__":
    main()
