"""The matrix products of one training step at their exact shapes, timed in fp32 and bf16.

Is a 2x bf16 training step there to take on this CPU? One fp32 training step of a preset
(forward, backward) runs under a dispatch mode that records every product the step executes
(``mm``, ``addmm``, ``bmm``, ``baddbmm``: the forward's ``x @ W^T``, the backward's grad-input
and grad-weight products, the explicit attention products) with its shapes and strides, and
which Linear's forward or backward it belongs to. The recorded products are then re-run on fresh
tensors of the same shapes and strides, in float32 and in bfloat16, alternated in one process,
at each ``--threads`` setting; the ceiling of a bf16 step's products is the fp32 products' time
over the bf16 products' time (so FLOP-weighted: each product counts by its time at its shape).

``--profile`` also profiles one fp32 and one bf16-autocast step (``torch.profiler``, self CPU
time by operator, forward and backward together) and writes the top operators of each, and
the casts, fills and reductions split by input shape. ``--no-products`` skips the timing;
``--bf16-step`` also times the products the bf16-autocast step itself records (autocast's
copies may lay them out differently from the fp32 step's).

Run: ``python benchmarks/training_products.py --preset fractalmar-in64 --threads 1 2``
(writes benchmarks/results/training_products_<preset>[_tag].json). About 8 GiB for the paper
models' step; the timed products themselves need little memory.
"""

from __future__ import annotations

import json
import sys
import time
from collections import Counter
from pathlib import Path

import torch
from torch.utils._python_dispatch import TorchDispatchMode

sys.path.insert(0, str(Path(__file__).resolve().parent))
from machine import describe

from fractalkit import cli
from fractalkit.hostmem import keep_freed_host_memory
from fractalkit.imagenet.presets import PRESETS, build_preset

RESULTS = Path(__file__).resolve().parent / "results"
aten = torch.ops.aten
#: the operators whose time the profile also splits by input shape (casts, fills, reductions)
SHAPED_OPS = {"aten::copy_", "aten::fill_", "aten::sum", "aten::cat", "aten::add_", "aten::add",
              "aten::native_layer_norm_backward", "aten::_to_copy", "aten::mul"}
PRODUCTS = {aten.mm.default: "mm", aten.addmm.default: "addmm", aten.bmm.default: "bmm",
            aten.baddbmm.default: "baddbmm"}


def _flops(kind: str, shapes: list) -> int:
    if kind in ("mm", "addmm"):
        a, b = shapes[-2], shapes[-1]
        return 2 * a[0] * a[1] * b[1]
    a, b = shapes[-2], shapes[-1]
    return 2 * a[0] * a[1] * a[2] * b[2]


class _Record(TorchDispatchMode):
    """Counts each product by (kind, shapes, strides) as it is dispatched."""

    def __init__(self) -> None:
        super().__init__()
        self.seen: Counter = Counter()

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kind = PRODUCTS.get(func)
        if kind is not None:
            tensors = [a for a in args if isinstance(a, torch.Tensor)]
            key = (kind, tuple(tuple(t.shape) for t in tensors), tuple(tuple(t.stride()) for t in tensors),
                   tuple(a for a in args if not isinstance(a, torch.Tensor)))
            self.seen[key] += 1
        return func(*args, **(kwargs or {}))


def _step(model, x, y, bf16: bool) -> None:
    g = torch.Generator().manual_seed(0)
    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
        loss = model.loss(x, y, generator=g)
    loss.total.backward()
    model.zero_grad(set_to_none=True)


def record_step(name: str, profile: bool) -> tuple[Counter, Counter, dict]:
    """The products of one fp32 and one bf16 training step (batch 1), and optional profiles."""
    torch.manual_seed(0)
    model = build_preset(name).train()
    size = PRESETS[name].image_size
    g = torch.Generator().manual_seed(0)
    x = torch.randint(0, 256, (1, 3, size, size), generator=g)
    y = torch.randint(0, model.num_classes, (1,), generator=g)
    _step(model, x, y, False)  # warm-up
    seen = {}
    for bf16 in (False, True):
        with _Record() as rec:
            _step(model, x, y, bf16)
        seen[bf16] = rec.seen
    profiles = {}
    if profile:
        from torch.profiler import ProfilerActivity
        from torch.profiler import profile as run_profile

        for bf16 in (False, True):
            _step(model, x, y, bf16)  # warm (autocast, allocator)
            start = time.perf_counter()
            with run_profile(activities=[ProfilerActivity.CPU], record_shapes=True) as prof:
                _step(model, x, y, bf16)
            wall = time.perf_counter() - start
            by_shape = sorted(({"op": e.key, "shapes": str(e.input_shapes), "calls": e.count,
                                "self_cpu_ms": e.self_cpu_time_total / 1e3}
                               for e in prof.key_averages(group_by_input_shape=True)
                               if e.key in SHAPED_OPS and e.self_cpu_time_total > 0),
                              key=lambda r: -r["self_cpu_ms"])[:40]
            table = []
            for e in prof.key_averages():
                if e.self_cpu_time_total > 0:
                    table.append({"op": e.key, "calls": e.count, "self_cpu_ms": e.self_cpu_time_total / 1e3})
            table.sort(key=lambda r: -r["self_cpu_ms"])
            total = sum(r["self_cpu_ms"] for r in table)
            for r in table:
                r["share"] = r["self_cpu_ms"] / total
            profiles["bf16" if bf16 else "fp32"] = {"wall_s": wall, "self_cpu_total_ms": total, "ops": table[:40],
                                                    "by_shape": by_shape}
            print(f"--- {'bf16' if bf16 else 'fp32'} step profiled: {wall:.2f} s", flush=True)
            for r in table[:25]:
                print(f"  {r['op']:<55} {r['calls']:>7} {r['self_cpu_ms']:>10.1f} ms {100 * r['share']:5.1f}%")
            for r in by_shape[:25]:
                print(f"  {r['op']:<28} {r['shapes'][:90]:<90} {r['calls']:>5} {r['self_cpu_ms']:>9.1f} ms")
    del model
    return seen[False], seen[True], profiles


def _make(shape, stride, dtype):
    t = torch.empty_strided(shape, stride, dtype=dtype)
    t.copy_(torch.randn(shape))
    return t


def time_products(seen: Counter, rounds: int, budget_s: float) -> list[dict]:
    """Each recorded product in fp32 and bf16, alternated per round; times per call (s)."""
    rows = []
    for (kind, shapes, strides, extra), count in seen.items():
        func = next(f for f, k in PRODUCTS.items() if k == kind)
        row = {"kind": kind, "shapes": shapes, "strides": strides, "count": count,
               "gflop": _flops(kind, shapes) * count / 1e9, "fp32_s": [], "bf16_s": []}
        args = {dt: [_make(s, st, dt) for s, st in zip(shapes, strides, strict=True)] for dt in (torch.float32, torch.bfloat16)}
        flop = _flops(kind, shapes)
        reps = max(1, min(count, int(budget_s * 1e11 / max(flop, 1))))  # a few 1/100 s per shape
        for dt in args:
            func(*args[dt], *extra)  # warm-up
        for _ in range(rounds):
            for dt, key in ((torch.float32, "fp32_s"), (torch.bfloat16, "bf16_s")):
                start = time.perf_counter()
                for _ in range(reps):
                    func(*args[dt], *extra)
                row[key].append((time.perf_counter() - start) / reps)
        rows.append(row)
    return rows


def summarise(rows: list[dict]) -> dict:
    fp32 = sum(min(r["fp32_s"]) * r["count"] for r in rows)
    bf16 = sum(min(r["bf16_s"]) * r["count"] for r in rows)
    gflop = sum(r["gflop"] for r in rows)
    return {"products_gflop": gflop, "fp32_products_s": fp32, "bf16_products_s": bf16,
            "fp32_gflops_per_s": gflop / fp32, "bf16_gflops_per_s": gflop / bf16, "bf16_ceiling_x": fp32 / bf16}


def main(argv: list[str] | None = None) -> None:
    parser = cli.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--preset", default="fractalmar-in64", choices=sorted(PRESETS))
    parser.add_argument("--threads", nargs="+", type=cli.positive_int, default=[1, 2])
    parser.add_argument("--rounds", type=cli.positive_int, default=3, help="alternations per shape")
    parser.add_argument("--budget", type=cli.positive_float, default=0.3, help="rough seconds of fp32 work per shape and round")
    parser.add_argument("--profile", action="store_true", help="also profile one fp32 and one bf16 step")
    parser.add_argument("--no-products", action="store_true", help="profile only (with --profile)")
    parser.add_argument("--bf16-step", action="store_true",
                        help="also time the bf16 step's own products (its shapes and strides) both ways")
    parser.add_argument("--tag", default="")
    cli.add_debug_argument(parser)
    args = parser.parse_args(argv)
    keep_freed_host_memory()
    torch.set_num_threads(max(args.threads))
    fp32_seen, bf16_seen, profiles = record_step(args.preset, args.profile)
    result = {"machine": describe("cpu"), "preset": args.preset, "profiles": profiles,
              "bf16_step_products_gflop": sum(_flops(k[0], k[1]) * c for k, c in bf16_seen.items()) / 1e9,
              "bf16_step_product_kinds": sorted({k[0] for k in bf16_seen}), "by_threads": {}}
    for threads in [] if args.no_products else args.threads:
        torch.set_num_threads(threads)
        if args.bf16_step:  # the products as the bf16 step runs them (autocast's layouts)
            bf16_rows = time_products(bf16_seen, args.rounds, args.budget)
            result.setdefault("bf16_step_by_threads", {})[str(threads)] = {
                "summary": summarise(bf16_rows), "products": bf16_rows}
            print(f"threads {threads}, the bf16 step's own products: " + json.dumps(summarise(bf16_rows)), flush=True)
        rows = time_products(fp32_seen, args.rounds, args.budget)
        summary = summarise(rows)
        print(f"threads {threads}: " + json.dumps(summary), flush=True)
        rows.sort(key=lambda r: -min(r["fp32_s"]) * r["count"])
        for r in rows[:30]:
            f, b = min(r["fp32_s"]), min(r["bf16_s"])
            print(f"  {r['kind']:<7} {r['shapes']!s:<48} {r['strides']!s:<40} x{r['count']:<6}"
                  f" fp32 {f * r['count']:7.3f} s {_flops(r['kind'], r['shapes']) / f / 1e9:6.1f} GF/s"
                  f"  bf16 {b * r['count']:7.3f} s {_flops(r['kind'], r['shapes']) / b / 1e9:6.1f} GF/s  {f / b:4.2f}x")
        result["by_threads"][str(threads)] = {"summary": summary, "products": rows}
    RESULTS.mkdir(exist_ok=True)
    out = RESULTS / f"training_products_{args.preset}{'_' + args.tag if args.tag else ''}.json"
    out.write_text(json.dumps(result, indent=1))
    print(f"wrote {out}")


if __name__ == "__main__":
    cli.run(main)
