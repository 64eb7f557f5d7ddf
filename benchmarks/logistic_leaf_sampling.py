"""Sampling cost of the discretised-logistic leaf: all V bins (``sampling="bins"``) against the
direct draw (``sampling="direct"``: component, inverse CDF, bin).

Shape letters: M rows decided together (one leaf call), E = 1 element each, D condition width,
K = 10 components, V values.

For V in (256, 65,536) and M in (1, 10) (one clip, or the audio example's 10 clips per decoding
step) it times :meth:`DiscretizedLogisticLeaf.decode` at temperature 1 without guidance, under
``torch.no_grad``, with each sampling mode. Times are CPU process time per drawn value (one
thread), the median of ``--repeats`` calls after one warm-up call; the JSON records the load
average (the development machine is shared).

Usage::

    PYTHONPATH=. python benchmarks/logistic_leaf_sampling.py --out benchmarks/results/logistic_leaf_sampling.json
"""

from __future__ import annotations

import json
import os
import statistics
import time
from pathlib import Path

import torch

from fractalkit import cli
from fractalkit.config import BuildContext
from fractalkit.leaves import DiscretizedLogisticLeafConfig
from fractalkit.protocol import DecodeContext, SampleOptions


def seconds_per_value(num_values: int, rows: int, sampling: str, repeats: int, dim: int = 64) -> float:
    """Median CPU seconds per drawn value of one ``decode`` call of ``rows`` rows."""
    torch.manual_seed(0)
    leaf = DiscretizedLogisticLeafConfig(num_values=num_values, num_components=10).build(BuildContext(dim, 1, (1,)))
    leaf.sampling = sampling
    g = torch.Generator().manual_seed(0)
    cond = torch.randn(rows, 1, dim, generator=g)
    x = torch.zeros(rows, 1, dtype=torch.long)
    known = torch.zeros(rows, 1, dtype=torch.bool)
    ctx = DecodeContext(SampleOptions(), g, guided=False, scale=1.0)
    times = []
    with torch.no_grad():
        leaf.decode(x, known, cond, ctx)  # warm-up
        for _ in range(repeats):
            t = time.process_time()
            leaf.decode(x, known, cond, ctx)
            times.append(time.process_time() - t)
    return statistics.median(times) / rows


def main(argv: list[str] | None = None) -> None:
    """Time both sampling modes for V = 256 and 65,536; print a table and write JSON."""
    ap = cli.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--repeats", type=cli.positive_int, default=20)
    ap.add_argument("--out", type=Path, default=Path("benchmarks/results/logistic_leaf_sampling.json"))
    cli.add_debug_argument(ap)
    args = ap.parse_args(argv)
    torch.set_num_threads(1)
    results = []
    for v in (256, 65536):
        for rows in (1, 10):
            row = {"num_values": v, "rows": rows, "load_average_1min": os.getloadavg()[0],
                   "bins_s_per_value": seconds_per_value(v, rows, "bins", args.repeats),
                   "direct_s_per_value": seconds_per_value(v, rows, "direct", args.repeats)}
            row["speed_up"] = row["bins_s_per_value"] / row["direct_s_per_value"]
            results.append(row)
            print(json.dumps(row), flush=True)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(results, indent=2))
    print("| V | rows per call | all V bins (µs / value) | direct (µs / value) | speed-up |")
    print("|---|---|---|---|---|")
    for r in results:
        print(f"| {r['num_values']} | {r['rows']} | {r['bins_s_per_value'] * 1e6:.1f} | "
              f"{r['direct_s_per_value'] * 1e6:.1f} | {r['speed_up']:.0f}x |")


if __name__ == "__main__":
    cli.run(main)
