"""Likelihood of a trained pixel model: bits/dim with its kind, per channel, and NLL heat maps.

    python examples/imagenet_pixels/evaluate.py --checkpoint runs/tiny-in32
    python examples/imagenet_pixels/evaluate.py --checkpoint runs/small-in64 \\
        --data zh-plus/tiny-imagenet --holdout 0.05 --part heldout \\
        --max-images 256 --draws 4 --heatmap heat.png

What the number is (printed beside it):

- AR levels only: the exact NLL.
- MAR levels: an unbiased *estimate* of the any-order bound E_order[-log p_order(x)] with its
  standard error (over images and ``--draws`` random orders/masks per image); with
  ``--orders identity`` the exact NLL of the raster-order AR model inside the MAR model (one
  pass per child per level: slow).
- A guiding pixel (the 256x256 presets) makes each of these a *bound*.

The per-channel breakdown and the heat maps come from an exact teacher-forced pass (identity
orders for MAR levels) over the first ``--heatmap-images`` images: the leaf's per-element
log-probabilities (``Leaf.recording``) merged back to pixel positions.
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
from pixels_common import IMAGE_DATA, autocast, checkpoint_info, pick_device

from fractalkit import Fractal
from fractalkit.cli import (
    ArgumentParser,
    add_debug_argument,
    check_data,
    non_negative_int,
    positive_int,
    probability,
    run,
)
from fractalkit.imagenet.data import load_image_dataset
from fractalkit.training import load_model


def parse_args(argv=None) -> argparse.Namespace:
    """The command line (see ``--help``)."""
    p = ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--checkpoint", required=True, help="checkpoint folder, run folder or .safetensors model")
    p.add_argument("--no-ema", action="store_true")
    p.add_argument("--data", default=None, help="as in train.py (default: other random crops, "
                   "seed + 1, of the same scikit-image photographs the default training run uses: "
                   "new crops, not held-out images)")
    p.add_argument("--split", default="train")
    p.add_argument("--holdout", type=probability, default=0.0, help="the held-out fraction used in training")
    p.add_argument("--part", choices=["all", "train", "heldout"], default=None,
                   help="which part of the split (default: heldout when --holdout > 0, else all)")
    p.add_argument("--seed", type=non_negative_int, default=0, help="the training seed (defines the held-out split)")
    p.add_argument("--upsample-small", action="store_true")
    p.add_argument("--max-images", type=positive_int, default=256)
    p.add_argument("--batch-size", type=positive_int, default=16)
    p.add_argument("--draws", type=positive_int, default=1, help="random orders per image for MAR estimates")
    p.add_argument("--orders", choices=["random", "identity"], default="random",
                   help="identity: exact NLL under raster orders (slow for MAR levels)")
    p.add_argument("--unconditional", action="store_true", help="score p(x), not p(x | class)")
    p.add_argument("--heatmap", default=None, help="PNG of per-pixel NLL maps beside the images")
    p.add_argument("--heatmap-images", type=non_negative_int, default=4)
    p.add_argument("--json", default=None, metavar="FILE",
                   help="also write the results to this JSON file")
    p.add_argument("--threads", type=positive_int, default=None, help="CPU threads for torch (default: torch's "
                   "choice; 1 is often fastest on a busy machine)")
    p.add_argument("--device", default=None)
    p.add_argument("--bf16", action=argparse.BooleanOptionalAction, default=False,
                   help="bf16 autocast (off by default: likelihoods are reported in float32)")
    q = p.add_argument_group("sample quality (FID, Inception Score, precision/recall)")
    q.add_argument("--fid", action="store_true", help="draw samples and score them against --reference")
    q.add_argument("--reference", default=None,
                   help="reference statistics .npz (mu/sigma, e.g. adm_in64_stats.npz, or arr_0 images)")
    q.add_argument("--num-samples", type=positive_int, default=1000, help="samples to draw (the paper: 50000)")
    q.add_argument("--samples-dir", default=None, help="keep sampled batches here and resume from them")
    q.add_argument("--inception", default=None, help="inception-2015-12-05.pt (default: $FRACTALKIT_INCEPTION "
                   "or the fractalkit cache)")
    q.add_argument("--download-inception", action="store_true", help="download it if missing (online)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    add_debug_argument(p)
    args = p.parse_args(argv)
    if args.fid and not args.reference:
        p.error("--fid needs --reference PATH (reference statistics .npz)")
    if args.fid and args.num_samples < 2:
        p.error(f"--num-samples must be >= 2 for FID, got {args.num_samples}")
    return args


def sample_quality(model: Fractal, args: argparse.Namespace, device: torch.device) -> dict:
    """FID, IS (and precision/recall with an image reference) of ``--num-samples`` samples."""
    from fractalkit.imagenet import metrics

    net = metrics.InceptionV3(args.inception, download=args.download_inception, device=str(device))
    reference = metrics.load_reference(args.reference, net, progress=True)
    images = metrics.sample_images(model, args.num_samples, batch=args.batch_size, seed=args.seed,
                                   folder=args.samples_dir)
    scores = metrics.evaluate(metrics.extract_features(net, images, progress=True), reference)
    return {**scores, "reference": args.reference,
            "fid_note": f"{args.num_samples} samples (the paper uses 50,000; fewer samples raise FID)"}


@torch.no_grad()
def element_nll_map(model: Fractal, x: torch.Tensor, y: torch.Tensor | None) -> torch.Tensor:
    """Exact per-element NLL in bits: float ``[N, 3, H, W]`` (identity orders for MAR levels).

    Its sum over an image is the exact ``-log2 p(x)`` under those orders (plus the guiding
    pixels' terms, which are not per pixel and are left out of the map).
    """
    leaf = model.leaf
    with leaf.recording() as records:
        orders = "identity" if any(getattr(g, "uses_orders", False) for g in model.levels[:-1]) else None
        model.log_prob(x, y, orders=orders)
    lp = torch.cat(records)  # [N * pixels, E]: rows in the levels' split order
    values = lp.view(-1, *leaf.event_shape)
    for level in reversed(model.levels[:-1]):
        k = level.num_children
        values = level.partitioner.merge(values.view(-1, k, *level.partitioner.child_shape))
    return -values / math.log(2)


def heatmap_figure(images: torch.Tensor, maps: torch.Tensor, path: Path, title: str) -> None:
    """Each image beside its per-pixel NLL (bits, summed over R, G, B)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    n = images.shape[0]
    fig, axes = plt.subplots(n, 2, figsize=(4.4, 2.1 * n), dpi=120, squeeze=False)
    per_pixel = maps.sum(1)  # [N, H, W]
    vmax = float(per_pixel.quantile(0.99))
    for i in range(n):
        axes[i, 0].imshow(images[i].permute(1, 2, 0).numpy().astype("uint8"))
        im = axes[i, 1].imshow(per_pixel[i].numpy(), cmap="magma", vmin=0, vmax=vmax)
        axes[i, 1].set_title(f"{float(maps[i].mean()):.2f} bits/dim", fontsize=7)
        for ax in axes[i]:
            ax.axis("off")
        fig.colorbar(im, ax=axes[i, 1], fraction=0.046, pad=0.04, label="bits / pixel (RGB)")
    fig.suptitle(title, fontsize=8)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path)
    plt.close(fig)


def main(argv=None) -> dict:
    """Evaluate; returns the results dict (printed as JSON)."""
    args = parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    device = pick_device(args.device)
    check_data(None, "--data", args.data, what=IMAGE_DATA)
    ckpt = Path(args.checkpoint)
    info = checkpoint_info(ckpt)
    model = load_model(ckpt, ema=not args.no_ema, device=device).eval()
    size = model.event_shape[-1]
    part = args.part or ("heldout" if args.holdout > 0 else "all")
    # Without a data set, crops of another seed than training's (seed + 1): unseen crops.
    dataset = load_image_dataset(
        args.data, size, split=args.split, flip=False, seed=args.seed if args.data else args.seed + 1,
        small="upsample" if args.upsample_small else "error", holdout=args.holdout, part=part,
        num_classes=None if args.unconditional or model.num_classes == 0 else model.num_classes,
        natural_count=max(args.max_images, 16),
    )
    use_labels = (
        dataset.has_labels and not args.unconditional and model.num_classes > 0
        and info.get("conditional", True)
    )
    n = min(args.max_images, len(dataset))
    gen = torch.Generator(device=device).manual_seed(args.seed)
    values, errs, kind = [], [], None
    t0 = time.time()
    first_x, first_y = None, None
    from tqdm import tqdm

    for start in tqdm(range(0, n, args.batch_size), desc="scoring", unit="batch",
                      disable=args.no_progress, dynamic_ncols=True):
        items = [dataset[i] for i in range(start, min(n, start + args.batch_size))]
        x = torch.stack([it[0] for it in items]).to(device)
        y = torch.stack([it[1] for it in items]).to(device) if use_labels else None
        if first_x is None:
            first_x, first_y = x, y
        with torch.no_grad(), autocast(device, args.bf16):
            bpd = model.bits_per_dim(
                x, y, num_draws=args.draws, generator=gen,
                orders="identity" if args.orders == "identity" else None,
            )
        values.append(bpd.value.float().cpu())
        errs.append(bpd.stderr.float().cpu() if bpd.stderr is not None else torch.zeros_like(values[-1]))
        kind = bpd.kind
    v, e = torch.cat(values), torch.cat(errs)
    mean = float(v.mean())
    spread = float(v.var(unbiased=True)) / v.numel() if v.numel() > 1 else 0.0
    stderr = math.sqrt(spread + float((e**2).sum()) / v.numel() ** 2)
    results = {
        "bits_per_dim": mean, "stderr": stderr, "kind": kind, "images": int(v.numel()),
        "draws": args.draws, "orders": args.orders, "conditional": bool(use_labels),
        "data": args.data or "scikit-image crops", "part": part, "seconds": time.time() - t0,
    }
    if args.heatmap or args.heatmap_images:
        k = min(args.heatmap_images, first_x.shape[0])
        if k > 0:
            yk = first_y[:k] if first_y is not None else None
            maps = element_nll_map(model, first_x[:k], yk).float().cpu()
            results["per_channel_bits"] = {
                c: float(maps[:, i].mean()) for i, c in enumerate(("R", "G", "B"))
            }
            results["per_channel_note"] = f"exact, identity orders, first {k} images"
            if args.heatmap:
                heatmap_figure(first_x[:k].cpu(), maps, Path(args.heatmap),
                               f"per-pixel NLL (exact, raster orders); {ckpt.name}")
                results["heatmap"] = args.heatmap
    if args.fid:
        results.update(sample_quality(model, args, device))
    label = {"exact": "exact", "bound": "upper bound", "estimate": "estimate"}.get(kind, kind)
    print(f"{mean:.4f} ± {stderr:.4f} bits/dim ({label}; {v.numel()} images, {args.draws} draw(s))")
    print(json.dumps(results), flush=True)
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps(results, indent=1))
    return results


if __name__ == "__main__":
    run(main)
