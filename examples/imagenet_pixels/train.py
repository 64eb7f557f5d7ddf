"""Train a pixel-by-pixel fractal model on images (ImageNet, Tiny ImageNet, CIFAR, your own).

    python examples/imagenet_pixels/train.py                       # tiny preset, scikit-image crops
    python examples/imagenet_pixels/train.py --preset small-in64 \\
        --data zh-plus/tiny-imagenet --holdout 0.05 --minutes 25
    torchrun --nproc_per_node=8 examples/imagenet_pixels/train.py --preset fractalmar-in64 \\
        --data /datasets/imagenet/train --batch-size 2048 --epochs 800 --ema

The recipe is the paper's (Appendix A): AdamW (0.9, 0.95), weight decay 0.05, lr = base lr x
batch / 256, linear warm-up then cosine, gradient clipping, label dropout and the red-channel
loss weight from the preset. Every random draw comes from a seeded torch.Generator (masks,
orders and label dropout) or from the seed and epoch (data order and flips), and all their
states go into the checkpoint, so ``--resume`` continues with the same losses as an
uninterrupted run on CPU.

Outputs in ``--out`` (default ``runs/<preset>``): ``checkpoint/`` (atomic, see
fractalkit.training), ``log.jsonl`` (one JSON object per logged step), ``curve.png`` (training
NLL and held-out bits/dim), ``args.json``.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import sys
from pathlib import Path
from types import SimpleNamespace

import torch

from fractalkit import Fractal
from fractalkit.cli import (
    ArgumentParser,
    UserError,
    add_debug_argument,
    check_data,
    check_device,
    non_negative_float,
    non_negative_int,
    positive_float,
    positive_int,
    probability,
    run,
)
from fractalkit.filelock import writer_lock
from fractalkit.imagenet.data import load_image_dataset
from fractalkit.imagenet.presets import PRESETS, get_preset
from fractalkit.training import (
    Trainer,
    WarmupCosine,
    init_distributed,
    load_checkpoint,
    parameter_groups,
)

#: --skip-nonfinite-batches gives up after this many consecutive bad batches (the run diverged)
MAX_SKIPPED_IN_A_ROW = 10

CPU_PRESETS = ("tiny-in32", "small-in64")
CPU_EXPECTATION = (
    "[train] what to expect: a CPU run of minutes lowers the bits/dim from 8.0 (uniform) to about "
    "6.5; at that budget sample.py and complete.py draw coloured noise with smooth patches, not "
    "objects. Recognisable ImageNet pictures take a paper-sized model trained on GPUs for days "
    "(FractalMAR-64: 3.5 days on 32 H100s); draw from the released one with "
    "Fractal.from_pretrained('fractalmar-in64') (docs/checkpoints.md), or train "
    "examples/digits/train.py for recognisable digits on a CPU in a few minutes."
)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """The command line (see ``--help``)."""
    p = ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--preset", choices=list(PRESETS), default=None,
                   help="model configuration (default tiny-in32; with --resume: the checkpoint's)")
    p.add_argument("--data", default=None, help="image folder, .parquet file, save_to_disk folder or a "
                   "Hugging Face Hub dataset name such as zh-plus/tiny-imagenet or uoft-cs/cifar10 "
                   "(downloaded once and cached; default: crops of scikit-image's photographs, no download)")
    p.add_argument("--split", default="train", help="datasets split to read (default train)")
    p.add_argument("--holdout", type=probability, default=0.0, help="fraction held out for evaluation (seeded split)")
    p.add_argument("--upsample-small", action="store_true", help="upsample images smaller than the "
                   "preset's resolution instead of stopping with an error")
    p.add_argument("--natural-count", type=positive_int, default=2048, help="crops in the default dataset")
    p.add_argument("--unconditional", action="store_true", help="ignore labels (train p(x))")
    p.add_argument("--num-classes", type=non_negative_int, default=None, help="override the preset's classes")
    p.add_argument("--out", default=None, help="run folder (default runs/<preset>)")
    p.add_argument("--batch-size", type=positive_int, default=None, help="global batch (default: preset's)")
    p.add_argument("--lr", type=positive_float, default=None, help="peak lr (default: base lr x batch / 256)")
    p.add_argument("--base-lr", type=positive_float, default=None, help="lr per 256 images (default: preset's)")
    p.add_argument("--epochs", type=positive_float, default=None, help="training epochs (default: preset's)")
    p.add_argument("--steps", type=positive_int, default=None, help="optimizer steps (overrides --epochs)")
    p.add_argument("--minutes", type=positive_float, default=None, help="stop (with a checkpoint) after this "
                   "wall time; the lr schedule still follows --steps/--epochs, so size those to fit")
    p.add_argument("--warmup-steps", type=non_negative_int, default=None, help="default: the preset's warm-up epochs")
    p.add_argument("--grad-clip", type=non_negative_float, default=None, help="default: the preset's (0: off)")
    p.add_argument("--weight-decay", type=non_negative_float, default=None)
    p.add_argument("--ema", action="store_true", help="keep an EMA of the weights (saved beside them)")
    p.add_argument("--ema-decay", type=probability, default=None)
    p.add_argument("--bf16", action=argparse.BooleanOptionalAction, default=None,
                   help="bf16 autocast (default: on with CUDA, off on CPU)")
    p.add_argument("--grad-checkpointing", action=argparse.BooleanOptionalAction, default=None,
                   help="recompute blocks in the backward pass (default: on with CUDA)")
    p.add_argument("--compile", action="store_true",
                   help="torch.compile every transformer block (Fractal.compile); pays off on GPUs")
    p.add_argument("--threads", type=positive_int, default=None, help="CPU threads for torch (default: torch's "
                   "choice; 1 is often fastest on a busy machine)")
    p.add_argument("--device", default=None, help="cpu, cuda, cuda:N (default: CUDA if present)")
    p.add_argument("--workers", type=non_negative_int, default=0, help="data-loading worker processes")
    p.add_argument("--seed", type=non_negative_int, default=0)
    p.add_argument("--log-every", type=positive_int, default=10)
    p.add_argument("--save-every", type=positive_int, default=None, help="checkpoint every N steps, at the "
                   "end and on Ctrl-C/SIGTERM (default: 200, or a quarter of the run when shorter)")
    p.add_argument("--eval-every", type=non_negative_int, default=0, help="held-out bits/dim every N steps (needs --holdout)")
    p.add_argument("--eval-images", type=positive_int, default=64, help="held-out images per evaluation")
    p.add_argument("--resume", default=None, help="checkpoint folder (or run folder) to continue from")
    p.add_argument("--stop-after", type=positive_int, default=None, help="stop after this many steps in all "
                   "(the schedule still runs to --steps; resume later with --resume)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.add_argument("--skip-nonfinite-batches", action="store_true", help="skip a batch whose loss or "
                   "gradient is NaN/inf (logged) instead of stopping the run; stops anyway after "
                   f"{MAX_SKIPPED_IN_A_ROW} in a row")
    add_debug_argument(p)
    return p.parse_args(argv)


# ---- the objective --------------------------------------------------------------------------------


def fractal_loss(model: Fractal, batch: tuple, generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """``(total, nll)`` of :meth:`fractalkit.Fractal.loss` on ``batch = (x, labels or None)``:
    what the trainer back-propagates and the NLL it logs (nats per scored pixel)."""
    x, c = batch
    out = model.loss(x, c, generator=generator)
    return out.total, out.nll


# ---- curve ---------------------------------------------------------------------------------------


def plot_curve(log_path: Path, png: Path, title: str) -> None:
    """Training NLL (bits/dim over scored pixels) and held-out bits/dim against steps."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    train, held = [], []
    for number, line in enumerate(log_path.read_text(errors="replace").splitlines(), 1):
        try:
            rec = json.loads(line)
        except json.JSONDecodeError as err:  # the log is a file a person may have edited
            raise UserError(
                f"{log_path}, line {number}, is not valid JSON ({err}); delete that line (or the "
                "file, to plot nothing) and run again"
            ) from err
        if "train_bpd" in rec:
            train.append((rec["step"], rec["train_bpd"]))
        if "heldout_bpd" in rec:
            held.append((rec["step"], rec["heldout_bpd"], rec.get("heldout_stderr") or 0.0))
    fig, ax = plt.subplots(figsize=(6, 4), dpi=120)
    if train:
        ax.plot(*zip(*train, strict=True), lw=1, label="training NLL, masked pixels (bits/dim)")
    if held:
        s, v, e = zip(*held, strict=True)
        ax.errorbar(s, v, yerr=e, marker="o", ms=3, capsize=2, label="held-out bits/dim (estimate ± s.e.)")
    ax.set_xlabel("optimizer step")
    ax.set_ylabel("bits / dim")
    ax.set_title(title, fontsize=9)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(png)
    plt.close(fig)


def data_name(data: str | None) -> str:
    """A short name of the data source for titles (no machine-specific absolute paths)."""
    if not data:
        return "scikit-image crops"
    p = Path(data)
    return f"{p.parent.name}/{p.name}" if p.parent.name else p.name


# ---- evaluation ----------------------------------------------------------------------------------


@torch.no_grad()
def heldout_bpd(model: Fractal, dataset, count: int, batch: int, device, use_labels: bool, seed: int):
    """Bits/dim of the first ``count`` held-out images (one random-order draw each for MAR)."""
    was = model.training
    model.eval()
    values, errs = [], []
    g = torch.Generator(device=device).manual_seed(seed)
    n = min(count, len(dataset))
    for start in range(0, n, batch):
        items = [dataset[i] for i in range(start, min(n, start + batch))]
        x = torch.stack([it[0] for it in items]).to(device)
        y = torch.stack([it[1] for it in items]).to(device) if use_labels else None
        bpd = model.bits_per_dim(x, y, generator=g)
        values.append(bpd.value.float().cpu())
        if bpd.stderr is not None:
            errs.append(bpd.stderr.float().cpu())
    model.train(was)
    v = torch.cat(values)
    mean = float(v.mean())
    se = float(v.std() / math.sqrt(v.numel())) if v.numel() > 1 else 0.0
    return mean, se, bpd.kind


# ---- resuming ------------------------------------------------------------------------------------


def _architecture(config: dict) -> dict:
    """A model config without the settings that may change between runs (memory, classes)."""
    def strip(v):
        if isinstance(v, dict):
            return {k: strip(x) for k, x in v.items() if k != "checkpointing"}
        return [strip(x) for x in v] if isinstance(v, list) else v
    return strip({"levels": config["levels"], "leaf": config["leaf"]})


def load_resumable(args, device):
    """The checkpoint ``--resume`` names (a checkpoint or run folder), after checking that this
    command line can continue it: trainer state present, same preset and architecture."""
    resume = load_checkpoint(args.resume, device=device)
    if resume.optimizer is None or resume.scheduler is None or not resume.rng.get("model"):
        raise UserError(
            f"--resume: {resume.path} holds no trainer state (optimizer, schedule, random "
            "streams): it can be sampled from but not continued; start a new run instead"
        )
    trained = resume.extra.get("preset")
    if trained not in PRESETS:
        raise UserError(f"--resume: {resume.path} records no known preset ({trained!r}); it was "
                        "not written by this script")
    if args.preset is not None and args.preset != trained:
        raise UserError(
            f"--resume: {resume.path} was trained with --preset {trained}, not {args.preset}; "
            "drop --preset to continue it, or start a new run with another --out"
        )
    if _architecture(resume.config) != _architecture(PRESETS[trained].config):
        raise UserError(
            f"--resume: {resume.path} holds a model whose architecture differs from preset "
            f"{trained} (its levels or leaf); it cannot be continued by this script"
        )
    if args.num_classes is not None and args.num_classes != resume.model.num_classes:
        raise UserError(
            f"--resume: {resume.path} has {resume.model.num_classes} classes, not "
            f"--num-classes {args.num_classes}; drop --num-classes to continue it"
        )
    args.preset = trained
    return resume


# ---- main ----------------------------------------------------------------------------------------


def image_data(args, preset, num_classes: int, rank: int, world: int):
    """``(dataset, held-out dataset or None, sampler, uses labels)`` for this process."""
    common = {"split": args.split, "num_classes": None if args.unconditional else num_classes, "seed": args.seed,
              "small": "upsample" if args.upsample_small else "error", "holdout": args.holdout,
              "natural_count": args.natural_count}
    dataset = load_image_dataset(args.data, preset.image_size, part="train" if args.holdout > 0 else "all", **common)
    heldout = None
    if args.holdout > 0:
        heldout = load_image_dataset(args.data, preset.image_size, flip=False, part="heldout", **common)
    sampler = torch.utils.data.DistributedSampler(
        dataset, num_replicas=world, rank=rank, shuffle=True, seed=args.seed, drop_last=True
    )
    return dataset, heldout, sampler, dataset.has_labels and not args.unconditional and num_classes > 0


def epoch_batches(dataset, sampler, local_batch: int, per_epoch: int, use_labels: bool, workers: int):
    """``start_step -> (x, labels or None) batches from that step on``: the data order of an
    epoch comes from the seed and the epoch, so a resumed run sees the same batches."""
    def batches(start: int):
        step = start
        while True:
            epoch, offset = divmod(step, per_epoch)
            sampler.set_epoch(epoch)
            dataset.set_epoch(epoch)
            order = list(sampler)
            chunks = [order[i * local_batch : (i + 1) * local_batch] for i in range(offset, per_epoch)]
            for x, y in torch.utils.data.DataLoader(dataset, batch_sampler=chunks, num_workers=workers):
                yield x, (y if use_labels else None)
                step += 1
    return batches


def build_model(args, preset, device: torch.device, resume, ckpting: bool) -> Fractal:
    """The preset's model (or the resumed one); ``ckpting``: recompute blocks in the backward pass."""
    if resume is not None:
        model = resume.model
    else:
        overrides = {"checkpointing": ckpting, **({} if args.num_classes is None else {"num_classes": args.num_classes})}
        model = preset.build(**overrides).to(device)
    if args.compile:
        model.compile()  # in place: parameter names and checkpoints are unchanged
    return model


def recipe(args, preset, batch: int, per_epoch: int, resume) -> SimpleNamespace:
    """The paper's recipe with the command line's overrides: ``total`` steps of the schedule,
    ``stop`` (this run's last step), ``peak`` lr (base lr x batch / 256), ``warmup`` steps,
    ``weight_decay``, ``grad_clip`` (None: off), ``ema_decay`` (None: no EMA)."""
    r = preset.training
    total = args.steps or max(1, round((args.epochs if args.epochs is not None else r.epochs) * per_epoch))
    if resume is not None:
        total = resume.scheduler["total_steps"]
    base_lr = args.base_lr if args.base_lr is not None else r.base_lr
    warmup = args.warmup_steps if args.warmup_steps is not None else round(r.warmup_epochs * per_epoch)
    clip = args.grad_clip if args.grad_clip is not None else r.grad_clip
    return SimpleNamespace(
        total=total, stop=min(total, args.stop_after) if args.stop_after else total,
        peak=args.lr if args.lr is not None else base_lr * batch / 256, warmup=min(warmup, max(0, total - 1)),
        weight_decay=args.weight_decay if args.weight_decay is not None else r.weight_decay,
        grad_clip=clip or None, ema_decay=(args.ema_decay or r.ema_decay) if args.ema else None,
        betas=r.betas, min_lr=r.min_lr,
    )


def main(argv: list[str] | None = None) -> dict:
    """Train; returns a summary dict (also the last line of ``log.jsonl``)."""
    args = parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    check_device(None, args.device)  # one line for --device gpu or cuda without CUDA
    check_data(None, "--data", args.data, what="an image folder, a .parquet file, a save_to_disk folder or a "
               "Hugging Face Hub dataset name such as zh-plus/tiny-imagenet")
    rank, world, device = init_distributed(args.device)
    resume = load_resumable(args, device) if args.resume else None
    args.preset = args.preset or "tiny-in32"
    preset = get_preset(args.preset)
    bf16 = device.type == "cuda" if args.bf16 is None else args.bf16
    ckpting = device.type == "cuda" if args.grad_checkpointing is None else args.grad_checkpointing
    out = Path(args.out or f"runs/{args.preset}")
    torch.manual_seed(args.seed + rank)  # only for anything outside our generators (dropout)
    model = build_model(args, preset, device, resume, ckpting)

    dataset, heldout, sampler, use_labels = image_data(args, preset, model.num_classes, rank, world)
    batch = args.batch_size or preset.training.batch_size
    if batch % world:
        raise ValueError(f"--batch-size {batch} is not divisible by the {world} processes")
    per_epoch = len(sampler) // (batch // world)
    if per_epoch < 1:
        raise ValueError(f"the dataset has {len(dataset)} images, fewer than one batch of {batch}; lower --batch-size")
    r = recipe(args, preset, batch, per_epoch, resume)

    # No weight decay on norms, biases, positions, mask tokens and the null class (what the
    # modules declare: fractalkit.training.parameter_groups); fused: one kernel per step.
    optimizer = torch.optim.AdamW(parameter_groups(model, r.weight_decay), lr=r.peak, betas=r.betas, fused=True)

    def on_log(record: dict) -> None:
        record.update(epoch=record["step"] / per_epoch, train_bpd=record["nll"] / math.log(2),
                      images_per_s=record["steps_per_s"] * batch)

    def evaluate(m: Fractal) -> dict:
        mean, se, kind = heldout_bpd(m, heldout, args.eval_images, batch // world, device, use_labels, args.seed)
        return {"heldout_bpd": mean, "heldout_stderr": se, "heldout_kind": kind}

    evaluating = heldout is not None and args.eval_every > 0
    trainer = Trainer(
        model, optimizer, generator=torch.Generator(device=device).manual_seed(args.seed * 1000 + rank),
        steps=r.stop, budget_s=args.minutes * 60 if args.minutes else None, loss=fractal_loss,
        schedule=WarmupCosine(optimizer, peak_lr=r.peak, warmup_steps=r.warmup, total_steps=r.total, min_lr=r.min_lr),
        grad_clip=r.grad_clip, ema_decay=r.ema_decay, bf16=bf16, out=out,
        # default: at most 200 steps and at least four checkpoints per run (a crash costs little)
        save_every=args.save_every or max(1, min(200, math.ceil((r.stop - (resume.step if resume else 0)) / 4))),
        extra={"args": vars(args), "preset": args.preset, "conditional": use_labels,
               "data_classes": dataset.num_classes if use_labels else 0},
        log_every=args.log_every, on_log=on_log, progress=not args.no_progress,
        evaluate=evaluate if evaluating else None, eval_every=args.eval_every if evaluating else 0,
        skip_nonfinite=MAX_SKIPPED_IN_A_ROW if args.skip_nonfinite_batches else 0, check_every=1,
        advice="Lower --lr/--base-lr, keep --grad-clip on, or pass --skip-nonfinite-batches",
    )
    if resume is not None:
        trainer.restore(resume)
    # One writer per run folder (the first process holds it): a second run on the folder is
    # refused before it overwrites args.json
    with writer_lock(out, what="--out") if rank == 0 else contextlib.nullcontext():
        if rank == 0:
            out.mkdir(parents=True, exist_ok=True)
            (out / "args.json").write_text(json.dumps(vars(args), indent=1))
            print(f"[train] {args.preset}: {sum(p.numel() for p in model.parameters()) / 1e6:.2f}M parameters on "
                  f"{device} x{world}; {len(dataset)} images ({'labelled' if use_labels else 'unconditional'}), "
                  f"batch {batch}, {r.total} steps ({per_epoch} per epoch), peak lr {r.peak:.3g}, warm-up {r.warmup}, "
                  f"bf16 {bf16}, checkpointing {ckpting}, EMA {args.ema}; run folder {out}", flush=True)

        result = trainer.fit(batches=epoch_batches(dataset, sampler, batch // world, per_epoch, use_labels, args.workers))
        summary = finish(args, out, result, r.total, rank)
    if world > 1:
        torch.distributed.destroy_process_group()
    return summary


def finish(args, out: Path, result, total: int, rank: int) -> dict:
    """The run's summary (the last line of ``log.jsonl``), its curve and the closing messages."""
    summary = {"final": True, "step": result.steps, "total_steps": total, "elapsed_s": result.seconds,
               "train_bpd_last": result.last_log.get("train_bpd"), "skipped_nonfinite": result.skipped_nonfinite,
               "interrupted": result.interrupted}
    if result.parameter_digests is not None:
        summary.update(parameter_digests=result.parameter_digests,
                       ranks_identical=len(set(result.parameter_digests)) == 1)
    if rank == 0:
        if result.interrupted:
            print(f"[train] {result.interrupted}: saved {out / 'checkpoint'} at step {result.steps}; continue "
                  f"with --resume {out}", flush=True)
        with open(out / "log.jsonl", "a") as f:
            f.write(json.dumps(summary) + "\n")
        plot_curve(out / "log.jsonl", out / "curve.png", f"{args.preset} on {data_name(args.data)}")
        print(f"[train] done: {json.dumps(summary)}", flush=True)
        if args.preset in CPU_PRESETS:
            print(CPU_EXPECTATION, flush=True)
    return summary


if __name__ == "__main__":
    result = run(main)
    if result.get("interrupted"):
        sys.exit({"SIGINT": 130, "SIGTERM": 143}[result["interrupted"]])
