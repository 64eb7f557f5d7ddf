"""The paper's Table 2 on real data, on a CPU: do more levels give better likelihood for less?

Same data (CIFAR-10 32x32, ``--data``: the Hub's ``uoft-cs/cifar10`` by default), same wall-clock budget per model,
models of similar width: one level over all 3,072 pixel-channels (flat AR, a categorical leaf),
two levels (1,024 pixels, then the RGB leaf), three levels (8x8 patches of 4x4, pixels, RGB
leaf), each with AR and MAR levels. Reports GFLOPs per image (the paper's convention, from
benchmarks/cost_table.py), seconds per step, held-out bits/dim at the end (exact for AR; for MAR
the any-order estimate), and a plot of held-out bits/dim against wall-clock time.

Run: ``python benchmarks/levels_study.py --budget 120`` (seconds per model; writes
benchmarks/results/levels_study.json and .png).
"""

from __future__ import annotations

import json
import math
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from cost_table import level_flops

from fractalkit import (
    ARLevelConfig,
    CategoricalLeafConfig,
    Fractal,
    ImagePatches,
    MARLevelConfig,
    RGBLeafConfig,
    SequenceChunks,
    cli,
)

ROOT = Path(__file__).resolve().parents[1]
#: CIFAR-10 on the Hugging Face Hub (downloaded once and cached); ``--data`` also takes a local
#: parquet file or image folder, e.g. ``../shared/data/cifar10-32/train.parquet``
DATA = "uoft-cs/cifar10"
RESULTS = Path(__file__).resolve().parent / "results"


def load_cifar(n_train: int, n_test: int, data: str | Path = DATA) -> tuple[torch.Tensor, torch.Tensor]:
    """uint8 ``[N, 3, 32, 32]`` train and held-out images: the first ``n_train + n_test`` rows
    of ``data`` (a Hub name, a parquet file or an image folder), not flipped."""
    from fractalkit.imagenet.data import load_image_dataset

    ds = load_image_dataset(data, 32, flip=False)
    if len(ds) < n_train + n_test:
        raise ValueError(f"levels_study: {data} holds {len(ds)} images, fewer than {n_train + n_test}")
    images = torch.stack([ds[i][0] for i in range(n_train + n_test)])
    return images[:n_train], images[n_train:]


class FlatPixels(torch.nn.Module):
    """One level over all pixel-channels: images become sequences of 3,072 values in raster
    pixel-then-channel order (the order a flat AR model over the image would use)."""

    def __init__(self, kind: str, width: int) -> None:
        super().__init__()
        cfg = (ARLevelConfig(width=width, depth=2, heads=4, block="vit", rope=False) if kind == "ar"
               else MARLevelConfig(width=width, depth=2, heads=4, neighbours=False))
        self.model = Fractal([(SequenceChunks(3072, 1), cfg)], leaf=CategoricalLeafConfig(num_values=256))

    @staticmethod
    def flatten(x: torch.Tensor) -> torch.Tensor:
        return x.permute(0, 2, 3, 1).reshape(x.shape[0], 3072)


def build(name: str, width: int) -> tuple[Fractal, bool]:
    """The model called ``name`` and whether it is a flat sequence model."""
    kind = name.split("-")[0]

    def level(w):
        if kind == "ar":
            return ARLevelConfig(width=w, depth=2, heads=4)
        return MARLevelConfig(width=w, depth=2, heads=4)

    leaf = RGBLeafConfig(width=32, depth=1, heads=2)
    if name.endswith("1level"):
        return FlatPixels(kind, width).model, True
    if name.endswith("2level"):
        return Fractal([(ImagePatches(32, 1), level(width))], leaf=leaf), False
    return Fractal([(ImagePatches(32, 4), level(width)), (ImagePatches(4, 1), level(width // 2))], leaf=leaf), False


def heldout_bpd(model: Fractal, x: torch.Tensor, flat: bool, generator) -> float:
    model.eval()
    with torch.no_grad():
        data = FlatPixels.flatten(x) if flat else x
        bpd = model.bits_per_dim(data.long(), generator=generator)
    model.train()
    return float(bpd.value.mean())


def run(name: str, train, test, budget: float, batch: int, width: int) -> dict:
    torch.manual_seed(0)
    model, flat = build(name, width)
    with torch.device("meta"):
        meta, _ = build(name, width)
    gflops = sum(level_flops(meta, executed=False)) / 1e9
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3, betas=(0.9, 0.95), weight_decay=0.05)
    g = torch.Generator().manual_seed(0)
    curve = [(0.0, heldout_bpd(model, test, flat, torch.Generator().manual_seed(1)))]
    start, steps, train_time = time.perf_counter(), 0, 0.0
    next_eval = budget / 4
    while train_time < budget:
        t0 = time.perf_counter()
        idx = torch.randint(0, train.shape[0], (batch,), generator=g)
        x = FlatPixels.flatten(train[idx]) if flat else train[idx]
        loss = model.loss(x.long(), generator=g)
        loss.total.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        train_time += time.perf_counter() - t0
        steps += 1
        if train_time >= next_eval or train_time >= budget:
            curve.append((train_time, heldout_bpd(model, test, flat, torch.Generator().manual_seed(1))))
            next_eval += budget / 4
    return {
        "model": name,
        "params_M": sum(p.numel() for p in model.parameters()) / 1e6,
        "gflops_per_image": gflops,
        "steps": steps,
        "seconds_per_step": train_time / steps,
        "heldout_bits_per_dim": curve[-1][1],
        "kind": "exact" if name.startswith("ar") else "estimate",
        "curve": curve,
        "wall_s": time.perf_counter() - start,
    }


def main(argv: list[str] | None = None) -> None:
    parser = cli.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--budget", type=cli.positive_float, default=120.0, help="training seconds per model")
    parser.add_argument("--batch", type=cli.positive_int, default=8)
    parser.add_argument("--width", type=cli.positive_int, default=64)
    parser.add_argument("--models", nargs="+",
                        default=["ar-1level", "ar-2level", "ar-3level", "mar-2level", "mar-3level"])
    parser.add_argument("--data", default=DATA, help=f"CIFAR-10: a Hub dataset name (default {DATA}), "
                        "a parquet file or an image folder")
    cli.add_debug_argument(parser)
    args = parser.parse_args(argv)
    args.data = str(cli.check_data(parser, "--data", args.data, what="a parquet file, an image folder or a Hub dataset name"))
    train, test = load_cifar(2000, 64, args.data)
    rows = []
    for name in args.models:
        r = run(name, train, test, args.budget, args.batch, args.width)
        print(f"{r['model']:12s} {r['params_M']:6.2f}M {r['gflops_per_image']:8.2f} GFLOPs "
              f"{r['seconds_per_step']:7.3f} s/step {r['steps']:5d} steps "
              f"held-out {r['heldout_bits_per_dim']:.3f} bits/dim ({r['kind']})", flush=True)
        rows.append(r)
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "levels_study.json").write_text(json.dumps({"args": vars(args), "rows": rows}, indent=2))
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4))
    for r in rows:
        t, b = zip(*r["curve"], strict=True)
        ax.plot(t, b, marker="o", label=f"{r['model']} ({r['gflops_per_image']:.1f} GFLOPs)")
    ax.set_xlabel("training wall-clock (s, 2-core CPU)")
    ax.set_ylabel("held-out bits/dim")
    ax.set_title("CIFAR-10 32x32: levels at equal wall-clock")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(RESULTS / "levels_study.png", dpi=120)
    print(f"wrote {RESULTS / 'levels_study.json'} and .png; log(2) = {math.log(2):.4f}")


if __name__ == "__main__":
    cli.run(main)
