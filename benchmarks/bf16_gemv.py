"""Skinny products at batch 1 over FractalAR-64's weights: which form streams bf16 weights fastest.

For the weights of one top-level block (1024 wide, cycled over ``--blocks`` copies so they come
from memory, not cache) and of the second level (512 wide, its 8 blocks: one step's weights), at
2 rows (batch 1 with guidance) this times, interleaved in one process (one round = every form
once; the median over rounds of each form's time and of the float32 form's time divided by it):

- ``f32 W@xT``: the float32 form ``fractalkit.nn.Linear`` takes (``torch.mm(W, x^T)``);
- ``bf16 F.linear``: ``F.linear`` with bf16 weights (what bf16 autocast runs on its cached copies);
- ``bf16 W@xT``: ``torch.mm`` with bf16 weights;
- ``bf16 packed``: oneDNN's prepacked product (``torch.ops.mkldnn._reorder_linear_weight`` once,
  ``_linear_pointwise`` per product; ``Linear`` takes it inside ``packed_weights``);
- ``copy bf16``: ``dst.copy_(W)`` of the same bf16 bytes (read and write: copy bandwidth);
- ``sum bf16``: ``W.sum()`` (read only).

Run: ``python benchmarks/bf16_gemv.py --threads 1 2`` (writes
``benchmarks/results/bf16_gemv<tag>.json``; about a minute on a quiet 2-core machine).
"""

from __future__ import annotations

import json
import os
import statistics
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parent))
from machine import cpu_flags

from fractalkit import cli

RESULTS = Path(__file__).resolve().parent / "results"

#: (out, in) of one block's products: attention qkv and projection, SwiGLU w1, w3, w2
GROUPS = {
    "top level (1024 wide), one block's weights": [(3072, 1024), (1024, 1024), (2816, 1024), (2816, 1024), (1024, 2816)],
    "second level (512 wide), one block's weights": [(1536, 512), (512, 512), (1536, 512), (1536, 512), (512, 1536)],
}


def measure(shapes: list[tuple[int, int]], copies: int, rows: int, rounds: int) -> dict:
    """Median seconds per pass over ``copies`` copies of ``shapes``, per form (module docstring)."""
    weights = [torch.randn(o, i) / i**0.5 for _ in range(copies) for (o, i) in shapes]
    bias = [torch.randn(w.shape[0]) for w in weights]
    wb = [w.bfloat16() for w in weights]
    bb = [b.bfloat16() for b in bias]
    packed = [torch.ops.mkldnn._reorder_linear_weight(w) for w in wb]
    dst = [torch.empty_like(w) for w in wb]
    xs = {w.shape[1]: torch.randn(rows, w.shape[1]) for w in weights}
    xb = {k: v.bfloat16() for k, v in xs.items()}
    linear = torch.ops.mkldnn._linear_pointwise

    def f32() -> None:
        for w, b in zip(weights, bias, strict=True):
            out = torch.mm(w, xs[w.shape[1]].T).T.contiguous()
            out += b

    forms = {
        "f32 W@xT": f32,
        "bf16 F.linear": lambda: [F.linear(xb[w.shape[1]], w, b) for w, b in zip(wb, bb, strict=True)],
        "bf16 W@xT": lambda: [torch.mm(w, xb[w.shape[1]].T) for w in wb],
        "bf16 packed": lambda: [linear(xb[w.shape[1]], p, b, "none", [], "")
                                for w, p, b in zip(wb, packed, bb, strict=True)],
        "copy bf16": lambda: [d.copy_(w) for d, w in zip(dst, wb, strict=True)],
        "sum bf16": lambda: [w.sum() for w in wb],
    }
    for w, p, b in zip(wb[:3], packed[:3], bb[:3], strict=True):  # the packed product is the same one
        x = xb[w.shape[1]]
        torch.testing.assert_close(linear(x, p, b, "none", [], ""), F.linear(x, w, b))
    times: dict[str, list[float]] = {k: [] for k in forms}
    for _ in range(rounds + 1):
        for name, fn in forms.items():
            start = time.perf_counter()
            fn()
            times[name].append(time.perf_counter() - start)
    times = {k: v[1:] for k, v in times.items()}  # the first round warms up
    nbytes = sum(w.numel() for w in weights) * 2
    out = {"bf16_bytes": nbytes, "rows": rows, "copies": copies, "forms": {}}
    for name, ts in times.items():
        med = statistics.median(ts)
        out["forms"][name] = {
            "median_s": med,
            "bf16_gb_per_s": nbytes / med / 1e9,
            "f32_time_over_this": statistics.median(a / b for a, b in zip(times["f32 W@xT"], ts, strict=True)),
        }
    return out


def main(argv: list[str] | None = None) -> None:
    parser = cli.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=cli.positive_int, nargs="+", default=[1, 2])
    parser.add_argument("--rows", type=cli.positive_int, default=2)
    parser.add_argument("--rounds", type=cli.positive_int, default=15)
    parser.add_argument("--blocks", type=cli.positive_int, default=6,
                        help="copies of the top level's block weights cycled (out of cache)")
    parser.add_argument("--tag", default="", help="suffix of the results file name")
    cli.add_debug_argument(parser)
    args = parser.parse_args(argv)
    results = []
    for threads in args.threads:
        torch.set_num_threads(threads)
        for (group, shapes), copies in zip(GROUPS.items(), (args.blocks, 8), strict=True):
            torch.manual_seed(0)
            r = measure(shapes, copies, args.rows, args.rounds)
            r.update({"group": group, "threads": threads})
            results.append(r)
            print(f"{group}, {threads} thread(s), {r['bf16_bytes'] / 1e6:.0f} MB bf16, {args.rows} rows:")
            for name, f in r["forms"].items():
                print(f"  {name:14s} {f['median_s'] * 1e3:8.2f} ms  {f['bf16_gb_per_s']:6.1f} GB/s of bf16 "
                      f"weights  f32/this {f['f32_time_over_this']:.2f}")
    machine = {"cpu_flags": cpu_flags(), "load_average_1_5_15_min": list(os.getloadavg()),
               "torch": torch.__version__}
    RESULTS.mkdir(exist_ok=True)
    tag = f"_{args.tag}" if args.tag else ""
    out = RESULTS / f"bf16_gemv{tag}.json"
    out.write_text(json.dumps({"machine": machine, "results": results}, indent=2))
    print(f"wrote {out}")


if __name__ == "__main__":
    cli.run(main)
