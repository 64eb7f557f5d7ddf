"""One KV-cached decoding step of a FractalAR-64 level at a given cache length: float32, bf16
autocast with bf16 caches (the form before issue 23's third round), and bf16 autocast as it runs
now (float32 caches, float32 attention per step, SwiGLU's w1 and w3 as one packed product).

``profile_levels.py --sampling`` times the first top-level steps of a draw, where the top
level's caches hold a few tokens; a whole FractalAR-64 image ends with 256. This times steps of
one level's blocks (2 rows: batch 1 with guidance) with the cache pre-filled to ``--at`` tokens,
the three forms interleaved in one process (a round runs each once; medians over rounds; by default in process CPU time, which
on a shared machine leaves out the time other jobs hold the core), inside
``fractalkit.nn.linear.packed_weights`` as sampling opens it. "before" is reproduced by giving
the blocks bf16 caches and turning the stacked SwiGLU product off, so the figure isolates this
round's two changes, nothing else.

Run: ``python benchmarks/decode_steps.py --threads 1 --rounds 5`` (writes
``benchmarks/results/decode_steps<tag>.json``; about a minute on a quiet machine).
"""

from __future__ import annotations

import json
import os
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from machine import cpu_flags

from fractalkit import cli
from fractalkit.imagenet.presets import build_preset
from fractalkit.nn import blocks as blocks_module
from fractalkit.nn.attention import KVCache
from fractalkit.nn.linear import packed_weights

RESULTS = Path(__file__).resolve().parent / "results"
FORMS = ("fp32", "bf16 before", "bf16 now")


CLOCK = time.perf_counter


def time_steps(level, at: int, steps: int, form: str) -> float:
    """Seconds per decoding step of ``level``'s blocks, the caches filled to ``at`` tokens."""
    backbone = level.backbone
    bf16 = form != "fp32"
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
        caches = backbone.new_caches(2, level.num_children, level.pos_embed)
        if form == "bf16 before":
            caches = [KVCache(2, c.keys.shape[1], c.keys.shape[3], c.capacity, "cpu", torch.bfloat16)
                      for c in caches]
        for c in caches:
            c.keys.normal_()
            c.values.normal_()
            c.length = at
        x = torch.randn(2, 1, level.width)
        saved = blocks_module.packed_pair
        if form == "bf16 before":
            blocks_module.packed_pair = lambda *args: None
        try:
            start = CLOCK()
            for j in range(at, at + steps):
                backbone(x, causal=True, rope=level._rope(j, j + 1), caches=caches)
            return (CLOCK() - start) / steps
        finally:
            blocks_module.packed_pair = saved


def main(argv: list[str] | None = None) -> None:
    parser = cli.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=cli.positive_int, default=1)
    parser.add_argument("--rounds", type=cli.positive_int, default=5)
    parser.add_argument("--tag", default="")
    parser.add_argument("--clock", choices=("wall", "cpu"), default="cpu",
                        help="cpu: this process's CPU time (what one thread spends on a shared machine; "
                        "with more threads it sums them); wall: elapsed time")
    cli.add_debug_argument(parser)
    args = parser.parse_args(argv)
    global CLOCK
    CLOCK = time.process_time if args.clock == "cpu" else time.perf_counter
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    model = build_preset("fractalar-in64").eval()
    cases = [(0, 8, 3), (0, 128, 3), (0, 250, 3), (1, 0, 16)]  # (level, cache length, steps)
    rounds = {0: args.rounds, 1: 3 * args.rounds}  # the second level's steps are short
    rows = []
    with packed_weights():
        for i, at, steps in cases:
            level = model.levels[i]
            time_steps(level, at, 1, "bf16 now")  # packs the weights once
            times = {f: [] for f in FORMS}
            for _ in range(rounds[i]):
                for form in FORMS:
                    times[form].append(time_steps(level, at, steps, form))
            med = {f: statistics.median(v) for f, v in times.items()}
            row = {"level": f"g{i + 1}", "cache_tokens": at, "steps": steps,
                   "ms_per_step": {f: 1e3 * med[f] for f in FORMS},
                   "speedup_over_fp32": {f: med["fp32"] / med[f] for f in FORMS[1:]},
                   "now_over_before": med["bf16 before"] / med["bf16 now"], "raw_s": times}
            rows.append(row)
            print(f"g{i + 1}, {at} cached tokens: " + ", ".join(f"{f} {1e3 * med[f]:.2f} ms" for f in FORMS)
                  + f"; bf16 over fp32 {row['speedup_over_fp32']['bf16 before']:.2f}x before, "
                  f"{row['speedup_over_fp32']['bf16 now']:.2f}x now")
    out = RESULTS / f"decode_steps{'_' + args.tag if args.tag else ''}.json"
    out.write_text(json.dumps({"threads": args.threads, "rounds": args.rounds, "clock": args.clock, "torch": torch.__version__,
                               "cpu_flags": cpu_flags(), "load_average": os.getloadavg(), "rows": rows},
                              indent=1))
    print(f"wrote {out}")


if __name__ == "__main__":
    cli.run(main)
