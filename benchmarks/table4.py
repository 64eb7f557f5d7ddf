"""Reproduce one row of the paper's Table 4 (ImageNet 256x256 sample quality) from a released model.

Needs: a GPU (the paper: 1.29 s per image for FractalMAR-H at batch 1,024 on an H100; a CPU
takes minutes per image), the released weights (``Fractal.from_pretrained`` downloads them), the
original's reference statistics ``adm_in256_stats.npz`` (FractalGen's ``fid_stats/``; or ADM's
``VIRTUAL_imagenet256_labeled.npz``, whose images also give precision/recall) and the Inception
weights (``--inception``, or ``--download-inception`` online).

    python benchmarks/table4.py --model fractalmar-large-in256 --reference fid_stats/adm_in256_stats.npz \\
        --num-samples 50000 --batch 256 --samples-dir runs/table4-large --device cuda

Several GPUs, on one machine or many (``torchrun``; each process draws every W-th batch, the
images do not depend on the number of processes, and rank 0 scores the merged samples):

    torchrun --standalone --nproc_per_node=8 benchmarks/table4.py --model fractalmar-large-in256 \\
        --reference fid_stats/adm_in256_stats.npz --num-samples 50000 --batch 256 \\
        --samples-dir runs/table4-large

50,000 samples is the paper's count. ``--num-samples 5000`` is a labelled short run (FID is biased
upwards at fewer samples: compare like with like). Sampled batches are kept in ``--samples-dir``;
re-running the same command resumes where it stopped and gives the same images (batch b is
drawn from seed ``--seed + b``; each process keeps its own batches, and a restart, with any
number of processes, draws only the missing ones); all samples are also written as one ADM-format
``merged_<N>x<H>x<W>x3.npz`` there (ADM's evaluator reads it). Results go to
``benchmarks/results/table4_<model>_<n>.json`` with the paper's row beside them.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch

from fractalkit import Fractal, cli
from fractalkit.imagenet import metrics
from fractalkit.training import init_distributed

#: The paper's Table 4 rows for the released 256x256 models (FID, IS, precision, recall).
PAPER = {
    "fractalmar-base-in256": {"fid": 11.80, "inception_score": 274.3, "precision": 0.78, "recall": 0.29},
    "fractalmar-large-in256": {"fid": 7.30, "inception_score": 334.9, "precision": 0.79, "recall": 0.44},
    "fractalmar-huge-in256": {"fid": 6.15, "inception_score": 348.9, "precision": 0.81, "recall": 0.46},
}
PAPER_SAMPLES = 50_000


def parse_args(argv=None) -> argparse.Namespace:
    """The command line (see ``--help``)."""
    p = cli.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", required=True, help="a released name (e.g. fractalmar-large-in256) or a model folder")
    p.add_argument("--reference", required=True, help="reference statistics .npz (adm_in256_stats.npz)")
    p.add_argument("--num-samples", type=cli.positive_int, default=PAPER_SAMPLES)
    p.add_argument("--batch", type=cli.positive_int, default=64)
    p.add_argument("--seed", type=cli.non_negative_int, default=0)
    p.add_argument("--samples-dir", type=Path, default=None, help="keep/resume sampled batches here")
    p.add_argument("--inception", default=None, help="inception-2015-12-05.pt")
    p.add_argument("--download-inception", action="store_true")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu",
                   help="under torchrun, cuda means cuda:LOCAL_RANK")
    p.add_argument("--out", type=Path, default=Path(__file__).parent / "results")
    cli.add_debug_argument(p)
    args = p.parse_args(argv)
    if args.num_samples < 2:
        p.error(f"--num-samples must be >= 2 for FID, got {args.num_samples}")
    if not Path(args.reference).is_file():
        p.error(f"--reference: no file at {args.reference}")
    args.device = str(cli.check_device(p, args.device))
    for flag, value in (("--out", args.out), ("--samples-dir", args.samples_dir)):
        if value is not None and value.exists() and not value.is_dir():
            p.error(f"{flag} {value} exists and is not a folder; give a folder (it is created if missing)")
    return args


def main(argv=None) -> dict:
    """Sample, extract features, score; write and print the results (rank 0 under torchrun;
    the other ranks only sample and return an empty dict)."""
    args = parse_args(argv)
    rank, world, device = init_distributed(args.device)  # one process unless started by torchrun
    try:
        return table4_row(args, rank, world, device)
    finally:
        if world > 1:
            torch.distributed.destroy_process_group()


def table4_row(args: argparse.Namespace, rank: int, world: int, device: torch.device) -> dict:
    """:func:`main` once the processes are set up."""
    if rank == 0:  # before sampling: a missing file stops the job at once
        net = metrics.InceptionV3(args.inception, download=args.download_inception, device=str(device))
        reference = metrics.load_reference(args.reference, net, progress=True)
    model = Fractal.from_pretrained(args.model, device=str(device))
    samples_dir = args.samples_dir or Path("runs") / f"table4-{Path(args.model).name}-seed{args.seed}"
    merged = samples_dir / metrics.merged_name(args.num_samples, model.event_shape)
    t0 = time.time()
    images = metrics.sample_images(model, args.num_samples, batch=args.batch, seed=args.seed,
                                   folder=samples_dir, out=merged)
    sample_s = time.time() - t0
    if rank != 0:
        return {}
    scores = metrics.evaluate(metrics.extract_features(net, images, progress=True), reference)
    name = Path(args.model).name
    result = {
        "model": args.model, **scores,
        "label": "paper protocol (50,000 samples)" if args.num_samples >= PAPER_SAMPLES
        else f"SHORT RUN: {args.num_samples} samples, not the paper's 50,000 (FID is biased upwards)",
        "paper": PAPER.get(name), "reference": str(args.reference),
        "sampling_options": repr(model.pretrained_options), "device": str(device), "processes": world,
        "seconds_sampling_this_run": sample_s, "samples_dir": str(samples_dir), "samples_npz": str(merged),
    }
    args.out.mkdir(parents=True, exist_ok=True)
    path = args.out / f"table4_{name}_{args.num_samples}.json"
    path.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2))
    print(f"wrote {path}")
    return result

if __name__ == "__main__":
    cli.run(main)
