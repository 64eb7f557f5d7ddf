"""Quick start: a class-conditional fractal model of handwritten digits, trained on a CPU in minutes.

Shape letters: N images, 8x8 pixels, V = 17 grey levels (0 = white paper, 16 = full ink).

Data: the 1,797 handwritten digits that ship inside scikit-learn (``sklearn.datasets.load_digits``,
the UCI "Optical Recognition of Handwritten Digits" test set): 8x8 images with 17 grey levels,
labels 0-9. Nothing is downloaded. The last 297 images are held out for bits/dim.

The fractal: ``ImagePatches(8, 2, channels=1)`` (an AR level over the 4x4 grid of 2x2 patches) ->
``ImagePatches(2, 1, channels=1)`` (an AR level over each patch's 4 pixels) -> a
:class:`fractalkit.CategoricalLeaf` over the 17 grey levels. Both levels are autoregressive, so
bits/dim are exact, and completing the bottom half of an image given its top half is an exact draw
from the model (the known half is a prefix of its raster order).

Usage (from the repository root; ``pip install -e ".[examples]"`` brings scikit-learn)::

    python examples/digits/train.py                    # ~3 minutes on a laptop CPU

writes ``samples.png`` (one row per digit 0-9, classifier-free guidance), ``completion.png``
(held-out digits: top half given, bottom half drawn), ``model.safetensors`` (load it with
``Fractal.from_pretrained(folder)``) and ``results.json`` into ``--out``.
"""

from __future__ import annotations

import argparse
import json
import math
import time
from pathlib import Path

import numpy as np
import torch

from fractalkit import ARLevelConfig, CategoricalLeafConfig, Fractal, ImagePatches, SampleOptions
from fractalkit.training import budget

LEVELS = 17  # grey levels 0..16 in load_digits
HELD_OUT = 297  # the last images: bits/dim and completions are measured on these
SAMPLING = SampleOptions(guidance=2.0, guidance_schedule="linear", temperature=0.9)


def load_data() -> tuple[torch.Tensor, torch.Tensor]:
    """All 1,797 digits: int64 ``[N, 1, 8, 8]`` grey levels in ``[0, 16]`` and int64 ``[N]`` labels."""
    try:
        from sklearn.datasets import load_digits
    except ImportError as err:
        raise SystemExit(
            "examples/digits needs scikit-learn (its digits ship inside the wheel): "
            'pip install -e ".[examples]" or pip install scikit-learn'
        ) from err
    digits = load_digits()
    x = torch.from_numpy(digits.images.astype(np.int64)).unsqueeze(1)
    y = torch.from_numpy(digits.target.astype(np.int64))
    return x, y


def build_model(width: int = 64, depth: int = 3) -> Fractal:
    """The two-level AR fractal with a 17-value categorical leaf (~0.2M parameters at the defaults).

    Args:
        width, depth: the top level's transformer width and blocks (the pixel level uses half
            the width and one block).

    Returns:
        A freshly initialised :class:`fractalkit.Fractal` with event shape ``(1, 8, 8)``.
    """
    return Fractal(
        [
            (ImagePatches(8, 2, channels=1), ARLevelConfig(width=width, depth=depth, heads=4)),
            (ImagePatches(2, 1, channels=1), ARLevelConfig(width=width // 2, depth=1, heads=4)),
        ],
        leaf=CategoricalLeafConfig(num_values=LEVELS),
        num_classes=10,
        label_drop=0.1,
    )


@torch.no_grad()
def bits_per_dim(model: Fractal, x: torch.Tensor, y: torch.Tensor) -> float:
    """Exact class-conditional bits per pixel of ``x`` (``log2 17 = 4.09`` is a uniform guess)."""
    model.eval()
    return float(model.bits_per_dim(x, y).value.mean())


def save_grid(path: Path, rows: list[torch.Tensor], labels: list[str], scale: int = 6) -> None:
    """Write rows of ``[n, 1, 8, 8]`` grey-level images as one PNG (ink dark on white paper)."""
    from PIL import Image, ImageDraw

    cols = max(r.shape[0] for r in rows)
    cell, pad, left = 8 * scale, 2, 86
    img = Image.new("L", (left + cols * (cell + pad), len(rows) * (cell + pad)), 255)
    draw = ImageDraw.Draw(img)
    for i, (row, label) in enumerate(zip(rows, labels, strict=True)):
        top = i * (cell + pad)
        draw.text((2, top + cell // 2 - 5), label, fill=0)
        for j, image in enumerate(row):
            grey = (255 - image[0].float() * (255 / (LEVELS - 1))).round().byte().numpy()
            tile = Image.fromarray(grey).resize((cell, cell), Image.NEAREST)
            img.paste(tile, (left + j * (cell + pad), top))
    img.save(path)


def run(
    out: Path, *, budget_s: float, max_steps: int | None = None, batch: int = 64, lr: float = 2e-3,
    per_class: int = 10, seed: int = 0, threads: int = 2,
) -> dict:
    """Train, measure held-out bits/dim, draw samples and completions, write the results.

    Args:
        out: the results folder (created).
        budget_s: training seconds; ``max_steps`` caps the step count as well.
        batch, lr: AdamW batch size and peak learning rate.
        per_class: samples drawn per digit (one row each).
        seed: seeds the initialisation, the batches and the samples.
        threads: ``torch.set_num_threads``.

    Returns:
        The dict written to ``results.json``.
    """
    torch.set_num_threads(threads)
    out.mkdir(parents=True, exist_ok=True)
    x, y = load_data()
    train_x, train_y = x[:-HELD_OUT], y[:-HELD_OUT]
    test_x, test_y = x[-HELD_OUT:], y[-HELD_OUT:]
    torch.manual_seed(seed)
    model = build_model()
    start = time.perf_counter()
    bpd_before = bits_per_dim(model, test_x, test_y)

    def next_batch(g: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
        idx = torch.randint(0, train_x.shape[0], (batch,), generator=g)
        return train_x[idx], train_y[idx]

    log = budget.train_for_budget(
        model, next_batch, budget_s=budget_s, lr=lr, max_steps=max_steps,
        generator=torch.Generator().manual_seed(seed),
    )
    model.eval()
    bpd = bits_per_dim(model, test_x, test_y)
    print(f"trained {log['steps']} steps in {log['seconds']:.0f} s; held-out bits/dim "
          f"{bpd_before:.3f} -> {bpd:.3f}", flush=True)

    g = torch.Generator().manual_seed(seed)
    t0 = time.perf_counter()
    labels = torch.arange(10).repeat_interleave(per_class)
    samples = model.sample(y=labels, options=SAMPLING, generator=g)
    sample_s = time.perf_counter() - t0
    save_grid(out / "samples.png", list(samples.split(per_class)), [f"digit {d}" for d in range(10)])

    # Completions: the first held-out image of each digit, top half kept, bottom half drawn.
    firsts = torch.tensor([int((test_y == d).nonzero()[0, 0]) for d in range(10)])
    originals, digits = test_x[firsts], test_y[firsts]
    known = torch.zeros_like(originals, dtype=torch.bool)
    known[..., :4, :] = True
    shown = torch.where(known, originals, torch.zeros_like(originals))
    completed = [model.complete(originals, known, digits, options=SAMPLING, generator=g) for _ in range(3)]
    save_grid(out / "completion.png", [originals, shown, *completed],
              ["original", "top half", "completed", "completed", "completed"])
    model.save_pretrained(out, sampling=SAMPLING, description="fractalkit quick start: sklearn digits")

    results = {
        "held_out_bits_per_dim": bpd,
        "held_out_bits_per_dim_untrained": bpd_before,
        "uniform_bits_per_dim": math.log2(LEVELS),
        "params": sum(p.numel() for p in model.parameters()),
        "train_steps": log["steps"],
        "train_seconds": log["seconds"],
        "sample_seconds_for_100": sample_s,
        "total_seconds": time.perf_counter() - start,
        "batch": batch,
        "lr": lr,
        "seed": seed,
        "device": budget.device_description(torch.device("cpu"), threads),
    }
    (out / "results.json").write_text(json.dumps(results, indent=2) + "\n")
    print(f"wrote {out / 'samples.png'} and {out / 'completion.png'} "
          f"({results['total_seconds']:.0f} s in all)", flush=True)
    return results


def main(argv: list[str] | None = None) -> None:
    """Command line: ``--budget-s``, ``--max-steps``, ``--batch``, ``--lr``, ``--seed``, ``--out``."""
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--budget-s", type=float, default=150.0, help="training seconds (default 150)")
    ap.add_argument("--max-steps", type=int, default=None, help="stop after this many steps too")
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--lr", type=float, default=2e-3)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--out", type=Path, default=Path(__file__).parent / "results")
    args = ap.parse_args(argv)
    if not args.budget_s > 0:
        ap.error(f"--budget-s must be > 0, got {args.budget_s}")
    run(args.out, budget_s=args.budget_s, max_steps=args.max_steps, batch=args.batch, lr=args.lr,
        seed=args.seed, threads=args.threads)


if __name__ == "__main__":
    main()
