"""Where FractalMAR-64 sampling loses time against its FLOP bound, part by part (issue 23, target 2).

Each part is timed against the pinned reference rate (``machine.py``: square 2048 products,
the best seen), alternated with it in one process, best of ``--rounds`` (what a shared machine
lets through; the best catches its quiet moments):

1. one top-level pass (``MARLevel.hidden``: batch 2 with guidance x 261 tokens x 1024 wide, 32
   blocks), its executed FLOPs counted by ``torch.utils.flop_counter``; with ``--profile`` its
   operators by shape (self CPU time);
2. the products at the shapes sampling runs them (top level: 522 rows; second level: 2 x n x 21
   rows for the n children the top level decides in a step, 1 to 7), weights cycled over several
   blocks so they come from memory as in a draw: ``F.linear`` (what runs), MKL's prepacked
   product (``torch.ops.mkl._mkl_linear``, checked bit for bit against ``F.linear``) and the
   ``W @ x^T`` form ``fractalkit.nn.Linear`` takes for at most 64 rows;
3. attention over the top level's 261 keys (16 heads of 64): the flash kernel of
   ``scaled_dot_product_attention`` against the explicit form (two batched products and a
   softmax, ``fractalkit.nn.attention.explicit_attention``), and GELU over the MLP's width.

Run: ``PYTHONPATH=. python benchmarks/mar_sampling_parts.py --threads 1 --rounds 6``
(writes ``benchmarks/results/mar_sampling_parts[_TAG].json``, with the load average).
"""

from __future__ import annotations

import json
import os
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parent))
from machine import cpu_flags, rate_of, reference_rates, remeasure

from fractalkit import cli
from fractalkit.hostmem import keep_freed_host_memory
from fractalkit.imagenet.presets import build_preset
from fractalkit.nn.attention import explicit_attention

RESULTS = Path(__file__).resolve().parent / "results"


def _best(fn, repeats: int) -> float:
    """Fewest seconds of ``repeats`` calls of ``fn`` after one warm-up call."""
    fn()
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - start)
    return best


def top_pass(rounds: int, profile: bool) -> dict:
    """GFLOP/s of whole top-level passes of FractalMAR-64 (random weights, seed 0), best of ``rounds``."""
    from torch.utils.flop_counter import FlopCounterMode

    torch.manual_seed(0)
    top = build_preset("fractalmar-in64").eval().levels[0]
    g = torch.Generator().manual_seed(0)
    k, p = top.num_children, top.split(torch.zeros(1, 3, 64, 64)).shape[-1]
    children = torch.randint(0, 256, (2, k, p), generator=g)  # [2, 256, 48]
    masked = torch.rand(2, k, generator=g) < 0.8
    prefix = torch.randn(2, top.num_prefix, top.width, generator=g)
    with torch.no_grad():
        counter = FlopCounterMode(display=False)
        with counter:
            top.hidden(children, masked, prefix)
        flops = counter.get_total_flops()
        rates = [flops / _best(lambda: top.hidden(children, masked, prefix), 1) for _ in range(rounds)]
        out = {"counted_gflops": flops / 1e9, "gflops_per_s": [r / 1e9 for r in rates]}
        if profile:
            with torch.profiler.profile(record_shapes=True) as prof:
                top.hidden(children, masked, prefix)
            rows = prof.key_averages(group_by_input_shape=True)
            total = sum(e.self_cpu_time_total for e in rows)
            out["operators"] = sorted(
                ({"name": e.key, "shapes": str(e.input_shapes), "calls": e.count,
                  "self_share": e.self_cpu_time_total / total} for e in rows),
                key=lambda r: -r["self_share"])[:15]
    return out


TOP = [(4096, 1024), (1024, 4096), (3072, 1024), (1024, 1024)]  # fc1, fc2, qkv, proj (out, in)
SECOND = [(1536, 512), (512, 512), (2048, 512), (512, 2048)]  # qkv, proj, fc1, fc2


def products(rounds: int) -> list[dict]:
    """GFLOP/s of one block's four products at each sampling shape, three forms, best of ``rounds``."""
    torch.manual_seed(0)
    rows = []
    for level, m, shapes, blocks in [("g1", 522, TOP, 2), ("g2", 42, SECOND, 8),
                                     ("g2", 168, SECOND, 8), ("g2", 294, SECOND, 8)]:
        weights = [[(torch.randn(o, i) * 0.02, torch.randn(o) * 0.02) for o, i in shapes] for _ in range(blocks)]
        packed = [[torch.ops.mkl._mkl_reorder_linear_weight(w, m) for w, _ in blk] for blk in weights]
        xs = [torch.randn(m, i) for _, i in shapes]
        flops = blocks * sum(2 * m * o * i for o, i in shapes)
        forms = {
            "F.linear": lambda w, b, pw, x: F.linear(x, w, b),
            "mkl_packed": lambda w, b, pw, x: torch.ops.mkl._mkl_linear(x, pw, w, b, x.shape[0]),
            "W@x^T": lambda w, b, pw, x: torch.mm(w, x.T).T.contiguous() + b,
        }
        same = all(torch.equal(F.linear(x, w, b), forms["mkl_packed"](w, b, pw, x))
                   for blk, pblk in zip(weights, packed, strict=True)
                   for (w, b), pw, x in zip(blk, pblk, xs, strict=True))
        row = {"level": level, "rows": m, "mkl_packed_bit_identical": same}
        for name, form in forms.items():
            def run(form=form, weights=weights, packed=packed, xs=xs):
                for blk, pblk in zip(weights, packed, strict=True):
                    for (w, b), pw, x in zip(blk, pblk, xs, strict=True):
                        form(w, b, pw, x)
            row[f"{name}_gflops_per_s"] = max(flops / _best(run, 2) for _ in range(rounds)) / 1e9
        print(json.dumps(row), flush=True)
        rows.append(row)
    return rows


def attention(rounds: int) -> dict:
    """Milliseconds of attention over 261 keys (flash, explicit) and GELU over [2, 261, 4096], best of ``rounds``."""
    torch.manual_seed(0)
    qkv = torch.randn(2, 261, 3, 16, 64)  # the packed product's layout, as in Attention.forward
    q, k, v = (t.transpose(1, 2) for t in qkv.unbind(2))
    h = torch.randn(2, 261, 4096)
    flops = 4 * 2 * 16 * 261 * 261 * 64
    times = {
        "flash_ms": min(_best(lambda: F.scaled_dot_product_attention(q, k, v), 3) for _ in range(rounds)),
        "explicit_ms": min(_best(lambda: explicit_attention(q, k, v, causal=False), 3) for _ in range(rounds)),
        "gelu_ms": min(_best(lambda: F.gelu(h), 3) for _ in range(rounds)),
    }
    out = {name: 1e3 * t for name, t in times.items()}
    out["flash_gflops_per_s"] = flops / times["flash_ms"] / 1e9
    out["counted_gflops_per_call"] = flops / 1e9
    return out


def main(argv: list[str] | None = None) -> None:
    parser = cli.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=cli.positive_int, default=None, help="torch threads (default: torch's)")
    parser.add_argument("--rounds", type=cli.positive_int, default=6, help="timings of each part (the best counts)")
    parser.add_argument("--profile", action="store_true", help="also profile one top-level pass by operator")
    parser.add_argument("--tag", default="", help="suffix of the results file name")
    cli.add_debug_argument(parser)
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    keep_freed_host_memory()  # as throughput.py: no page faults for the freed activations
    machine = reference_rates("cpu")
    result = {"top_pass": top_pass(args.rounds, args.profile), "products": products(args.rounds),
              "attention": attention(args.rounds)}
    remeasure(machine, "after")
    rate = rate_of(machine) / 1e9
    best = max(result["top_pass"]["gflops_per_s"])
    result["top_pass"]["x_of_bound"] = rate / best
    for row in result["products"]:
        row["F.linear_fraction_of_rate"] = row["F.linear_gflops_per_s"] / rate
    result["attention"]["flash_fraction_of_rate"] = result["attention"]["flash_gflops_per_s"] / rate
    print(f"reference {rate:.1f} GFLOP/s; top-level pass best {best:.1f} GFLOP/s: {rate / best:.3f} x of bound")
    print(json.dumps(result["attention"]))
    machine.update({"cpu_flags": cpu_flags(), "load_average_1_5_15_min": list(os.getloadavg()),
                    "torch": torch.__version__})
    RESULTS.mkdir(exist_ok=True)
    out = RESULTS / f"mar_sampling_parts{'_' + args.tag if args.tag else ''}.json"
    out.write_text(json.dumps({"machine": machine, **result}, indent=2))
    print(f"wrote {out}")


if __name__ == "__main__":
    cli.run(main)
