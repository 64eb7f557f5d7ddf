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

Usage (from the repository root, after ``python3 scripts/setup.py``, which brings scikit-learn)::

    .venv/bin/python examples/digits/train.py              # a few minutes on a CPU
    .venv/bin/python examples/digits/train.py --resume     # after Ctrl-C: continue the saved run

writes ``samples.png`` (one row per digit 0-9, classifier-free guidance), ``completion.png``
(held-out digits: top half given, bottom half drawn) and ``results.json`` into ``--out``
(``runs/digits-results``; ``examples/digits/results`` holds the committed run), and the
model as a ``save_pretrained`` folder into ``--model-out`` (``runs/digits``; load it with
``Fractal.from_pretrained("runs/digits")``). Training goes through :class:`fractalkit.training.Trainer`:
a checkpoint goes to ``--run-dir`` (``runs/digits-training/checkpoint``) every ``--save-every``
steps and on Ctrl-C/SIGTERM, and ``--resume`` continues it with the same result as an
uninterrupted run.
"""

from __future__ import annotations

import contextlib
import json
import math
import sys
import time
from pathlib import Path

import numpy as np
import torch

from fractalkit import (
    ARLevelConfig,
    CategoricalLeafConfig,
    Fractal,
    ImagePatches,
    SampleOptions,
    cli,
)
from fractalkit.filelock import writer_lock
from fractalkit.training import Checkpoint, Trainer, WarmupCosine, budget, load_checkpoint

LEVELS = 17  # grey levels 0..16 in load_digits
HELD_OUT = 297  # the last images: bits/dim and completions are measured on these
SAMPLING = SampleOptions(guidance=2.0, guidance_schedule="linear", temperature=0.9)


def load_data() -> tuple[torch.Tensor, torch.Tensor]:
    """All 1,797 digits: int64 ``[N, 1, 8, 8]`` grey levels in ``[0, 16]`` and int64 ``[N]`` labels."""
    try:
        from sklearn.datasets import load_digits
    except ImportError as err:
        raise SystemExit(
            "examples/digits needs scikit-learn (its digits ship inside the wheel): run "
            "python3 scripts/setup.py and this script with .venv/bin/python, or in your own "
            'environment pip install -e ".[examples]"'
        ) from err
    digits = load_digits()
    x = torch.from_numpy(digits.images.astype(np.int64)).unsqueeze(1)
    y = torch.from_numpy(digits.target.astype(np.int64))
    return x, y


def build_model(width: int = 64, depth: int = 3, dropout: float = 0.1) -> Fractal:
    """The two-level AR fractal with a 17-value categorical leaf (~0.2M parameters at the defaults).

    Args:
        width, depth: the top level's transformer width and blocks (the pixel level uses half
            the width and one block).
        dropout: the blocks' output dropout (1,500 images overfit quickly without it).

    Returns:
        A freshly initialised :class:`fractalkit.Fractal` with event shape ``(1, 8, 8)``.
    """
    return Fractal(
        [
            (ImagePatches(8, 2, channels=1), ARLevelConfig(width=width, depth=depth, heads=4, proj_dropout=dropout)),
            (ImagePatches(2, 1, channels=1),
             ARLevelConfig(width=width // 2, depth=1, heads=4, proj_dropout=dropout)),
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
    """Write rows of ``[n, 1, 8, 8]`` grey-level images as one PNG (ink dark on white paper;
    entries of -1, the hidden part of a completion's input, are drawn mid-grey)."""
    from PIL import Image, ImageDraw

    cols = max(r.shape[0] for r in rows)
    cell, pad, left = 8 * scale, 2, 86
    img = Image.new("L", (left + cols * (cell + pad), len(rows) * (cell + pad)), 255)
    draw = ImageDraw.Draw(img)
    for i, (row, label) in enumerate(zip(rows, labels, strict=True)):
        top = i * (cell + pad)
        draw.text((2, top + cell // 2 - 5), label, fill=0)
        for j, image in enumerate(row):
            ink = 255 - image[0].float().clamp(min=0) * (255 / (LEVELS - 1))
            grey = torch.where(image[0] < 0, 170.0, ink).round().byte().numpy()  # -1: not given
            tile = Image.fromarray(grey).resize((cell, cell), Image.NEAREST)
            img.paste(tile, (left + j * (cell + pad), top))
    img.save(path)


def shift(x: torch.Tensor, g: torch.Generator) -> torch.Tensor:
    """Move each image by up to one pixel in each direction (blank paper enters): augmentation."""
    padded = torch.nn.functional.pad(x, (1, 1, 1, 1))
    offsets = torch.randint(0, 3, (x.shape[0], 2), generator=g).tolist()
    return torch.stack([padded[i, :, dy : dy + 8, dx : dx + 8] for i, (dy, dx) in enumerate(offsets)])


def train(model: Fractal, x: torch.Tensor, y: torch.Tensor, *, steps: int, batch: int = 64,
          lr: float = 2e-3, seed: int = 0, progress: bool = True, run_dir: Path | None = None,
          save_every: int | None = None, log_every: int | None = None,
          resume: Checkpoint | None = None) -> dict:
    """AdamW with warm-up and a cosine (:class:`fractalkit.training.WarmupCosine`) for ``steps``
    steps on shifted digits, through :class:`fractalkit.training.Trainer`; batches, shifts and
    the loss's label dropout come from ``seed``.

    With ``run_dir`` a checkpoint goes to ``run_dir/checkpoint`` every ``save_every`` steps, at
    the end and on Ctrl-C/SIGTERM (the run then returns early with ``"interrupted"`` set);
    ``resume`` (a :class:`fractalkit.training.Checkpoint` of such a run, whose model is
    ``model``) continues it exactly: the same losses and weights as an uninterrupted run.

    Returns:
        ``{"steps", "seconds", "last_loss_bits_per_dim", "interrupted"}``.
    """
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=0.05, betas=(0.9, 0.95))
    trainer = Trainer(
        model, opt, generator=torch.Generator().manual_seed(seed), steps=steps, grad_clip=1.0,
        schedule=WarmupCosine(opt, peak_lr=lr, warmup_steps=min(50, steps // 10), total_steps=steps),
        out=run_dir, save_every=save_every, log_every=log_every, progress=progress,
        extra={"example": "digits", "steps": steps, "batch": batch, "lr": lr, "seed": seed},
    )
    if resume is not None:
        trainer.restore(resume)

    def next_batch(g: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
        idx = torch.randint(0, x.shape[0], (batch,), generator=g)
        return shift(x[idx], g), y[idx]

    result = trainer.fit(next_batch)
    model.eval()
    return {"steps": result.steps, "seconds": result.seconds, "interrupted": result.interrupted,
            "last_loss_bits_per_dim": result.last_nll / math.log(2)}


def resumable(run_dir: Path, *, steps: int, batch: int, lr: float, seed: int) -> Checkpoint:
    """The checkpoint in ``run_dir`` after checking that these settings continue it.

    Raises:
        cli.UserError: no checkpoint there, or it was written with other settings.
    """
    if not (run_dir / "checkpoint").exists():
        raise cli.UserError(f"--resume: no checkpoint in {run_dir} (--run-dir); start without --resume")
    ck = load_checkpoint(run_dir)
    wanted = {"example": "digits", "steps": steps, "batch": batch, "lr": lr, "seed": seed}
    got = {k: ck.extra.get(k) for k in wanted}
    if got != wanted:
        raise cli.UserError(f"--resume: {ck.path} was written with {got}, not {wanted}; use the same "
                            "--steps, --batch, --lr and --seed, or another --run-dir")
    return ck


def run(
    out: Path, *, model_out: Path = Path("runs/digits"), steps: int = 1500, batch: int = 64, lr: float = 2e-3, per_class: int = 10,
    seed: int = 0, threads: int = 1, progress: bool = True, run_dir: Path | None = None,
    save_every: int | None = None, log_every: int = 50, resume: bool = False,
) -> dict:
    """Train, measure held-out bits/dim, draw samples and completions, write the results.

    Args:
        out: the results folder (created): pictures and ``results.json``.
        model_out: the trained model as a :meth:`fractalkit.Fractal.save_pretrained` folder.
        steps: optimizer steps.
        batch, lr: AdamW batch size and peak learning rate.
        per_class: samples drawn per digit (one row each).
        seed: seeds the initialisation, the batches and the samples.
        threads: ``torch.set_num_threads`` (1 is fastest for this small model on a busy CPU).
        progress: show progress bars.
        run_dir: the training run's folder (``checkpoint/``, ``log.jsonl``); None: no checkpoints.
        save_every: checkpoint every this many steps (with ``run_dir``; also at the end and on
            Ctrl-C/SIGTERM).
        log_every: steps between the records of ``run_dir/log.jsonl``.
        resume: continue the run saved in ``run_dir`` (same settings).

    Returns:
        The dict written to ``results.json``, or ``{"interrupted": signal name, "step": n}``
        when Ctrl-C/SIGTERM stopped the training (after saving it; nothing else is written).
    """
    torch.set_num_threads(threads)
    out.mkdir(parents=True, exist_ok=True)
    x, y = load_data()
    train_x, train_y = x[:-HELD_OUT], y[:-HELD_OUT]
    test_x, test_y = x[-HELD_OUT:], y[-HELD_OUT:]
    if resume and run_dir is None:
        raise cli.UserError("--resume needs the run's folder (--run-dir)")
    ck = resumable(run_dir, steps=steps, batch=batch, lr=lr, seed=seed) if resume else None
    # One writer per run folder: a second run on it is refused before it touches the log
    lock = writer_lock(run_dir, what="--run-dir") if run_dir is not None else contextlib.nullcontext()
    with lock:
        if run_dir is not None and ck is None and (run_dir / "log.jsonl").exists():
            (run_dir / "log.jsonl").unlink()  # a new run: the log of an older one would mix in
        torch.manual_seed(seed)
        model = build_model()
        start = time.perf_counter()
        bpd_before = bits_per_dim(model, test_x, test_y)
        if ck is not None:  # the untrained figure above comes from the same seed as the saved run's
            model = ck.model

        log = train(model, train_x, train_y, steps=steps, batch=batch, lr=lr, seed=seed, progress=progress,
                    run_dir=run_dir, save_every=save_every, log_every=log_every if run_dir else None, resume=ck)
    if log["interrupted"]:
        print(f"{log['interrupted']}: saved {run_dir / 'checkpoint'} at step {log['steps']}; continue "
              "with the same command and --resume", flush=True)
        return {"interrupted": log["interrupted"], "step": log["steps"]}
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
    shown = torch.where(known, originals, torch.full_like(originals, -1))
    completed = [model.complete(originals, known, digits, options=SAMPLING, generator=g) for _ in range(3)]
    save_grid(out / "completion.png", [originals, shown, *completed],
              ["original", "given (top)", "completed", "completed", "completed"])
    model.save_pretrained(model_out, sampling=SAMPLING, description="fractalkit quick start: sklearn digits")

    results = {
        "held_out_bits_per_dim": bpd,
        "held_out_bits_per_dim_untrained": bpd_before,
        "uniform_bits_per_dim": math.log2(LEVELS),
        "params": sum(p.numel() for p in model.parameters()),
        "train_steps": log["steps"],
        "train_last_loss_bits_per_dim": log["last_loss_bits_per_dim"],
        "train_seconds": log["seconds"],
        "samples_drawn": len(samples),
        "sample_seconds": sample_s,
        "total_seconds": time.perf_counter() - start,
        "batch": batch,
        "lr": lr,
        "seed": seed,
        "device": budget.device_description(torch.device("cpu"), threads),
    }
    (out / "results.json").write_text(json.dumps(results, indent=2) + "\n")
    print(f"wrote {out / 'samples.png'} and {out / 'completion.png'} "
          f"({results['total_seconds']:.0f} s in all); the model: Fractal.from_pretrained({str(model_out)!r})",
          flush=True)
    return results


def main(argv: list[str] | None = None) -> dict:
    """Command line: ``--steps``, ``--batch``, ``--lr``, ``--seed``, ``--threads``, ``--out``
    (default ``runs/digits-results``, never the committed ``examples/digits/results``)."""
    ap = cli.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--steps", type=cli.positive_int, default=1500, help="optimizer steps (default 1500)")
    ap.add_argument("--batch", type=cli.positive_int, default=64)
    ap.add_argument("--lr", type=cli.positive_float, default=2e-3)
    ap.add_argument("--per-class", type=cli.positive_int, default=10, help="samples drawn per digit")
    ap.add_argument("--seed", type=cli.non_negative_int, default=0)
    ap.add_argument("--threads", type=cli.positive_int, default=1)
    # Not examples/digits/results: that folder holds the committed run the README shows, and a
    # quick start must not rewrite tracked files (pass --out there to refresh them on purpose)
    ap.add_argument("--out", type=Path, default=Path("runs/digits-results"),
                    help="pictures and results.json (default runs/digits-results; the committed "
                         "figures are in examples/digits/results)")
    ap.add_argument("--model-out", type=Path, default=Path("runs/digits"),
                    help="the model folder (default runs/digits; load it with Fractal.from_pretrained)")
    ap.add_argument("--run-dir", type=Path, default=Path("runs/digits-training"),
                    help="checkpoints and log.jsonl of the training run (default runs/digits-training)")
    ap.add_argument("--save-every", type=cli.positive_int, default=250,
                    help="checkpoint every N steps (also at the end and on Ctrl-C/SIGTERM)")
    ap.add_argument("--log-every", type=cli.positive_int, default=50, help="steps between log.jsonl records")
    ap.add_argument("--resume", action="store_true", help="continue the run saved in --run-dir")
    ap.add_argument("--no-progress", action="store_true", help="no progress bar")
    cli.add_debug_argument(ap)
    args = ap.parse_args(argv)
    for flag in ("--out", "--model-out", "--run-dir"):  # folders: refuse a file there in one line
        value = getattr(args, flag[2:].replace("-", "_"))
        if value.exists() and not value.is_dir():
            ap.error(f"{flag} {value} exists and is not a folder; give a folder (it is created if missing)")
    return run(args.out, model_out=args.model_out, steps=args.steps, batch=args.batch, lr=args.lr, per_class=args.per_class,
               seed=args.seed, threads=args.threads, progress=not args.no_progress, run_dir=args.run_dir,
               save_every=args.save_every, log_every=args.log_every, resume=args.resume)


if __name__ == "__main__":
    result = cli.run(main)
    if result.get("interrupted"):  # the shell's codes for a process ended by the signal
        sys.exit({"SIGINT": 130, "SIGTERM": 143}[result["interrupted"]])
