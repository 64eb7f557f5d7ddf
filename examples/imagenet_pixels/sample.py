"""Sample images from a trained pixel model: a PNG grid, and optionally the generation process.

    python examples/imagenet_pixels/sample.py --checkpoint runs/tiny-in32
    python examples/imagenet_pixels/sample.py --checkpoint runs/small-in64 --classes 1,9,30,207 \\
        --guidance 3.0 --temperature 0.95 --steps 32,8 --gif process.gif --strip process.png

Defaults come from the preset the checkpoint was trained with (its published sampling settings:
guidance, linear schedule, temperature, the 1e-4 filter, steps per level); every one can be
overridden. Temperatures follow fractalkit's convention (logits are divided by T).
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from pixels_common import (
    ProgressBar,
    add_sampling_arguments,
    autocast,
    check_classes,
    checkpoint_info,
    make_grid,
    options_from,
    pick_device,
    save_grid,
    to_pil,
)

from fractalkit import SampleOptions
from fractalkit.cli import (
    ArgumentParser,
    add_debug_argument,
    int_list,
    non_negative_int,
    positive_int,
    run,
)
from fractalkit.training import load_model


def parse_args(argv=None) -> argparse.Namespace:
    """The command line (see ``--help``)."""
    p = ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--checkpoint", required=True, help="checkpoint folder, run folder or .safetensors model")
    p.add_argument("--no-ema", action="store_true", help="use the live weights even if EMA weights exist")
    p.add_argument("--num-samples", type=positive_int, default=16)
    p.add_argument("--classes", type=int_list, default=None, help="comma-separated class ids (default: random "
                   "classes for class-conditional checkpoints, none for unconditional ones)")
    p.add_argument("--unconditional", action="store_true", help="sample p(x) with the null condition")
    add_sampling_arguments(p)
    p.add_argument("--seed", type=non_negative_int, default=0)
    p.add_argument("--batch-size", type=positive_int, default=16)
    p.add_argument("--out", default=None, help="grid PNG (default: <run>/samples.png)")
    p.add_argument("--nrow", type=positive_int, default=8)
    p.add_argument("--scale", type=positive_int, default=None, help="upscale factor of the grid (default: to >= 128 px)")
    p.add_argument("--gif", default=None, help="write the generation process of the first batch as a GIF")
    p.add_argument("--strip", default=None, help="write a strip of frames of the first image's generation")
    p.add_argument("--frames", type=positive_int, default=8, help="frames in the strip")
    p.add_argument("--compile", action="store_true",
                   help="torch.compile every transformer block (Fractal.compile); the first batch compiles")
    p.add_argument("--threads", type=positive_int, default=None, help="CPU threads for torch (default: torch's "
                   "choice; 1 is often fastest on a busy machine)")
    p.add_argument("--device", default=None)
    p.add_argument("--bf16", action=argparse.BooleanOptionalAction, default=None, help="default: on with CUDA")
    add_debug_argument(p)
    return p.parse_args(argv)


def visible(canvas: torch.Tensor, decided: torch.Tensor) -> torch.Tensor:
    """Undecided elements shown mid-grey: ``[N, 3, H, W]`` uint8-valued."""
    return torch.where(decided, canvas, torch.full_like(canvas, 128))


def main(argv=None) -> dict:
    """Sample; returns a summary dict."""
    args = parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    device = pick_device(args.device)
    bf16 = device.type == "cuda" if args.bf16 is None else args.bf16
    ckpt = Path(args.checkpoint)
    info = checkpoint_info(ckpt)
    model = load_model(ckpt, ema=not args.no_ema, device=device).eval()
    if args.compile:
        model.compile()
    conditional = model.num_classes > 0 and not args.unconditional and info.get("conditional", True)
    check_classes(args.classes, model, info)
    if args.classes is not None:
        labels = torch.tensor(args.classes, dtype=torch.long)
        labels = labels.repeat(math.ceil(args.num_samples / labels.numel()))[: args.num_samples]
    elif conditional:
        # Random classes among those the training data had (the model may have more).
        seen = min(model.num_classes, info.get("data_classes") or model.num_classes)
        g = torch.Generator().manual_seed(args.seed)
        labels = torch.randint(0, seen, (args.num_samples,), generator=g)
    else:
        labels = None
    options = options_from(args, info)
    if labels is None and options.guidance != 1.0:
        options = SampleOptions.make(options, guidance=1.0)  # guidance needs class labels
    frames: list[torch.Tensor] = []

    def record(progress) -> None:
        frames.append(visible(progress.canvas, progress.decided).cpu())

    gen = torch.Generator(device=device).manual_seed(args.seed)
    out = []
    t0 = time.time()
    batches = range(0, args.num_samples, args.batch_size)
    bar = ProgressBar(len(batches), enabled=not args.no_progress)
    for start in batches:
        n = min(args.batch_size, args.num_samples - start)
        y = labels[start : start + n].to(device) if labels is not None else None
        bar.then = record if start == 0 and (args.gif or args.strip) else None  # frames of batch 1
        opts = SampleOptions.make(options, callback=bar)
        with autocast(device, bf16):
            out.append(model.sample(n, y, options=opts, generator=gen).cpu())
    bar.close()
    seconds = time.time() - t0
    images = torch.cat(out)
    size = images.shape[-1]
    scale = args.scale or max(1, 128 // size)
    run = ckpt if ckpt.is_dir() else ckpt.parent
    grid_path = Path(args.out) if args.out else run / "samples.png"
    save_grid(images, grid_path, nrow=args.nrow, scale=scale)
    summary = {
        "grid": str(grid_path), "num_samples": images.shape[0], "shape": list(images.shape),
        "seconds": seconds, "seconds_per_image": seconds / max(1, images.shape[0]),
        "labels": labels.tolist() if labels is not None else None,
        "options": {"guidance": options.guidance, "schedule": options.guidance_schedule,
                    "temperature": options.temperature, "filter": options.filter_threshold,
                    "steps": list(options.steps) if options.steps else None},
    }
    if frames and args.gif:
        pics = [to_pil(make_grid(f, nrow=args.nrow, scale=scale)) for f in frames]
        pics += [pics[-1]] * 5  # linger on the result
        Path(args.gif).parent.mkdir(parents=True, exist_ok=True)
        pics[0].save(args.gif, save_all=True, append_images=pics[1:], duration=120, loop=0)
        summary["gif"] = args.gif
    if frames and args.strip:
        k = min(args.frames, len(frames))
        picks = sorted({round(i * (len(frames) - 1) / max(1, k - 1)) for i in range(k)})
        strip = torch.stack([frames[i][0] for i in picks])
        save_grid(strip, args.strip, nrow=len(picks), scale=scale)
        summary["strip"] = args.strip
    print(json.dumps(summary), flush=True)
    return summary


if __name__ == "__main__":
    run(main)
