"""All GPU measurements in one script (under 5 minutes on one H100/H200).

1. The card's bf16 / fp32 matmul rate and copy bandwidth, measured in this process.
2. FractalMAR-64 training at batch 64, bf16 autocast (AdamW, grad clip, checkpointing off and
   on): images/s, peak memory, achieved fraction of the bf16 matmul rate counting the FLOPs a
   step really executes (benchmarks/cost_table.py).
3. FractalMAR-64 sampling at batch 256 with the published settings (guidance 6.5, linear
   schedule, T 1/1.02, filter 1e-4, steps (64, 16)): seconds per image.
4. FractalMAR-L-256 sampling at batch 256 (guidance 21, T 1/1.1, steps (64, 16, 16)): timed
   over the first top-level steps and extrapolated by the fraction of patches decided (said so
   in the output), to fit the time budget.

Weights are random (the point is speed, not image quality). Run:
``PYTHONPATH=. python benchmarks/gpu_check.py --out benchmarks/results/gpu.json``
(``--smoke`` runs tiny versions on the CPU to check the script itself).
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from machine import describe, rate_of, remeasure

from fractalkit import SampleOptions, cli
from fractalkit.imagenet.presets import PRESETS, build_preset


class _Stop(Exception):
    pass


def sync() -> None:
    if torch.cuda.is_available():
        torch.cuda.synchronize()


def train_speed(name, batch, steps, device, checkpointing, autocast) -> dict:
    torch.manual_seed(0)
    model = build_preset(name, checkpointing=checkpointing).to(device).train()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4, betas=(0.9, 0.95), weight_decay=0.05)
    size = PRESETS[name].image_size
    g = torch.Generator(device=device).manual_seed(0)
    x = torch.randint(0, 256, (batch, 3, size, size), device=device, generator=g)
    y = torch.randint(0, model.num_classes, (batch,), device=device, generator=g)
    if torch.cuda.is_available():
        torch.cuda.reset_peak_memory_stats()
    times = []
    for _ in range(steps):
        sync()
        t0 = time.perf_counter()
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=autocast):
            loss = model.loss(x, y, generator=g)
        loss.total.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 3.0)
        opt.step()
        opt.zero_grad(set_to_none=True)
        sync()
        times.append(time.perf_counter() - t0)
    step = sorted(times[1:])[len(times[1:]) // 2] if len(times) > 1 else times[0]
    peak = torch.cuda.max_memory_allocated() / 2**30 if torch.cuda.is_available() else None
    return {
        "preset": name,
        "batch": batch,
        "checkpointing": checkpointing,
        "bf16_autocast": autocast,
        "median_step_s": step,
        "images_per_s": batch / step,
        "peak_memory_GiB": peak,
        "final_loss_nats": float(loss.nll.detach()),
    }


def sample_speed(name, batch, device, max_seconds, autocast) -> dict:
    torch.manual_seed(0)
    model = build_preset(name).to(device).eval()
    options = PRESETS[name].sampling
    started = time.perf_counter()
    state = {"fraction": 0.0, "elapsed": 0.0, "steps": 0}

    def callback(progress):
        sync()
        state["elapsed"] = time.perf_counter() - started
        state["fraction"] = float(progress.decided.float().mean())
        state["steps"] = progress.step
        if state["elapsed"] > max_seconds and progress.step < progress.num_steps:
            raise _Stop

    options = SampleOptions.make(options, callback=callback)
    y = torch.arange(batch, device=device) % model.num_classes
    g = torch.Generator(device=device).manual_seed(0)
    complete = True
    try:
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=autocast):
            model.sample(y=y, options=options, generator=g)
        sync()
        state["elapsed"] = time.perf_counter() - started
        state["fraction"] = 1.0
    except _Stop:
        complete = False
    seconds = state["elapsed"] / state["fraction"]
    return {
        "preset": name,
        "batch": batch,
        "settings": {
            "guidance": options.guidance,
            "schedule": options.guidance_schedule,
            "temperature": options.temperature,
            "steps": options.steps,
        },
        "bf16_autocast": autocast,
        "complete": complete,
        "top_steps_done": state["steps"],
        "fraction_decided": state["fraction"],
        "elapsed_s": state["elapsed"],
        "seconds_per_image": seconds / batch,
        "note": "measured over the whole batch"
        if complete
        else "extrapolated: elapsed / fraction of elements decided (early cosine steps decide "
        "few patches, so this is an estimate)",
    }


def main(argv: list[str] | None = None) -> None:
    torch.backends.cuda.enable_cudnn_sdp(False)  # cuDNN attention backward failed here (torch 2.11)
    parser = cli.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default="benchmarks/results/gpu.json", metavar="FILE",
                        help="the JSON file to write (its folder is created)")
    parser.add_argument("--smoke", action="store_true", help="tiny CPU run of this script")
    cli.add_debug_argument(parser)
    args = parser.parse_args(argv)
    if Path(args.out).is_dir():
        parser.error(f"--out {args.out} is a folder; give the JSON file to write")
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    results = {"machine": describe(device.type)}
    print(json.dumps(results["machine"], indent=1), flush=True)
    if args.smoke:
        plan = [("train", "tiny-in32", 4, 3, False), ("sample", "tiny-in32", 4, 30)]
        autocast = False
    else:
        plan = [
            ("train", "fractalmar-in64", 64, 6, False),
            ("train", "fractalmar-in64", 64, 4, True),
            ("sample", "fractalmar-in64", 256, 50),
            ("sample", "fractalmar-large-in256", 256, 40),
        ]
        autocast = True
    results["runs"] = []
    for item in plan:
        try:
            if item[0] == "train":
                _, name, batch, steps, ckpt = item
                r = train_speed(name, batch, steps, device, ckpt, autocast)
                per_image = json.loads(
                    Path("benchmarks/results/cost_table.json").read_text()
                )["rows"].get(name, {}).get("train_step_executed_gflops")
                if per_image:
                    achieved = per_image * 1e9 * r["images_per_s"]
                    r["executed_tflops"] = achieved / 1e12
                    # provisional: set again from the best rate seen once the runs are done
                    r["fraction_of_bf16_matmul"] = achieved / rate_of(results["machine"], bf16=True)
            else:
                _, name, batch, limit = item
                r = sample_speed(name, batch, device, limit, autocast)
        except torch.cuda.OutOfMemoryError as err:  # report, keep going
            r = {"item": list(item), "error": f"out of memory: {err}"}
            torch.cuda.empty_cache()
        print(json.dumps(r), flush=True)
        results["runs"].append(r)
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(json.dumps(results, indent=2))
    remeasure(results["machine"], "after")  # the reference rate: the best before or after the runs
    for r in results["runs"]:
        if "executed_tflops" in r:
            r["fraction_of_bf16_matmul"] = r["executed_tflops"] * 1e12 / rate_of(results["machine"], bf16=True)
    print(json.dumps(results["machine"]["rates"], indent=1), flush=True)
    Path(args.out).write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    cli.run(main)
