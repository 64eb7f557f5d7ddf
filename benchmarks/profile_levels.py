"""Where the time goes, level by level: a training step, or sampling with ``--sampling``.

Training: times the forward pass of each level's transformer and of the leaf with module hooks
(the backward pass is timed as a whole), beside the forward FLOPs each executes
(benchmarks/cost_table.py), so the achieved rate per level shows which level is inefficient.

Sampling: draws with the preset's published settings, times ``--steps`` top-level steps after
a warm-up (one step; three with ``--compile``), and splits each top-level step's time into each
generator's own share (its time minus its child's). For AR levels it also gives the weight
bytes streamed per top-level step and the achieved GB/s, for a MAR top level its GFLOP/s; under
a MAR top level, each level's executed GFLOP over the timed steps and the time over its FLOP
bound, at the pinned reference rate (``machine.rate_of``: the best product measured before and
after the timed steps).

``--bf16`` draws under bf16 autocast; ``--alternate R`` times R pairs of fp32 and bf16 draws of
one model in turn in one process and reports the pair-by-pair speed-ups, level by level (what
to quote on a shared machine, where separate runs drift by 2x); ``--compare-packing R`` times R
pairs of bf16 draws without and with ``fractalkit.nn.Linear``'s prepacked bf16 weights.

Run: ``python benchmarks/profile_levels.py --preset fractalmar-in64 --batch 1``
(writes benchmarks/results/profile_<preset>_b<batch>.json) or
``python benchmarks/profile_levels.py --preset fractalar-in64 --batch 1 --sampling --steps 6``
(writes benchmarks/results/profile_sampling_<preset>_b<batch>.json).
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import os
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from cost_table import level_flops, mean_mask_ratio
from machine import cpu_flags, rate_of, reference_rates, remeasure
from throughput import sampling_cost

from fractalkit import cli
from fractalkit.imagenet.presets import PRESETS, build_preset
from fractalkit.levels.base import Level

RESULTS = Path(__file__).resolve().parent / "results"


class _Stop(Exception):
    """Ends a profiled draw after the requested number of top-level steps."""


def profile_sampling(preset: str, batch: int, steps: int, compile: bool = False,
                     bf16: bool = False, model=None, start: int = 1) -> dict:
    """Each generator's own seconds per top-level step of a draw (see the module docstring).

    ``model``: the preset's model, already built (eval mode), to time several draws of one
    model in one process (``--alternate``); None builds it from seed 0. ``start``: the top-level
    steps run before the timed ones (at least the warm-up: 1, compiled 3); a MAR top level's
    first steps decide one child each, its middle ones 3-5 (the cosine schedule), so the levels
    below do more work per step there.
    """
    with torch.device("meta"):
        meta = build_preset(preset)
    forward = level_flops(meta, executed=True, ratio=1.0)
    if model is None:
        torch.manual_seed(0)
        model = build_preset(preset).eval()
        if compile:
            model.compile()
    options = PRESETS[preset].sampling
    guided = 2 if options.guidance != 1.0 else 1
    gens = model.levels
    inclusive = [0.0] * len(gens)
    patched = []
    for i, gen in enumerate(gens[1:], start=1):  # the top level is timed by the callback
        def timed(*args, _decode=gen.decode, _i=i, **kwargs):
            start = time.perf_counter()
            out = _decode(*args, **kwargs)
            inclusive[_i] += time.perf_counter() - start
            return out

        gen.decode = timed  # instance attribute: shadows the method for this model only
        patched.append(gen)
    marks: list[float] = []

    # Warm-up: one top-level step; compiled, three (the second and third retrace with a
    # symbolic KV-cache length and for the last slot of the middle level's cache).
    warmup = max(start, 3 if compile else 1)

    decided: list[float] = []  # fraction of the instance's elements decided at each mark

    def callback(progress) -> None:
        if progress.step == warmup:  # warm-up done: start counting
            inclusive[:] = [0.0] * len(gens)
            marks.clear()
            decided.clear()
        marks.append(time.perf_counter())
        decided.append(float(progress.decided.float().mean()))
        if progress.step >= warmup + steps:
            raise _Stop

    y = torch.arange(batch) % max(model.num_classes, 1)
    g = torch.Generator().manual_seed(0)
    try:
        with contextlib.suppress(_Stop), torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
            model.sample(y=y, options=dataclasses.replace(options, callback=callback), generator=g)
    finally:
        for gen in patched:
            del gen.decode
    counted = len(marks) - 1
    inclusive[0] = marks[-1] - marks[0]
    own = [inclusive[i] - (inclusive[i + 1] if i + 1 < len(gens) else 0.0) for i in range(len(gens))]
    top = gens[0]
    top_steps = top.num_children if not top.uses_orders else (options.steps or [top.num_children])[0]
    rows, calls = [], 1  # calls: decode calls of generator i per top-level step
    for i, gen in enumerate(gens):
        per_step = own[i] / counted
        row = {"level": f"g{i + 1}", "own_s_per_top_step": per_step,
               "share": own[i] / inclusive[0]}
        if isinstance(gen, Level) and not gen.uses_orders:  # AR: weights streamed per step
            # Under bf16 autocast the products read bf16 copies: half the bytes.
            width = 2 if bf16 else None
            nbytes = sum(p.numel() * (width or p.element_size()) for n, p in gen.named_parameters()
                         if not n.startswith("child."))
            sequential = 1 if i == 0 else calls * gen.num_children  # one token each
            gb = sequential * nbytes / 1e9
            row.update({"weight_gb_per_top_step": gb, "achieved_gb_per_s": gb / per_step})
        if i == 0 and isinstance(gen, Level) and gen.uses_orders:
            gflops = guided * batch * forward[0] / 1e9
            row.update({"gflops_per_top_step": gflops, "gflops_per_s": gflops / per_step})
        if i > 0 and isinstance(gen, Level):
            calls *= gen.num_children
        rows.append(row)
        extra = "".join(f"  {k} {v:.2f}" for k, v in row.items() if k not in ("level", "own_s_per_top_step", "share"))
        print(f"{'bf16' if bf16 else 'fp32'} {row['level']}: {per_step:.4f} s per top-level step "
              f"({100 * row['share']:.0f}%){extra}")
    per_image = inclusive[0] / counted * top_steps / batch
    print(f"top-level step {inclusive[0] / counted:.3f} s; extrapolated {per_image:.1f} s per image")
    result = {"preset": preset, "batch": batch, "compile": compile, "bf16": bf16, "steps_timed": counted,
              "levels": rows, "top_step_s": inclusive[0] / counted, "extrapolated_s_per_image": per_image}
    if top.uses_orders:
        # What the timed steps executed, level by level: the top level's whole pass at every
        # step; below it, each level's per-image work in proportion to the elements decided.
        share = decided[-1] - decided[0]
        per_level = sampling_cost(preset)["sampling_executed_gflops_per_level"]
        done = [guided * batch * counted * forward[0] / 1e9] + [batch * share * f for f in per_level[1:]]
        for row, gflops in zip(rows, done, strict=True):
            row["executed_gflops"] = gflops
        result.update({"decided_fraction": share, "executed_gflops": sum(done)})
    return result


def against_bound(result: dict, machine: dict) -> dict:
    """Set a sampling profile's FLOP bound from the pinned reference rate (``machine.rate_of``):
    per level and for the timed top-level steps, the executed FLOPs at that rate, and the time
    over it (``x_of_bound``, 1.0 = at the rate). Needs a MAR top level (``executed_gflops``)."""
    rate = rate_of(machine, result["bf16"]) / 1e9
    steps = result["steps_timed"]
    for row in result["levels"]:
        bound = row["executed_gflops"] / rate / steps
        row["bound_s_per_top_step"] = bound
        row["x_of_bound"] = row["own_s_per_top_step"] / bound if bound else None
    bound = result["executed_gflops"] / rate / steps
    result.update({"reference_gflops_per_s": rate, "bound_s_per_top_step": bound,
                   "x_of_bound": result["top_step_s"] / bound})
    for row in result["levels"]:
        x = row["x_of_bound"]
        print(f"  {row['level']}: {row['executed_gflops'] / steps:8.1f} GFLOP per top-level step, "
              f"bound {row['bound_s_per_top_step']:.3f} s, {x if x is None else round(x, 2)} x of bound")
    print(f"top-level step {result['top_step_s']:.3f} s against a bound of {bound:.3f} s "
          f"({rate:.1f} GFLOP/s): {result['x_of_bound']:.3f} x")
    return result


def alternate_precisions(preset: str, batch: int, steps: int, rounds: int) -> dict:
    """fp32 and bf16-autocast draws of one model in turn (fp32, bf16, fp32, ...), ``rounds``
    pairs: on a shared machine the pair-by-pair ratios drift less than separate runs."""
    torch.manual_seed(0)
    model = build_preset(preset).eval()
    pairs = []
    for _ in range(rounds):
        fp32 = profile_sampling(preset, batch, steps, model=model)
        bf16 = profile_sampling(preset, batch, steps, bf16=True, model=model)
        pairs.append({"fp32": fp32, "bf16": bf16})

    def ratio(level: int | None) -> list[float]:
        if level is None:
            return [p["fp32"]["top_step_s"] / p["bf16"]["top_step_s"] for p in pairs]
        return [p["fp32"]["levels"][level]["own_s_per_top_step"]
                / p["bf16"]["levels"][level]["own_s_per_top_step"] for p in pairs]

    summary = {"speedup_bf16_over_fp32_top_step": ratio(None)}
    for i in range(len(model.levels)):
        summary[f"speedup_bf16_over_fp32_g{i + 1}"] = ratio(i)
    summary = {k: {"per_pair": v, "median": statistics.median(v)} for k, v in summary.items()}
    for k, v in summary.items():
        print(f"{k}: median {v['median']:.2f} (pairs: {', '.join(f'{r:.2f}' for r in v['per_pair'])})")
    return {"preset": preset, "batch": batch, "steps_per_draw": steps, "rounds": rounds,
            "summary": summary, "pairs": pairs}


def compare_packing(preset: str, batch: int, steps: int, rounds: int) -> dict:
    """bf16-autocast draws of one model in turn without and with ``fractalkit.nn.Linear``'s
    prepacked bf16 weights (``packed_weights``), ``rounds`` pairs: what the packed path gains."""
    from fractalkit.nn import linear

    torch.manual_seed(0)
    model = build_preset(preset).eval()
    pairs = []
    try:
        for _ in range(rounds):
            linear._can_pack = False  # the path before: F.linear on autocast's bf16 copies
            usual = profile_sampling(preset, batch, steps, bf16=True, model=model)
            linear._can_pack = None  # detected again
            packed = profile_sampling(preset, batch, steps, bf16=True, model=model)
            pairs.append({"unpacked": usual, "packed": packed})
    finally:
        linear._can_pack = None
    summary = {"speedup_packed_over_unpacked_top_step":
               [p["unpacked"]["top_step_s"] / p["packed"]["top_step_s"] for p in pairs]}
    for i in range(len(model.levels)):
        summary[f"speedup_packed_over_unpacked_g{i + 1}"] = [
            p["unpacked"]["levels"][i]["own_s_per_top_step"] / p["packed"]["levels"][i]["own_s_per_top_step"]
            for p in pairs]
    summary = {k: {"per_pair": v, "median": statistics.median(v)} for k, v in summary.items()}
    for k, v in summary.items():
        print(f"{k}: median {v['median']:.2f} (pairs: {', '.join(f'{r:.2f}' for r in v['per_pair'])})")
    return {"preset": preset, "batch": batch, "steps_per_draw": steps, "rounds": rounds,
            "packing_available": linear.packing_available(), "summary": summary, "pairs": pairs}


def main(argv: list[str] | None = None) -> None:
    parser = cli.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--preset", default="small-in64", choices=sorted(PRESETS))
    parser.add_argument("--batch", type=cli.positive_int, default=1)
    parser.add_argument("--sampling", action="store_true", help="profile sampling, not training")
    parser.add_argument("--steps", type=cli.positive_int, default=4, help="top-level steps timed (sampling)")
    parser.add_argument("--start", type=cli.positive_int, default=1,
                        help="sampling: top-level steps run before the timed ones (at least the warm-up)")
    parser.add_argument("--compile", action="store_true", help="opt in to Fractal.compile()")
    parser.add_argument("--bf16", action="store_true", help="under bf16 autocast")
    parser.add_argument("--tag", default="", help="suffix of the results file name")
    parser.add_argument("--threads", type=cli.positive_int, default=None, help="torch threads (default: torch's)")
    parser.add_argument("--alternate", type=cli.non_negative_int, default=0, metavar="ROUNDS",
                        help="sampling: ROUNDS pairs of fp32 and bf16-autocast draws of one model, in turn")
    parser.add_argument("--compare-packing", type=cli.non_negative_int, default=0, metavar="ROUNDS",
                        help="sampling: ROUNDS pairs of bf16-autocast draws without and with the "
                             "prepacked bf16 weights, in turn")
    cli.add_debug_argument(parser)
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    tag = f"_{args.tag}" if args.tag else ""
    paired = None
    if args.compare_packing:
        paired = "bf16_packed_vs_unpacked", compare_packing(args.preset, args.batch, args.steps, args.compare_packing)
    elif args.alternate:
        paired = "fp32_vs_bf16", alternate_precisions(args.preset, args.batch, args.steps, args.alternate)
    if paired is not None:  # pairs of draws in turn: with the machine they ran on
        kind, result = paired
        result["machine"] = {"cpu_flags": cpu_flags(), "threads": torch.get_num_threads(),
                             "load_average_1_5_15_min": list(os.getloadavg()), "torch": torch.__version__}
        RESULTS.mkdir(exist_ok=True)
        out = RESULTS / f"profile_sampling_{args.preset}_b{args.batch}_{kind}{tag}.json"
        out.write_text(json.dumps(result, indent=2))
        print(f"wrote {out}")
        return
    if args.sampling:
        top_is_mar = PRESETS[args.preset].config["levels"][0]["level"]["kind"] == "mar"
        machine = reference_rates("cpu") if top_is_mar else None  # before the timed work
        result = profile_sampling(args.preset, args.batch, args.steps, args.compile, args.bf16,
                                  start=args.start)
        if machine is not None:  # ... and after it: the bound uses the best product seen
            remeasure(machine, "after")
            result["machine"] = {**machine, "cpu_flags": cpu_flags(),
                                 "load_average_1_5_15_min": list(os.getloadavg()), "torch": torch.__version__}
            against_bound(result, machine)
        RESULTS.mkdir(exist_ok=True)
        result["start"] = args.start
        tag = (("_compiled" if args.compile else "") + ("_bf16" if args.bf16 else "")
               + (f"_from{args.start}" if args.start != 1 else "") + tag)
        out = RESULTS / f"profile_sampling_{args.preset}_b{args.batch}{tag}.json"
        out.write_text(json.dumps(result, indent=2))
        print(f"wrote {out}")
        return
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
    cli.run(main)
