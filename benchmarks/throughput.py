"""Training-step and sampling throughput with peak memory, against this machine's own limits.

For each preset and batch size: a training step (forward, backward, AdamW) in fp32 and, with
``--bf16``, under bf16 autocast; and sampling seconds per image with the preset's published
settings. Each run measures the machine's float32/bfloat16 matmul rates in the same process
before and after the timed work, and its memory bandwidth (benchmarks/machine.py), and reports
the achieved fraction of the fp32 rate (the best product seen: ``machine.rate_of``), counting
the FLOPs a training step really executes (benchmarks/cost_table.py).
Sampling is set against its two bounds (:func:`sampling_cost`): the FLOPs it executes at the
matmul rate, and the weight bytes its sequential AR steps stream at the copy bandwidth;
``x_of_bound`` is seconds over the larger bound (1.0 = at the machine's limit).

``--optimizer`` picks what holds the optimizer state (AdamW, AdamW stepped inside the backward
pass, Adafactor: the memory options a user can choose). ``--compile`` opts in to ``Fractal.compile()`` (the first training step, or a draw stopped
after one top-level step, warms up and is reported apart); ``--checkpointing`` turns on
gradient checkpointing in every level. ``--alternate ROUNDS`` times fp32 and bf16-autocast
training steps of one model alternately (forward, backward and optimizer apart), the fairest
bf16/fp32 ratio on a shared machine (the fractions of the matmul rate are per precision).

Like :class:`fractalkit.training.Trainer` on the CPU, the script first lets glibc keep freed
tensor memory for reuse (:func:`fractalkit.hostmem.keep_freed_host_memory`: no page faults for the
buffers each step frees and re-allocates, and the peak RSS then includes what glibc keeps);
``--no-keep-host-memory`` leaves the C library's defaults.

Run: ``python benchmarks/throughput.py --presets tiny-in32 small-in64 --batches 1 8``
(writes benchmarks/results/throughput_<device>_<presets>[_sampling|_training][_compiled]...json).
Peak memory is the process's peak RSS on CPU (``resource.getrusage``), or
``torch.cuda.max_memory_allocated`` on a GPU.
"""

from __future__ import annotations

import dataclasses
import json
import os
import resource
import sys
import time
from contextlib import suppress
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from cost_table import level_flops, mean_mask_ratio
from machine import describe, rate_of, remeasure

from fractalkit import SampleOptions, cli
from fractalkit.hostmem import keep_freed_host_memory
from fractalkit.imagenet.presets import PRESETS, build_preset
from fractalkit.levels.base import Level

RESULTS = Path(__file__).resolve().parent / "results"


def peak_memory_gib(device: torch.device) -> float:
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated() / 2**30
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20  # KiB on Linux


def executed_step_flops(name: str) -> float:
    """FLOPs one training step executes per image (fwd + bwd = 3 x fwd), from the meta device."""
    with torch.device("meta"):
        model = build_preset(name)
    return 3 * sum(level_flops(model, executed=True, ratio=mean_mask_ratio()))


def sampling_cost(name: str) -> dict:
    """What sampling one image at batch 1 with the preset's settings must do, from the meta device.

    MAR levels re-run their whole level at every decoding step, so they are bound by FLOPs:
    ``steps x forward`` per level (the leaf: one pass per channel), doubled by guidance. AR
    levels feed one token per step, so at small batch they are bound by streaming each level's
    weights once per sequential step: ``(sequential steps) x (level weight bytes)``, shared by the
    whole batch (the leaf's few weights stay in cache and are left out, as in the issue's
    870 GB figure).
    """
    with torch.device("meta"):
        model = build_preset(name)
    options: SampleOptions = PRESETS[name].sampling
    guided = 2 if options.guidance != 1.0 else 1
    forward = level_flops(model, executed=True, ratio=1.0)  # all children present
    levels, weight_bytes, runs = [], 0.0, 1  # runs: sequential calls of the current level
    for depth, gen in enumerate(model.levels):
        if isinstance(gen, Level):
            own = [p for n, p in gen.named_parameters() if not n.startswith("child.")]
            nbytes = sum(p.numel() * 4 for p in own)
            if gen.uses_orders:  # MAR: the configured steps (None: one per child)
                steps = (options.steps or [None] * (depth + 1))[depth] or gen.num_children
                levels.append(guided * steps * forward[depth])
            else:  # AR: one child per step, one token each
                steps = gen.num_children
                weight_bytes += runs * steps * nbytes
                levels.append(guided * forward[depth])
            runs *= steps if not gen.uses_orders else gen.num_children
        else:
            levels.append(guided * gen.num_elements * forward[depth])
    return {"sampling_executed_gflops_per_image": sum(levels) / 1e9,
            "sampling_executed_gflops_per_level": [f / 1e9 for f in levels],
            "sampling_weight_gb_per_batch": weight_bytes / 1e9}


OPTIMIZERS = ("adamw", "adamw-in-backward", "adafactor")


def make_optimizer(kind: str, model: torch.nn.Module):
    """The training step's optimizer; ``step()`` and ``zero_grad()`` are no-ops in backward mode.

    ``adamw``: fused AdamW (no full-size temporaries); ``adamw-in-backward``: the same AdamW
    stepped parameter by parameter inside the backward pass (:class:`OptimizerInBackward`: no
    full set of gradients); ``adafactor``: ``torch.optim.Adafactor`` (factored second moments,
    no first moment: a different optimizer, a fraction of AdamW's state).
    """
    hyper = {"lr": 1e-4, "weight_decay": 0.05}
    if kind == "adamw":
        return torch.optim.AdamW(model.parameters(), betas=(0.9, 0.95), fused=True, **hyper)
    if kind == "adamw-in-backward":
        from fractalkit.training import OptimizerInBackward

        inner = OptimizerInBackward(
            model.parameters(),
            lambda ps: torch.optim.AdamW(ps, betas=(0.9, 0.95), fused=True, **hyper),
        )

        class _Stepped:  # the hooks already stepped and freed every gradient
            def step(self) -> None: ...
            def zero_grad(self, set_to_none: bool = True) -> None: ...

        _Stepped.inner = inner  # keep the hooks' optimizers alive
        return _Stepped()
    if kind == "adafactor":
        return torch.optim.Adafactor(model.parameters(), **hyper)
    raise ValueError(f"optimizer: expected one of {OPTIMIZERS}, got {kind!r}")


def train_step(name, batch, device, bf16, *, compile=False, checkpointing=False, steps=3,
               optimizer="adamw") -> dict:
    torch.manual_seed(0)
    model = build_preset(name, checkpointing=checkpointing).to(device).train()
    if compile:
        model.compile()
    opt = make_optimizer(optimizer, model)
    size = PRESETS[name].image_size
    g = torch.Generator(device=device).manual_seed(0)
    x = torch.randint(0, 256, (batch, 3, size, size), generator=g, device=device)
    y = torch.randint(0, model.num_classes, (batch,), generator=g, device=device)
    times = []
    for _ in range(steps + 1):
        start = time.perf_counter()
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=bf16):
            loss = model.loss(x, y, generator=g)
        loss.total.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        if device.type == "cuda":
            torch.cuda.synchronize()
        times.append(time.perf_counter() - start)
    step = sorted(times[1:])[len(times[1:]) // 2]  # the first step warms up (and compiles)
    peak = peak_memory_gib(device)
    return {"kind": "train", "preset": name, "batch": batch, "bf16": bf16, "compile": compile,
            "checkpointing": checkpointing, "optimizer": optimizer, "step_s": step, "first_step_s": times[0],
            "images_per_s": batch / step, "peak_memory_GiB": peak, "peak_memory_GB": peak * 2**30 / 1e9}


def alternate_train_steps(name, batch, device, *, rounds=3, optimizer="adamw", bf16_sdpa=False,
                          clock=time.perf_counter) -> dict:
    """fp32 and bf16-autocast training steps of ONE model, alternated, ``rounds`` pairs after one
    warm-up pair: per step the forward (loss), backward and optimizer seconds, and per pair the
    fp32 step over the bf16 step (the ratio a loaded machine disturbs least). ``bf16_sdpa`` adds
    a third step per round, bf16 with SDPA for all attention (the bf16 explicit-attention path of
    ``fractalkit.nn.attention`` off, as before it existed), and its step over the bf16 step.
    ``clock``: ``time.perf_counter`` (wall) or ``time.process_time`` (CPU time of this process:
    at one thread, steadier on a machine other jobs share)."""
    from fractalkit.nn import attention
    torch.manual_seed(0)
    model = build_preset(name).to(device).train()
    opt = make_optimizer(optimizer, model)
    size = PRESETS[name].image_size
    g = torch.Generator(device=device).manual_seed(0)
    x = torch.randint(0, 256, (batch, 3, size, size), generator=g, device=device)
    y = torch.randint(0, model.num_classes, (batch,), generator=g, device=device)

    def sync() -> float:
        if device.type == "cuda":
            torch.cuda.synchronize()
        return clock()

    steps: dict[str, list[dict]] = {"fp32": [], "bf16": []}
    if bf16_sdpa:
        steps["bf16_sdpa"] = []
    bound = attention.EXPLICIT_MAX_KEYS_BF16_TRAINING
    for _ in range(rounds + 1):
        for key in steps:
            attention.EXPLICIT_MAX_KEYS_BF16_TRAINING = 0 if key == "bf16_sdpa" else bound
            t0 = sync()
            with torch.autocast(device.type, dtype=torch.bfloat16, enabled=key != "fp32"):
                loss = model.loss(x, y, generator=g)
            t1 = sync()
            loss.total.backward()
            t2 = sync()
            opt.step()
            opt.zero_grad(set_to_none=True)
            t3 = sync()
            steps[key].append({"forward_s": t1 - t0, "backward_s": t2 - t1, "optimizer_s": t3 - t2,
                               "step_s": t3 - t0})
    for key in steps:
        steps[key] = steps[key][1:]  # the first pair warms up
    attention.EXPLICIT_MAX_KEYS_BF16_TRAINING = bound

    def ratios(a: str, b: str) -> list[float]:
        return [x["step_s"] / y["step_s"] for x, y in zip(steps[a], steps[b], strict=True)]

    median = {key: {part: sorted(s[part] for s in runs)[len(runs) // 2] for part in runs[0]}
              for key, runs in steps.items()}
    out = {"kind": "train_alternate", "preset": name, "batch": batch, "optimizer": optimizer,
           "rounds": rounds, "steps": steps, "median": median}
    for a, b in [("fp32", "bf16")] + ([("bf16_sdpa", "bf16")] if bf16_sdpa else []):
        r = ratios(a, b)
        out[f"{a}_over_{b}"], out[f"{a}_over_{b}_median"] = r, sorted(r)[len(r) // 2]
    out["peak_memory_GiB"] = peak_memory_gib(device)
    return out


class _Stop(Exception):
    """Raised by the warm-up callback to end a draw after its first top-level step."""


def _stop(progress) -> None:
    raise _Stop


def sample_time(name, batch, device, bf16, *, compile=False, bf16_weights=False) -> dict:
    torch.manual_seed(0)
    model = build_preset(name).to(device).eval()
    if bf16_weights:  # weights stored in bf16: half the bytes each AR step streams
        model = model.to(torch.bfloat16)
    options: SampleOptions = PRESETS[name].sampling
    y = torch.arange(batch, device=device) % model.num_classes
    warmup = 0.0
    if compile:  # compile on a draw stopped after one top-level step; time the next, full one
        model.compile()
        start = time.perf_counter()
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=bf16), suppress(_Stop):
            model.sample(y=y, options=dataclasses.replace(options, callback=_stop))
        warmup = time.perf_counter() - start
    g = torch.Generator(device=device).manual_seed(0)
    start = time.perf_counter()
    with torch.autocast(device.type, dtype=torch.bfloat16, enabled=bf16):
        model.sample(y=y, options=options, generator=g)
    seconds = time.perf_counter() - start
    return {"kind": "sample", "preset": name, "batch": batch, "bf16": bf16, "compile": compile,
            "bf16_weights": bf16_weights,
            "seconds_per_image": seconds / batch, "compile_warmup_s": warmup,
            "peak_memory_GiB": peak_memory_gib(device)}


def against_limits(r: dict, machine: dict, *, bf16_weights: bool = False) -> dict:
    """Set a run's fraction of the matmul rate (training) or its bounds (sampling) from the pinned
    reference rate (:func:`machine.rate_of`: the best product seen before and after the timed
    work) and the copy bandwidth; ``r`` changed in place and returned."""
    if r["kind"] == "train_alternate":  # fp32 and bf16 steps of one model, each against its rate
        for key, m in r["median"].items():
            m["fraction_of_matmul_rate"] = (r["executed_gflops_per_image"] * 1e9 * r["batch"]
                                            / m["step_s"] / rate_of(machine, key != "fp32"))
        return r
    rate = rate_of(machine, r["bf16"])
    r["reference_flops"] = rate
    if r["kind"] == "train":
        r["fraction_of_matmul_rate"] = r["executed_gflops_per_image"] * 1e9 * r["images_per_s"] / rate
        return r
    # The two bounds: FLOPs at the matmul rate, weights at the copy bandwidth.
    flop_s = r["sampling_executed_gflops_per_image"] * 1e9 / rate
    weight_bytes = r["sampling_weight_gb_per_batch"] * 1e9
    weight_bytes /= 2 if bf16_weights else 1
    byte_s = weight_bytes / machine["bandwidth_bytes"] / r["batch"]
    r["flop_bound_s_per_image"] = flop_s
    r["bandwidth_bound_s_per_image"] = byte_s
    r["x_of_bound"] = r["seconds_per_image"] / max(flop_s, byte_s)
    return r


def main(argv: list[str] | None = None) -> None:
    parser = cli.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--presets", nargs="+", default=["tiny-in32", "small-in64"], choices=sorted(PRESETS))
    parser.add_argument("--batches", nargs="+", type=cli.positive_int, default=[1, 8])
    parser.add_argument("--bf16", action="store_true", help="also run under bf16 autocast")
    parser.add_argument("--no-sample", action="store_true", help="training steps only")
    parser.add_argument("--no-train", action="store_true", help="sampling only")
    parser.add_argument("--compile", action="store_true", help="opt in to Fractal.compile()")
    parser.add_argument("--checkpointing", action="store_true", help="gradient checkpointing")
    parser.add_argument("--bf16-weights", action="store_true", help="sample with bf16 weights")
    parser.add_argument("--optimizer", default="adamw", choices=OPTIMIZERS,
                        help="training: what holds the optimizer state (see make_optimizer)")
    parser.add_argument("--train-steps", type=cli.positive_int, default=3, help="timed training steps (after one)")
    parser.add_argument("--threads", type=cli.positive_int, default=None, help="torch threads (default: torch's)")
    parser.add_argument("--alternate", type=cli.non_negative_int, default=0, metavar="ROUNDS",
                        help="training: alternate fp32 and bf16 steps of one model for ROUNDS pairs "
                             "(forward, backward, optimizer timed apart) instead of separate runs")
    parser.add_argument("--clock", choices=["wall", "cpu"], default="wall",
                        help="with --alternate: wall seconds or this process's CPU seconds (steadier "
                             "at --threads 1 on a shared machine)")
    parser.add_argument("--bf16-sdpa", action="store_true",
                        help="with --alternate: a third step per round, bf16 with SDPA for all attention")
    parser.add_argument("--tag", default="", help="suffix of the results file name")
    parser.add_argument("--no-keep-host-memory", action="store_true",
                        help="leave glibc's malloc defaults (freed large buffers go back to the kernel)")
    cli.add_debug_argument(parser)
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    kept = device.type == "cpu" and not args.no_keep_host_memory and keep_freed_host_memory()
    machine = describe(device.type)
    machine["keep_freed_host_memory"] = kept
    # glibc keeps freed blocks for reuse (counted in RSS) unless this fixes its mmap threshold.
    machine["MALLOC_MMAP_THRESHOLD_"] = os.environ.get("MALLOC_MMAP_THRESHOLD_")
    print(json.dumps(machine, indent=1), flush=True)
    runs = []
    for name in args.presets:
        flops = executed_step_flops(name)
        for batch in args.batches:
            if args.alternate and not args.no_train:
                r = alternate_train_steps(name, batch, device, rounds=args.alternate, optimizer=args.optimizer,
                                          bf16_sdpa=args.bf16_sdpa,
                                          clock=time.process_time if args.clock == "cpu" else time.perf_counter)
                r["clock"] = args.clock
                r["executed_gflops_per_image"] = flops / 1e9
                against_limits(r, machine)  # provisional: the rate measured before
                print(json.dumps({k: v for k, v in r.items() if k != "steps"}), flush=True)
                runs.append(r)
            for bf16 in [False, True] if args.bf16 else [False]:
                if not args.no_train and not args.alternate:
                    r = train_step(name, batch, device, bf16, compile=args.compile,
                                   checkpointing=args.checkpointing, steps=args.train_steps,
                                   optimizer=args.optimizer)
                    r["executed_gflops_per_image"] = flops / 1e9
                    against_limits(r, machine)  # provisional: the rate measured before
                    print(json.dumps(r), flush=True)
                    runs.append(r)
                if not args.no_sample:
                    r = sample_time(name, batch, device, bf16, compile=args.compile,
                                    bf16_weights=args.bf16_weights)
                    r.update(sampling_cost(name))
                    against_limits(r, machine, bf16_weights=args.bf16_weights)  # provisional
                    print(json.dumps(r), flush=True)
                    runs.append(r)
    # The reference rates again, after the timed work: every figure uses the best seen.
    remeasure(machine, "after")
    for r in runs:
        against_limits(r, machine, bf16_weights=args.bf16_weights)
    print(json.dumps({"rates": machine["rates"], "runs": runs}, indent=1), flush=True)
    RESULTS.mkdir(exist_ok=True)
    tag = "_".join(args.presets) if len(args.presets) < 3 else "presets"
    tag += "_sampling" if args.no_train else ""
    tag += "_training" if args.no_sample else ""
    tag += "_alternate" if args.alternate and not args.no_train else ""
    tag += f"_t{args.threads}" if args.alternate and args.threads else ""
    tag += "_compiled" if args.compile else ""
    tag += "_checkpointing" if args.checkpointing else ""
    tag += "_bf16weights" if args.bf16_weights else ""
    tag += f"_{args.optimizer}" if args.optimizer != "adamw" else ""
    tag += f"_{args.tag}" if args.tag else ""
    out = RESULTS / f"throughput_{device.type}_{tag}.json"
    out.write_text(json.dumps({"machine": machine, "runs": runs}, indent=2))
    print(f"wrote {out}")


if __name__ == "__main__":
    cli.run(main)
