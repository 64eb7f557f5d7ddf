"""Likelihood of a trained pixel model: bits/dim with its kind, per channel, and NLL heat maps.

    python examples/imagenet_pixels/evaluate.py --checkpoint runs/tiny-in32
    python examples/imagenet_pixels/evaluate.py --checkpoint runs/small-in64 \\
        --data zh-plus/tiny-imagenet --holdout 0.05 --part heldout \\
        --max-images 256 --draws 4 --heatmap heat.png
    torchrun --standalone --nproc_per_node=4 examples/imagenet_pixels/evaluate.py \\
        --checkpoint runs/small-in64 --max-images 4096 --batch-size 64

Under ``torchrun`` each process scores every W-th batch and the per-image figures are reduced
exactly (float64 ``all_reduce``): the printed mean and standard error are the one-process ones.

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
from typing import NamedTuple

import numpy as np
import torch
import torch.distributed as dist

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
from fractalkit.training import init_distributed, load_model


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


def data_note(args: argparse.Namespace, part: str) -> str | None:
    """What the scored images are, when they are not held-out images (None when they are).

    Printed before scoring and beside the figure: a bits/dim over training images reads like a
    test figure unless it says otherwise.
    """
    if not args.data:
        return ("NOT HELD-OUT: without --data these are new random crops (seed + 1) of the same "
                "scikit-image photographs the default training run learnt from, so the figure "
                "measures the fit to the training photographs. For a held-out figure, train with "
                "--data D --holdout F and evaluate with the same --data D --holdout F --part heldout")
    if part != "heldout":
        return (f"NOT HELD-OUT: --part {part} of {args.data} (--holdout {args.holdout:g}) holds the "
                "images a run on this data trained on; for a held-out figure pass the training "
                "run's --holdout and --part heldout")
    return None


def sample_quality(model: Fractal, args: argparse.Namespace, device: torch.device, rank: int = 0) -> dict:
    """FID, IS (and precision/recall with an image reference) of ``--num-samples`` samples.

    Under ``torchrun`` every process draws its share of the batches
    (:func:`fractalkit.imagenet.metrics.sample_images`); rank 0 alone loads Inception and the
    reference (before sampling, so a missing file stops the job at once) and scores the merged
    samples. Other ranks return an empty dict."""
    from fractalkit.imagenet import metrics

    if rank == 0:
        net = metrics.InceptionV3(args.inception, download=args.download_inception, device=str(device))
        reference = metrics.load_reference(args.reference, net, progress=True)
    out = None
    if args.samples_dir:
        out = Path(args.samples_dir) / metrics.merged_name(args.num_samples, model.event_shape)
    images = metrics.sample_images(model, args.num_samples, batch=args.batch_size, seed=args.seed,
                                   folder=args.samples_dir, out=out, progress=not args.no_progress)
    if rank != 0:
        return {}
    scores = metrics.evaluate(metrics.extract_features(net, images, progress=True), reference)
    extra = {"samples_npz": str(out)} if out is not None else {}
    return {**scores, "reference": args.reference, **extra,
            "fid_note": f"{args.num_samples} samples (the paper uses 50,000; fewer samples raise FID)"}


def batch_generator(seed: int, b: int, device: torch.device) -> torch.Generator:
    """The generator of batch ``b``'s random orders and masks: seeded from ``(seed, b)`` through
    NumPy's ``SeedSequence`` (streams of different batches and seeds do not overlap), the same
    whichever process scores the batch."""
    state = int(np.random.SeedSequence([seed, b]).generate_state(1, np.uint64)[0])
    return torch.Generator(device=device).manual_seed(state)


class Scored(NamedTuple):
    """Per-image bits/dim of the first N images of a dataset, the same on every process.

    Attributes:
        values: float64 ``[N]``, bits/dim of each image (an estimate's value for MAR levels).
        stderrs: float64 ``[N]``, each value's standard error over its draws (zeros when exact).
        kind: ``"exact"``, ``"bound"`` or ``"estimate"`` (None on a process that scored nothing).
        first_x: uint8-valued ``[B, 3, H, W]``, the first batch (on rank 0; None elsewhere).
        first_y: its labels ``[B]`` (None without labels or off rank 0).
    """

    values: torch.Tensor
    stderrs: torch.Tensor
    kind: str | None
    first_x: torch.Tensor | None
    first_y: torch.Tensor | None


def score_dataset(
    model: Fractal, dataset, n: int, *, batch_size: int, draws: int = 1, orders: str = "random", seed: int = 0,
    use_labels: bool = False, device: torch.device | str = "cpu", bf16: bool = False, progress: bool = False,
) -> Scored:
    """Bits/dim of images ``0 .. n - 1`` of ``dataset``, spread over the processes of a ``torchrun``
    job (one process without a process group).

    Batches are fixed: batch ``b`` holds images ``b * batch_size`` onwards and its random orders
    come from :func:`batch_generator` ``(seed, b)``. Under ``W`` processes rank ``r`` scores the
    batches ``b`` with ``b % W == r`` (no image twice, none padded), and the per-image figures
    are summed into one float64 vector of ``n`` entries with ``all_reduce`` (each entry is set by
    exactly one rank, the others add zero: the sum is exact). One process and ``W`` processes
    therefore give the same per-image figures, and :func:`summarise` the same mean and standard
    error.

    Args:
        model: the model, on ``device`` (eval mode).
        dataset: items ``(x [3, H, W], y)`` indexable by position.
        n: number of images (at most ``len(dataset)``).
        batch_size: images per batch.
        draws: random orders per image (MAR estimates).
        orders: ``"random"`` or ``"identity"`` (exact raster-order NLL).
        seed: the base seed of the batches' generators.
        use_labels: score ``p(x | y)`` with the dataset's labels, else ``p(x)``.
        device: where to score.
        bf16: bf16 autocast.
        progress: a tqdm bar over this process's batches.

    Returns:
        :class:`Scored`.
    """
    from tqdm import tqdm

    device = torch.device(device)
    distributed = dist.is_available() and dist.is_initialized()
    rank, world = (dist.get_rank(), dist.get_world_size()) if distributed else (0, 1)
    starts = list(range(0, n, batch_size))
    values = torch.zeros(n, dtype=torch.float64)
    stderrs = torch.zeros(n, dtype=torch.float64)
    kind, first_x, first_y = None, None, None
    for b in tqdm([b for b in range(len(starts)) if b % world == rank], desc="scoring", unit="batch",
                  disable=not progress, dynamic_ncols=True):
        start, stop = starts[b], min(n, starts[b] + batch_size)
        items = [dataset[i] for i in range(start, stop)]
        x = torch.stack([it[0] for it in items]).to(device)
        y = torch.stack([torch.as_tensor(it[1]) for it in items]).to(device) if use_labels else None
        if b == 0:
            first_x, first_y = x, y
        with torch.no_grad(), autocast(device, bf16):
            bpd = model.bits_per_dim(
                x, y, num_draws=draws, generator=batch_generator(seed, b, device),
                orders="identity" if orders == "identity" else None,
            )
        values[start:stop] = bpd.value.detach().to("cpu", torch.float64)
        if bpd.stderr is not None:
            stderrs[start:stop] = bpd.stderr.detach().to("cpu", torch.float64)
        kind = bpd.kind
    if distributed and world > 1:
        comm = device if dist.get_backend() == "nccl" else torch.device("cpu")
        both = torch.stack([values, stderrs]).to(comm)
        dist.all_reduce(both)  # each entry is non-zero on one rank only: an exact sum
        values, stderrs = both.cpu().unbind(0)
    return Scored(values, stderrs, kind, first_x, first_y)


def summarise(values: torch.Tensor, stderrs: torch.Tensor) -> tuple[float, float]:
    """Mean bits/dim and its standard error, in float64: the spread over images (unbiased
    variance / N) plus the per-image draws' own variance (``sum stderr^2 / N^2``).

    Args:
        values, stderrs: ``[N]`` per-image bits/dim and standard errors (:class:`Scored`).

    Returns:
        ``(mean, stderr)`` in bits/dim.
    """
    v, e = values.double(), stderrs.double()
    spread = float(v.var(unbiased=True)) / v.numel() if v.numel() > 1 else 0.0
    return float(v.mean()), math.sqrt(spread + float((e**2).sum()) / v.numel() ** 2)


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
    pick_device(args.device)  # an unknown or absent device: one line, exit code 2
    check_data(None, "--data", args.data, what=IMAGE_DATA)
    rank, world, device = init_distributed(args.device)  # one process unless started by torchrun
    try:
        return evaluate_checkpoint(args, rank, world, device)
    finally:
        if world > 1:
            dist.destroy_process_group()


def evaluate_checkpoint(args: argparse.Namespace, rank: int, world: int, device: torch.device) -> dict:
    """:func:`main` once the processes are set up; rank 0 prints and writes the results."""
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
    note = data_note(args, part)
    if note and rank == 0:
        print(f"evaluate.py: {note}", file=sys.stderr, flush=True)
    use_labels = (
        dataset.has_labels and not args.unconditional and model.num_classes > 0
        and info.get("conditional", True)
    )
    n = min(args.max_images, len(dataset))
    t0 = time.time()
    scored = score_dataset(
        model, dataset, n, batch_size=args.batch_size, draws=args.draws, orders=args.orders, seed=args.seed,
        use_labels=use_labels, device=device, bf16=args.bf16, progress=not args.no_progress and rank == 0,
    )
    mean, stderr = summarise(scored.values, scored.stderrs)
    kind, first_x, first_y = scored.kind, scored.first_x, scored.first_y
    results = {
        "bits_per_dim": mean, "stderr": stderr, "kind": kind, "images": n, "processes": world,
        "draws": args.draws, "orders": args.orders, "conditional": bool(use_labels),
        "data": args.data or "scikit-image crops", "part": part, "seconds": time.time() - t0,
    }
    if rank == 0 and (args.heatmap or args.heatmap_images):
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
        results.update(sample_quality(model, args, device, rank))
    if rank != 0:
        return results
    label = {"exact": "exact", "bound": "upper bound", "estimate": "estimate"}.get(kind, kind)
    across = f", {world} processes" if world > 1 else ""
    if note:
        results["note"] = note
    shown = "; NOT held-out images, see the note above" if note else "; held-out images"
    print(f"{mean:.4f} ± {stderr:.4f} bits/dim ({label}; {n} images, {args.draws} draw(s){across}{shown})")
    print(json.dumps(results), flush=True)
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps(results, indent=1))
    return results

if __name__ == "__main__":
    run(main)
