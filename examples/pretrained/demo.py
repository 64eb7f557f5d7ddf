"""Samples and an inpainting demo from a released FractalGen model (or any pretrained folder/Hub id).

    python examples/pretrained/demo.py                                  # FractalMAR-64, classes 207, 360
    python examples/pretrained/demo.py --model fractalmar-large-in256 --classes 88 --photo coffee
    python examples/pretrained/demo.py --model my-folder --mask right-half --out demo

The first run downloads and converts the model (``Fractal.from_pretrained``: 0.75-3.4 GB, cached
after that). It then draws one image per ``--classes`` entry and inpaints the middle of a
scikit-image photograph (``--photo``; ``--mask`` as in ``examples/imagenet_pixels/complete.py``),
with the published sampling settings and a progress bar over the top level's steps. On a CPU an
image takes minutes (64x64) to much longer (256x256); a GPU takes seconds.

Writes ``samples.png`` and ``inpainting.png`` (original, masked input, completion) into ``--out``.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "imagenet_pixels"))
from pixels_common import REGIONS, photo, region_mask, save_grid

from fractalkit import Fractal, SampleOptions, cli
from fractalkit.data.natural import PHOTOS


def with_progress(options: SampleOptions | None, desc: str):
    """``(options with a tqdm callback over top-level steps, the bar)``; close the bar after."""
    from tqdm.auto import tqdm

    bar = tqdm(desc=desc, unit="step")

    def update(progress) -> None:
        bar.total = progress.num_steps
        bar.n = progress.step
        bar.refresh()

    return SampleOptions.make(options, callback=update), bar


def main(argv=None) -> dict:
    """Load, sample, inpaint; write the two PNGs; returns a summary (printed as JSON)."""
    p = cli.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default="fractalmar-in64", help="released name, folder or Hub id")
    p.add_argument("--classes", default="207,360", help="ImageNet class ids, comma-separated")
    p.add_argument("--photo", default="chelsea", choices=list(PHOTOS))
    p.add_argument("--mask", default="center", choices=list(REGIONS))
    p.add_argument("--inpaint-class", type=cli.non_negative_int, default=None,
                   help="condition the inpainting on this class (default: unconditional)")
    p.add_argument("--seed", type=cli.non_negative_int, default=0)
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--out", type=Path, default=Path("demo"))
    cli.add_debug_argument(p)
    args = p.parse_args(argv)
    args.device = str(cli.check_device(p, args.device))
    if args.out.exists() and not args.out.is_dir():
        p.error(f"--out {args.out} exists and is not a folder; give a folder (it is created if missing)")
    model = Fractal.from_pretrained(args.model, device=args.device)
    try:
        classes = [int(c) for c in args.classes.split(",")] if model.num_classes else []
    except ValueError:
        p.error(f"--classes: expected comma-separated integers, got {args.classes!r}")
    if any(not 0 <= c < model.num_classes for c in classes):
        p.error(f"--classes: ids must lie in [0, {model.num_classes}), got {classes}")
    args.out.mkdir(parents=True, exist_ok=True)
    size = model.event_shape[-1]
    scale = max(1, 128 // size)
    g = torch.Generator(device=args.device).manual_seed(args.seed)

    t0 = time.time()
    options, bar = with_progress(model.pretrained_options, "sampling")
    y = torch.tensor(classes, device=args.device) if classes else None
    samples = model.sample(None if classes else 2, y=y, options=options, generator=g).cpu()
    bar.close()
    sample_s = time.time() - t0
    save_grid(samples, args.out / "samples.png", nrow=len(samples), scale=scale)

    image = photo(args.photo, size)
    known = (~region_mask(args.mask, size))[None].expand_as(image)
    y = torch.tensor([args.inpaint_class], device=args.device) if args.inpaint_class is not None else None
    base = model.pretrained_options
    if y is None and base is not None and base.guidance != 1.0:
        base = SampleOptions.make(base, guidance=1.0)  # guidance needs a class label
    options, bar = with_progress(base, "inpainting")
    t0 = time.time()
    out = model.complete(image[None].to(args.device), known[None].to(args.device), y,
                         options=options, generator=g).cpu()
    bar.close()
    inpaint_s = time.time() - t0
    masked = torch.where(known, image, torch.full_like(image, 128))
    save_grid(torch.stack([image, masked, out[0]]), args.out / "inpainting.png", nrow=3, scale=scale)
    summary = {"model": args.model, "classes": classes, "sample_seconds": sample_s,
               "inpaint_seconds": inpaint_s, "device": args.device,
               "files": [str(args.out / "samples.png"), str(args.out / "inpainting.png")]}
    print(json.dumps(summary), flush=True)
    return summary


if __name__ == "__main__":
    cli.run(main)
