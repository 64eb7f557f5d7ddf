"""Explicit attention against ``scaled_dot_product_attention`` on the CPU, by key length.

What chose :data:`fractalkit.nn.attention.EXPLICIT_MIN_KEYS` and ``EXPLICIT_MAX_KEYS`` (issue
23): for each (L keys, E head dim, causal) about ``--tokens`` tokens per call (N = tokens // L
sequences, 4 heads), q/k/v as the layer makes them (transposed views of a packed ``[N, L, 3, H,
E]`` product), the forward and the backward of :func:`fractalkit.nn.attention.explicit_attention`
and of SDPA are timed in turn (the order flips each round), and the median ratios explicit/SDPA
are printed, forward / backward / both. ``--clock cpu`` times in process CPU time (steadier on a
shared machine at one thread; at two threads it counts spinning threads too), ``wall`` in
seconds. Prints the rows of the table in ``fractalkit/nn/attention.py``.

``--bf16`` times both in bfloat16 (q, k, v as bf16 autocast's products make them).

Run: ``PYTHONPATH=. python benchmarks/attention_paths.py --threads 2 [--clock cpu] [--bf16]``
(writes benchmarks/results/attention_paths[_TAG].json).
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
from fractalkit.nn.attention import explicit_attention

RESULTS = Path(__file__).resolve().parent / "results"
LENGTHS = (3, 9, 17, 21, 33, 49, 69)
HEAD_DIMS = (16, 32, 64)


def time_pair(n: int, heads: int, length: int, e: int, causal: bool, rounds: int, clock,
              dtype: torch.dtype = torch.float32) -> dict:
    """Median forward, backward and total ratios explicit / SDPA over ``rounds`` rounds."""
    kernels = {
        "sdpa": lambda q, k, v: F.scaled_dot_product_attention(q, k, v, is_causal=causal),
        "explicit": lambda q, k, v: explicit_attention(q, k, v, causal=causal),
    }
    times: dict[str, list] = {name: [] for name in kernels}
    for r in range(rounds + 1):  # round 0 warms up
        for name in (list(kernels) if r % 2 else list(reversed(kernels))):
            qkv = torch.randn(n, length, 3, heads, e, dtype=dtype, requires_grad=True)
            q, k, v = (t.transpose(1, 2) for t in qkv.unbind(2))
            t0 = clock()
            out = kernels[name](q, k, v)
            t1 = clock()
            out.backward(torch.ones_like(out))
            t2 = clock()
            if r:
                times[name].append((t1 - t0, t2 - t1))
    pairs = list(zip(times["explicit"], times["sdpa"], strict=True))
    med = statistics.median
    return {
        "sdpa_ms": [1e3 * med(t[i] for t in times["sdpa"]) for i in (0, 1)],
        "explicit_ms": [1e3 * med(t[i] for t in times["explicit"]) for i in (0, 1)],
        "ratio_forward": med(a[0] / b[0] for a, b in pairs),
        "ratio_backward": med(a[1] / b[1] for a, b in pairs),
        "ratio_total": med(sum(a) / sum(b) for a, b in pairs),
    }


def main(argv: list[str] | None = None) -> None:
    parser = cli.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=cli.positive_int, default=2)
    parser.add_argument("--tokens", type=cli.positive_int, default=35000, help="tokens per call (N * L)")
    parser.add_argument("--rounds", type=cli.positive_int, default=6)
    parser.add_argument("--clock", choices=["wall", "cpu"], default="wall")
    parser.add_argument("--bf16", action="store_true",
                        help="q, k, v in bfloat16 (as bf16 autocast's products make them): SDPA's bf16 "
                             "kernel against the explicit form's bf16 path (float32 scores)")
    parser.add_argument("--lengths", nargs="+", type=cli.positive_int, default=list(LENGTHS))
    parser.add_argument("--head-dims", nargs="+", type=cli.positive_int, default=list(HEAD_DIMS))
    parser.add_argument("--heads", type=cli.positive_int, default=4)
    parser.add_argument("--tag", default="", help="suffix of the results file name")
    cli.add_debug_argument(parser)
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    clock = time.process_time if args.clock == "cpu" else time.perf_counter
    rows = []
    dtype = torch.bfloat16 if args.bf16 else torch.float32
    for e in args.head_dims:
        for length in args.lengths:
            for causal in (False, True):
                row = {"keys": length, "head_dim": e, "causal": causal, "heads": args.heads,
                       "sequences": args.tokens // length, "dtype": str(dtype)}
                row |= time_pair(row["sequences"], args.heads, length, e, causal, args.rounds, clock, dtype)
                rows.append(row)
                print(f"| {length}, {e}{', causal' if causal else ''} | {row['ratio_forward']:.2f} / "
                      f"{row['ratio_backward']:.2f} / {row['ratio_total']:.2f} |", flush=True)
    machine = {"cpu_flags": cpu_flags(), "threads": args.threads, "clock": args.clock,
               "torch": torch.__version__, "load_average": list(os.getloadavg())}
    RESULTS.mkdir(exist_ok=True)
    out = RESULTS / f"attention_paths{'_' + args.tag if args.tag else ''}.json"
    out.write_text(json.dumps({"machine": machine, "rows": rows}, indent=2))
    print(f"wrote {out}")


if __name__ == "__main__":
    cli.run(main)
