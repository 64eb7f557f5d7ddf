"""Throughput of a preset: training images/s and peak memory, sampling seconds per image.

    python examples/imagenet_pixels/benchmark.py --preset fractalmar-in64 --train-batch 64 \\
        --sample-batch 256 --json bench.json

Randomly initialised weights (speed does not depend on them). On CUDA: bf16 autocast and, for
training, gradient checkpointing (both switchable). Sampling uses the preset's published
settings (guidance with its doubled batch, steps per level).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from pixels_common import autocast, pick_device

from fractalkit.cli import (
    ArgumentParser,
    add_debug_argument,
    non_negative_int,
    positive_int,
    run,
    steps_list,
)
from fractalkit.imagenet.presets import PRESETS, get_preset


def parse_args(argv=None) -> argparse.Namespace:
    """The command line (see ``--help``)."""
    p = ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--preset", choices=list(PRESETS), default="tiny-in32")
    p.add_argument("--train-batch", type=non_negative_int, default=64, help="0: skip training")
    p.add_argument("--train-steps", type=positive_int, default=5, help="timed steps (after 2 warm-up steps)")
    p.add_argument("--sample-batch", type=non_negative_int, default=0, help="0: skip sampling")
    p.add_argument("--steps", type=steps_list, default=False, help="sampling steps per level (default: the preset's)")
    p.add_argument("--bf16", action=argparse.BooleanOptionalAction, default=None)
    p.add_argument("--grad-checkpointing", action=argparse.BooleanOptionalAction, default=None)
    p.add_argument("--device", default=None)
    p.add_argument("--threads", type=positive_int, default=None)
    p.add_argument("--json", default=None, metavar="FILE", help="also write the results to this JSON file")
    add_debug_argument(p)
    return p.parse_args(argv)


def sync(device: torch.device) -> None:
    """Wait for queued device work (CUDA) so timings are real."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def main(argv=None) -> dict:
    """Benchmark; returns (and prints) a results dict."""
    args = parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    device = pick_device(args.device)
    cuda = device.type == "cuda"
    bf16 = cuda if args.bf16 is None else args.bf16
    ckpt = cuda if args.grad_checkpointing is None else args.grad_checkpointing
    preset = get_preset(args.preset)
    torch.manual_seed(0)
    model = preset.build(checkpointing=ckpt).to(device)
    size = preset.image_size
    gen = torch.Generator(device=device).manual_seed(0)
    res = {"preset": args.preset, "device": torch.cuda.get_device_name(device) if cuda else "cpu",
           "bf16": bf16, "grad_checkpointing": ckpt, "torch": torch.__version__,
           "parameters": sum(p.numel() for p in model.parameters())}
    if args.train_batch:
        opt = torch.optim.AdamW(model.parameters(), lr=1e-4, betas=(0.9, 0.95), weight_decay=0.05)
        x = torch.randint(0, 256, (args.train_batch, 3, size, size), device=device, generator=gen)
        y = torch.randint(0, max(1, model.num_classes), (args.train_batch,), device=device, generator=gen)
        y = y if model.num_classes else None
        model.train()
        times = []
        for i in range(2 + args.train_steps):
            if i == 2 and cuda:
                torch.cuda.reset_peak_memory_stats(device)
            sync(device)
            t = time.perf_counter()
            with autocast(device, bf16):
                loss = model.loss(x, y, generator=gen)
            opt.zero_grad(set_to_none=True)
            loss.total.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 3.0)
            opt.step()
            sync(device)
            if i >= 2:
                times.append(time.perf_counter() - t)
        step_s = sum(times) / len(times)
        res.update(train_batch=args.train_batch, train_step_s=step_s,
                   train_images_per_s=args.train_batch / step_s, train_loss=float(loss.nll.detach()))
        if cuda:
            res["train_peak_memory_gib"] = torch.cuda.max_memory_allocated(device) / 2**30
        del opt
    if args.sample_batch:
        model.eval()
        options = preset.sampling
        if args.steps is not False:
            options = type(options).make(options, steps=args.steps)
        y = torch.randint(0, max(1, model.num_classes), (args.sample_batch,), device=device, generator=gen)
        if cuda:
            torch.cuda.reset_peak_memory_stats(device)
        sync(device)
        t = time.perf_counter()
        with autocast(device, bf16):
            out = model.sample(args.sample_batch, y if model.num_classes else None, options=options, generator=gen)
        sync(device)
        s = time.perf_counter() - t
        res.update(sample_batch=args.sample_batch, sample_s=s, sample_s_per_image=s / args.sample_batch,
                   sample_shape=list(out.shape),
                   sample_options={"guidance": options.guidance, "temperature": options.temperature,
                                   "steps": list(options.steps) if options.steps else None})
        if cuda:
            res["sample_peak_memory_gib"] = torch.cuda.max_memory_allocated(device) / 2**30
    print(json.dumps(res), flush=True)
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps(res, indent=1))
    return res


if __name__ == "__main__":
    run(main)
