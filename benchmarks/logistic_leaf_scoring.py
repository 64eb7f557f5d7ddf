"""Scoring cost of the discretised-logistic leaf: the observed-bin path against all V bins.

Shape letters: M rows (leaf instances), E = 1 element each, D condition width, K components,
V values.

For V in (256, 65,536) it times one forward and backward of the leaf's scoring (the training
path) with :meth:`DiscretizedLogisticLeaf.observed_log_probs` (one CDF difference per row and
component) and with the generic path of :class:`fractalkit.leaves.Leaf` (all V bins of
``element_logits``, then ``log_softmax`` and ``gather``: what the leaf did before), and the
categorical leaf of the same V for reference. Times are CPU process time per row (one thread),
the median of ``--repeats``; rows are fewer where the all-bins path would need gigabytes.

Usage::

    PYTHONPATH=. python benchmarks/logistic_leaf_scoring.py --out benchmarks/results/logistic_leaf_scoring.json
"""

from __future__ import annotations

import json
import statistics
import time
from pathlib import Path

import torch

from fractalkit import cli
from fractalkit.config import BuildContext
from fractalkit.leaves import CategoricalLeafConfig, DiscretizedLogisticLeafConfig, Leaf


def seconds_per_row(fn, leaf: Leaf, rows: int, num_values: int, repeats: int, dim: int = 64) -> float:
    """Median CPU seconds per row of forward + backward of ``fn(leaf, x, cond)``."""
    g = torch.Generator().manual_seed(0)
    cond = torch.randn(rows, 1, dim, generator=g)
    x = torch.randint(0, num_values, (rows, 1), generator=g)
    times = []
    for _ in range(repeats):
        leaf.zero_grad(set_to_none=True)
        t = time.process_time()
        fn(leaf, x, cond).sum().backward()
        times.append(time.process_time() - t)
    return statistics.median(times) / rows


def main(argv: list[str] | None = None) -> None:
    """Time both paths for V = 256 and 65,536; print a table and write JSON."""
    ap = cli.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--repeats", type=cli.positive_int, default=5)
    ap.add_argument("--out", type=Path, default=Path("benchmarks/results/logistic_leaf_scoring.json"))
    cli.add_debug_argument(ap)
    args = ap.parse_args(argv)
    torch.set_num_threads(1)
    results = []
    for v, rows_full in ((256, 4096), (65536, 64)):
        logistic = DiscretizedLogisticLeafConfig(num_values=v, num_components=10).build(BuildContext(64, 1, (1,)))
        categorical = CategoricalLeafConfig(num_values=v).build(BuildContext(64, 1, (1,)))
        row = {
            "num_values": v,
            "observed_bin_s_per_row": seconds_per_row(type(logistic).observed_log_probs, logistic, 4096, v, args.repeats),
            "all_bins_s_per_row": seconds_per_row(Leaf.observed_log_probs, logistic, rows_full, v, args.repeats),
            "categorical_s_per_row": seconds_per_row(Leaf.observed_log_probs, categorical, rows_full, v, args.repeats),
            "rows_all_bins": rows_full,
        }
        row["speed_up"] = row["all_bins_s_per_row"] / row["observed_bin_s_per_row"]
        results.append(row)
        print(json.dumps(row), flush=True)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(results, indent=2))
    print("| V | observed bin (µs / row) | all V bins, before (µs / row) | speed-up | categorical leaf (µs / row) |")
    print("|---|---|---|---|---|")
    for r in results:
        print(f"| {r['num_values']} | {r['observed_bin_s_per_row'] * 1e6:.1f} | {r['all_bins_s_per_row'] * 1e6:.1f} | "
              f"{r['speed_up']:.0f}x | {r['categorical_s_per_row'] * 1e6:.1f} |")


if __name__ == "__main__":
    cli.run(main)
