"""Small-model training overhead: a 3-level MAR against the AR version of the same widths.

The configuration of issue 15: 32x32 RGB images, levels 32 -> 4x4 patches -> pixels -> RGB
leaf, widths 256 / 128 / 64 (the last is the leaf), blocks 4 / 2 / 1, 5 condition tokens per
child (MAR neighbours), mask ratio fixed at 0.8 (``ceil(0.8 k)`` children masked per instance),
no dropout, batch 32, fp32. AR levels use the paper's AR blocks (LLaMA, 2-D RoPE).

The models' training steps (forward, backward, AdamW) are timed in turn, one step each per
round, so the MAR/AR ratio is taken pair by pair (a shared machine drifts); then one more step
of each is split level by level: each level's transformer forward (module hooks on its ``backbone``, the
leaf's included) and the rest of the forward pass (embeddings, masking, gathering and scattering
children, condition assembly, the loss), and the backward pass as a whole. With ``--profile``
one more step of each model runs under ``torch.profiler``, forward and backward separately: the
operators with the largest self CPU time and their shares (what to quote on a shared machine,
where the shares drift less than the seconds), plus the attention kernels' share.

Like :class:`fractalkit.training.Trainer` on the CPU, the script first lets glibc keep freed
tensor memory for the next step (:func:`fractalkit.hostmem.keep_freed_host_memory`);
``--no-keep-host-memory`` leaves the C library's defaults (each step then page-faults its large
buffers back in; the minor page faults per step are recorded either way).

Run: ``PYTHONPATH=. python benchmarks/small_models.py --threads 2 [--profile]``
(writes benchmarks/results/small_models[_TAG].json).
"""

from __future__ import annotations

import json
import math
import os
import resource
import statistics
import sys
import time
from pathlib import Path
from unittest import mock

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from machine import cpu_flags

from fractalkit import Fractal, cli
from fractalkit.hostmem import keep_freed_host_memory
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


class Trainer:
    """One model of :func:`small_config`, its optimizer and a fixed batch."""

    def __init__(self, kind: str, batch: int) -> None:
        torch.manual_seed(0)
        self.kind = kind
        self.model = Fractal.from_config(small_config(kind)).train()
        self.opt = torch.optim.AdamW(self.model.parameters(), lr=1e-4, fused=True)
        self.g = torch.Generator().manual_seed(0)
        self.x = torch.randint(0, 256, (batch, 3, 32, 32), generator=self.g)
        self.y = torch.randint(0, 10, (batch,), generator=self.g)

    def step(self) -> tuple[float, float, float]:
        """One training step: forward, backward and optimizer seconds."""
        faults = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
        t0 = time.perf_counter()
        loss = self.model.loss(self.x, self.y, generator=self.g)
        t1 = time.perf_counter()
        loss.total.backward()
        t2 = time.perf_counter()
        self.opt.step()
        self.opt.zero_grad(set_to_none=True)
        t3 = time.perf_counter()
        self.faults = resource.getrusage(resource.RUSAGE_SELF).ru_minflt - faults
        return t1 - t0, t2 - t1, t3 - t2

    def split_step(self) -> dict:
        """One more step with each level's transformer forward timed by module hooks."""
        timed = [getattr(gen, "backbone", None) for gen in self.model.levels]
        spent = [0.0] * len(timed)
        starts: dict[int, float] = {}
        hooks = []
        for i, module in enumerate(timed):
            hooks.append(module.register_forward_pre_hook(
                lambda m, a, i=i: starts.__setitem__(i, time.perf_counter())))
            hooks.append(module.register_forward_hook(
                lambda m, a, o, i=i: spent.__setitem__(i, spent[i] + time.perf_counter() - starts[i])))
        fwd, bwd, opt_s = self.step()
        for h in hooks:
            h.remove()
        return {"transformer_forward_s": {f"g{i + 1}": t for i, t in enumerate(spent)},
                "other_forward_s": fwd - sum(spent), "forward_s": fwd, "backward_s": bwd,
                "optimizer_s": opt_s}


def _op_shares(prof, top: int) -> dict:
    """The ``top`` operators by self CPU time of a profile, with their shares of the total."""
    events = [e for e in prof.key_averages() if e.self_cpu_time_total > 0]
    total = sum(e.self_cpu_time_total for e in events)
    attention = sum(e.self_cpu_time_total for e in events if "scaled_dot_product" in e.key)
    ops = sorted(events, key=lambda e: -e.self_cpu_time_total)[:top]
    return {"self_cpu_ms_total": total / 1e3, "attention_kernels_share": attention / total,
            "top_ops": [{"op": e.key, "calls": e.count, "self_cpu_ms": e.self_cpu_time_total / 1e3,
                         "share": e.self_cpu_time_total / total} for e in ops]}


def profile_step(trainer: Trainer, top: int = 15) -> dict:
    """One step under ``torch.profiler``: forward and backward operator shares, separately."""
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU]) as fwd:
        loss = trainer.model.loss(trainer.x, trainer.y, generator=trainer.g)
    with profile(activities=[ProfilerActivity.CPU]) as bwd:
        loss.total.backward()
    trainer.opt.zero_grad(set_to_none=True)
    return {"forward": _op_shares(fwd, top), "backward": _op_shares(bwd, top)}


def measure(kinds: list[str], batch: int, steps: int, profiled: bool = False) -> dict:
    """Steps of the models in turn (one step each per round), then one split step each."""
    trainers = [Trainer(kind, batch) for kind in kinds]
    for t in trainers:
        t.step()  # warm-up
    times: dict[str, list] = {t.kind: [] for t in trainers}
    faults: dict[str, list] = {t.kind: [] for t in trainers}
    for _ in range(steps):
        for t in trainers:
            times[t.kind].append(t.step())
            faults[t.kind].append(t.faults)
    runs = {}
    for t in trainers:
        ts = times[t.kind]
        runs[t.kind] = {
            "step_s": [sum(x) for x in ts],
            "step_s_median": statistics.median(sum(x) for x in ts),
            "forward_s_median": statistics.median(x[0] for x in ts),
            "backward_s_median": statistics.median(x[1] for x in ts),
            "optimizer_s_median": statistics.median(x[2] for x in ts),
            "minor_page_faults_per_step_median": statistics.median(faults[t.kind]),
            "split_step": t.split_step(),
            "parameters": sum(p.numel() for p in t.model.parameters()),
        }
        if profiled:
            runs[t.kind]["profile"] = profile_step(t)
    out = {"batch": batch, "steps_per_model": steps, "runs": runs}
    if set(times) == {"mar", "ar"}:
        ratios = [sum(m) / sum(a) for m, a in zip(times["mar"], times["ar"], strict=True)]
        out["mar_over_ar_step"] = {"per_round": ratios, "median": statistics.median(ratios)}
        for i, phase in enumerate(("forward", "backward")):
            ratios = [m[i] / a[i] for m, a in zip(times["mar"], times["ar"], strict=True)]
            out[f"mar_over_ar_{phase}"] = {"per_round": ratios, "median": statistics.median(ratios)}
    return out


def main(argv: list[str] | None = None) -> None:
    parser = cli.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch", type=cli.positive_int, default=32)
    parser.add_argument("--steps", type=cli.positive_int, default=5, help="timed steps per model")
    parser.add_argument("--threads", type=cli.positive_int, default=2)
    parser.add_argument("--models", nargs="+", default=["mar", "ar"], choices=["mar", "ar"])
    parser.add_argument("--tag", default="", help="suffix of the results file name")
    parser.add_argument("--no-keep-host-memory", action="store_true",
                        help="leave glibc's malloc defaults (freed large buffers go back to the kernel)")
    parser.add_argument("--profile", action="store_true",
                        help="also one profiled step per model: operator shares, forward and backward")
    cli.add_debug_argument(parser)
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    kept = False if args.no_keep_host_memory else keep_freed_host_memory()
    with mock.patch("fractalkit.levels.mar.training_mask_counts", fixed_mask_counts):
        result = measure(args.models, args.batch, args.steps, args.profile)
    for kind, run in result["runs"].items():
        print(f"{kind}: step {run['step_s_median']:.3f} s (forward {run['forward_s_median']:.3f}, "
              f"backward {run['backward_s_median']:.3f}, optimizer {run['optimizer_s_median']:.3f}); "
              f"{run['minor_page_faults_per_step_median']:.0f} minor page faults per step")
        for phase, prof in run.get("profile", {}).items():
            print(f"  {phase}: {prof['self_cpu_ms_total']:.0f} ms self CPU, attention kernels "
                  f"{100 * prof['attention_kernels_share']:.1f}%")
            for op in prof["top_ops"][:8]:
                print(f"    {100 * op['share']:5.1f}%  {op['self_cpu_ms']:8.1f} ms  {op['calls']:4d}  {op['op']}")
    if "mar_over_ar_step" in result:
        ratio = result["mar_over_ar_step"]
        print(f"MAR / AR step: median {ratio['median']:.3f} (rounds: "
              f"{', '.join(f'{r:.3f}' for r in ratio['per_round'])})", flush=True)
    machine = {"cpu_flags": cpu_flags(), "threads": args.threads, "torch": torch.__version__,
               "load_average": list(os.getloadavg()), "keep_freed_host_memory": kept}
    RESULTS.mkdir(exist_ok=True)
    out = RESULTS / f"small_models{'_' + args.tag if args.tag else ''}.json"
    out.write_text(json.dumps({"machine": machine, **result}, indent=2))
    print(f"wrote {out}")


if __name__ == "__main__":
    cli.run(main)
