"""Conditional completion: inpainting, outpainting, uncropping and class-conditional editing.

    python examples/imagenet_pixels/complete.py --checkpoint runs/tiny-in32
    python examples/imagenet_pixels/complete.py --checkpoint runs/small-in64 --photo chelsea \\
        --mask center --classes 207 --samples 3 --out edit.png
    python examples/imagenet_pixels/complete.py --checkpoint runs/small-in64 --image me.jpg --mask mask.png

Inputs: your images (``--image``, center-cropped to the model's resolution) or the photographs
that ship inside scikit-image (``--photo``: astronaut, chelsea, coffee, rocket,
hubble_deep_field; the default uses all of them). Masks: a PNG (white = to generate, resized
to the model's resolution) or a named region: center (inpainting), left-half / right-half /
top-half / bottom-half (outpainting), border / outside-center (uncropping). With ``--classes``
the generated part is conditioned on that class (class-conditional editing).

The output grid has one row per (image, mask): the original, the masked input (unknown pixels
grey), then ``--samples`` completions. Known pixels are copied unchanged; the JSON summary
reports the largest change on them (always 0).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from pixels_common import (
    REGIONS,
    ProgressBar,
    add_sampling_arguments,
    autocast,
    check_classes,
    checkpoint_info,
    load_image,
    load_mask,
    options_from,
    photo,
    pick_device,
    save_grid,
)

from fractalkit import SampleOptions
from fractalkit.cli import (
    ArgumentParser,
    UserError,
    add_debug_argument,
    int_list,
    non_negative_int,
    positive_int,
    run,
)
from fractalkit.data.natural import PHOTOS
from fractalkit.training import load_model


def parse_args(argv=None) -> argparse.Namespace:
    """The command line (see ``--help``)."""
    p = ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--checkpoint", required=True, help="checkpoint folder, run folder or .safetensors model")
    p.add_argument("--no-ema", action="store_true")
    p.add_argument("--image", action="append", default=[], help="an image file (repeatable)")
    p.add_argument("--photo", action="append", default=[], choices=list(PHOTOS),
                   help="a scikit-image photograph (repeatable; default: all of them when no --image)")
    p.add_argument("--mask", action="append", default=[],
                   help=f"a PNG (white = generate) or one of {', '.join(REGIONS)} (repeatable; "
                   "default: center, right-half, outside-center)")
    p.add_argument("--classes", type=int_list, default=None, help="class id(s) to condition on, comma-separated, "
                   "one per image or one for all (class-conditional editing)")
    p.add_argument("--samples", type=positive_int, default=2, help="completions per (image, mask)")
    add_sampling_arguments(p)
    p.add_argument("--seed", type=non_negative_int, default=0)
    p.add_argument("--out", default=None, help="grid PNG (default: <run>/completion.png)")
    p.add_argument("--scale", type=positive_int, default=None, help="grid upscale factor (default: to >= 128 px)")
    p.add_argument("--threads", type=positive_int, default=None, help="CPU threads for torch (default: torch's "
                   "choice; 1 is often fastest on a busy machine)")
    p.add_argument("--device", default=None)
    p.add_argument("--bf16", action=argparse.BooleanOptionalAction, default=None)
    add_debug_argument(p)
    return p.parse_args(argv)


def main(argv=None) -> dict:
    """Complete; returns a summary dict (printed as JSON)."""
    args = parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    device = pick_device(args.device)
    bf16 = device.type == "cuda" if args.bf16 is None else args.bf16
    ckpt = Path(args.checkpoint)
    info = checkpoint_info(ckpt)
    model = load_model(ckpt, ema=not args.no_ema, device=device).eval()
    size = model.event_shape[-1]
    photos = args.photo or ([] if args.image else list(PHOTOS))
    images = [load_image(p, size) for p in args.image] + [photo(p, size) for p in photos]
    names = [Path(p).name for p in args.image] + photos
    masks = args.mask or ["center", "right-half", "outside-center"]
    unknown = [load_mask(m, size) for m in masks]
    labels = None
    check_classes(args.classes, model, info)
    if args.classes is not None:
        ids = list(args.classes)
        if len(ids) == 1:
            ids = ids * len(images)
        if len(ids) != len(images):
            raise UserError(f"--classes: give one id or one per image ({len(images)}), got {len(ids)}")
        labels = ids
    options = options_from(args, info)
    if labels is None and options.guidance != 1.0:
        options = SampleOptions.make(options, guidance=1.0)  # guidance needs class labels

    rows, x_all, known_all, y_all = [], [], [], []
    for i, img in enumerate(images):
        for m in unknown:
            known = (~m)[None].expand(3, size, size)
            for _ in range(args.samples):
                x_all.append(img)
                known_all.append(known)
                if labels is not None:
                    y_all.append(labels[i])
            rows.append((img, torch.where(known, img, torch.full_like(img, 128))))
    x = torch.stack(x_all).to(device)
    known = torch.stack(known_all).to(device)
    y = torch.tensor(y_all, device=device) if labels is not None else None
    gen = torch.Generator(device=device).manual_seed(args.seed)
    t0 = time.time()
    bar = ProgressBar(1, enabled=not args.no_progress, desc="completing")
    with autocast(device, bf16):
        out = model.complete(x, known, y, options=SampleOptions.make(options, callback=bar),
                             generator=gen).cpu()
    bar.close()
    seconds = time.time() - t0
    known_cpu = known.cpu()
    max_change = int((out - x.cpu()).abs().masked_select(known_cpu).max()) if bool(known_cpu.any()) else 0
    tiles = []
    for r, (orig, masked) in enumerate(rows):
        tiles += [orig, masked, *list(out[r * args.samples:(r + 1) * args.samples])]
    scale = args.scale or max(1, 128 // size)
    run = ckpt if ckpt.is_dir() else ckpt.parent
    path = Path(args.out) if args.out else run / "completion.png"
    save_grid(torch.stack(tiles), path, nrow=2 + args.samples, scale=scale)
    summary = {
        "grid": str(path), "images": names, "masks": masks, "classes": labels,
        "samples": args.samples, "shape": list(out.shape), "seconds": seconds,
        "max_change_on_known_pixels": max_change,
        "layout": "rows: (image, mask); columns: original, masked input, completions",
    }
    print(json.dumps(summary), flush=True)
    return summary


if __name__ == "__main__":
    run(main)
