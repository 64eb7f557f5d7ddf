"""Train a pixel-by-pixel fractal model on images (ImageNet, Tiny ImageNet, CIFAR, your own).

    python examples/imagenet_pixels/train.py                       # tiny preset, scikit-image crops
    python examples/imagenet_pixels/train.py --preset small-in64 \\
        --data ../shared/data/tiny-imagenet-64/train.parquet --holdout 0.05 --minutes 25
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
import hashlib
import json
import math
import os
import sys
import time
from pathlib import Path

import torch
import torch.distributed as dist
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parent))
from pixels_common import autocast, pick_device

from fractalkit import Fractal
from fractalkit.cli import (
    ArgumentParser,
    UserError,
    add_debug_argument,
    non_negative_float,
    non_negative_int,
    positive_float,
    positive_int,
    probability,
    run,
)
from fractalkit.imagenet.data import load_image_dataset
from fractalkit.imagenet.presets import PRESETS, get_preset
from fractalkit.training import EMA, WarmupCosine, load_checkpoint, save_checkpoint
from fractalkit.training.nonfinite import NonFiniteLoss, describe, nonfinite_terms
from fractalkit.training.signals import StopRequests

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
    p.add_argument("--data", default=None, help="image folder, .parquet file or save_to_disk folder "
                   "(default: crops of scikit-image's photographs, no download)")
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


# ---- distributed ------------------------------------------------------------------------------


def setup_distributed(args) -> tuple[int, int, torch.device]:
    """Rank, world size and device; initialises the process group under torchrun."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    if world > 1:
        local = int(os.environ.get("LOCAL_RANK", "0"))
        use_cuda = torch.cuda.is_available() and (args.device is None or args.device.startswith("cuda"))
        if use_cuda:
            torch.cuda.set_device(local)
            device = torch.device("cuda", local)
        else:
            device = torch.device("cpu")
        dist.init_process_group("nccl" if use_cuda else "gloo")
        return rank, world, device
    return 0, 1, pick_device(args.device)


def parameter_digest(model: nn.Module) -> str:
    """SHA-256 of every parameter's bytes, in name order (identical weights <=> equal digests)."""
    h = hashlib.sha256()
    for name, p in sorted(model.named_parameters()):
        h.update(name.encode())
        h.update(p.detach().to("cpu", torch.float32).contiguous().numpy().tobytes())
    return h.hexdigest()


class LossModule(nn.Module):
    """Wraps ``Fractal.loss`` as ``forward`` so DistributedDataParallel can sync its gradients."""

    def __init__(self, model: Fractal) -> None:
        super().__init__()
        self.model = model

    def forward(self, x, c, generator):
        """Returns ``(total, nll)`` scalars; ``c`` is any condition the model's conditioner
        takes (class labels here); see :meth:`fractalkit.Fractal.loss`."""
        out = self.model.loss(x, c, generator=generator)
        return out.total, out.nll


# ---- curve ---------------------------------------------------------------------------------------


def plot_curve(log_path: Path, png: Path, title: str) -> None:
    """Training NLL (bits/dim over scored pixels) and held-out bits/dim against steps."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    train, held = [], []
    for line in log_path.read_text().splitlines():
        rec = json.loads(line)
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


def main(argv: list[str] | None = None) -> dict:
    """Train; returns a summary dict (also the last line of ``log.jsonl``)."""
    args = parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    rank, world, device = setup_distributed(args)
    main_proc = rank == 0
    resume = load_resumable(args, device) if args.resume else None
    args.preset = args.preset or "tiny-in32"
    preset = get_preset(args.preset)
    recipe = preset.training
    cuda = device.type == "cuda"
    bf16 = cuda if args.bf16 is None else args.bf16
    ckpting = cuda if args.grad_checkpointing is None else args.grad_checkpointing
    out = Path(args.out or f"runs/{args.preset}")
    torch.manual_seed(args.seed + rank)  # only for anything outside our generators (dropout)

    # ---- model ----
    if resume is not None:
        model = resume.model
    else:
        overrides = {"checkpointing": ckpting}
        if args.num_classes is not None:
            overrides["num_classes"] = args.num_classes
        model = preset.build(**overrides).to(device)
    if args.compile:
        model.compile()  # in place: parameter names and checkpoints are unchanged
    num_classes = model.num_classes

    # ---- data ----
    dataset = load_image_dataset(
        args.data,
        preset.image_size,
        split=args.split,
        num_classes=None if args.unconditional else num_classes,
        seed=args.seed,
        small="upsample" if args.upsample_small else "error",
        holdout=args.holdout,
        part="train" if args.holdout > 0 else "all",
        natural_count=args.natural_count,
    )
    heldout = None
    if args.holdout > 0:
        heldout = load_image_dataset(
            args.data, preset.image_size, split=args.split, num_classes=None if args.unconditional else num_classes,
            seed=args.seed, flip=False, small="upsample" if args.upsample_small else "error",
            holdout=args.holdout, part="heldout", natural_count=args.natural_count,
        )
    use_labels = dataset.has_labels and not args.unconditional and num_classes > 0
    batch = args.batch_size or recipe.batch_size
    if batch % world:
        raise ValueError(f"--batch-size {batch} is not divisible by the {world} processes")
    local_batch = batch // world
    sampler = torch.utils.data.DistributedSampler(
        dataset, num_replicas=world, rank=rank, shuffle=True, seed=args.seed, drop_last=True
    )
    per_epoch = len(sampler) // local_batch
    if per_epoch < 1:
        raise ValueError(
            f"the dataset has {len(dataset)} images, fewer than one batch of {batch}; lower --batch-size"
        )
    epochs = args.epochs if args.epochs is not None else recipe.epochs
    total = args.steps or max(1, round(epochs * per_epoch))
    if resume is not None:
        total = resume.scheduler["total_steps"] if resume.scheduler else total

    # ---- optimisation ----
    base_lr = args.base_lr if args.base_lr is not None else recipe.base_lr
    peak = args.lr if args.lr is not None else base_lr * batch / 256
    warmup = args.warmup_steps if args.warmup_steps is not None else round(recipe.warmup_epochs * per_epoch)
    warmup = min(warmup, max(0, total - 1))
    decay, no_decay = [], []
    for name, prm in model.named_parameters():
        # No weight decay on norms, biases, embeddings of positions and tokens (as the original).
        (no_decay if prm.ndim < 2 or "pos_embed" in name or "mask_token" in name
         or "null_embedding" in name else decay).append(prm)
    wd = args.weight_decay if args.weight_decay is not None else recipe.weight_decay
    optimizer = torch.optim.AdamW(
        [{"params": decay, "weight_decay": wd}, {"params": no_decay, "weight_decay": 0.0}],
        lr=peak, betas=recipe.betas,
        fused=True,  # one kernel per step, no full-size temporaries (the foreach default has them)
    )
    scheduler = WarmupCosine(optimizer, peak_lr=peak, warmup_steps=warmup, total_steps=total, min_lr=recipe.min_lr)
    ema = EMA(model, args.ema_decay or recipe.ema_decay) if args.ema else None
    gen = torch.Generator(device=device).manual_seed(args.seed * 1000 + rank)
    step = 0
    if resume is not None:
        optimizer.load_state_dict(resume.optimizer)
        scheduler.load_state_dict(resume.scheduler)
        step = resume.step
        states = resume.rng.get("model")
        if states is None or len(states) != world:
            raise ValueError(
                f"--resume: {resume.path} was written by {0 if states is None else len(states)} "
                f"process(es); continue it with {world} (exact resumption needs the same count)"
            )
        gen.set_state(states[rank].cpu())
        torch.set_rng_state(resume.rng["torch"][rank].cpu())
        if ema is not None:
            if resume.ema is None:
                raise ValueError(f"--resume: {resume.path} holds no EMA weights; drop --ema")
            ema.load_state_dict(resume.ema)
    grad_clip = args.grad_clip if args.grad_clip is not None else recipe.grad_clip

    # Parameters a step may not touch: the class table (no labels), the null embedding (no
    # label dropout), an AR level's unused last position; DDP must be told.
    find_unused = (not use_labels) or model.label_drop == 0 or any(
        type(level).__name__ == "ARLevel" for level in model.levels[:-1]
    )
    wrapped: nn.Module = LossModule(model)
    if world > 1:
        wrapped = nn.parallel.DistributedDataParallel(
            wrapped, device_ids=[device.index] if cuda else None, find_unused_parameters=find_unused
        )

    # ---- bookkeeping ----
    if main_proc:
        out.mkdir(parents=True, exist_ok=True)
        (out / "args.json").write_text(json.dumps(vars(args), indent=1))
    log_path = out / "log.jsonl"
    n_params = sum(p.numel() for p in model.parameters())
    if main_proc:
        print(
            f"[train] {args.preset}: {n_params / 1e6:.2f}M parameters on {device} x{world}; "
            f"{len(dataset)} images ({'labelled' if use_labels else 'unconditional'}), batch {batch}, "
            f"{total} steps ({per_epoch} per epoch), peak lr {peak:.3g}, warm-up {warmup}, "
            f"bf16 {bf16}, checkpointing {ckpting}, EMA {ema is not None}; run folder {out}",
            flush=True,
        )
    stop = min(total, args.stop_after) if args.stop_after else total
    # Default: at most 200 steps and at least four checkpoints per run (a crash costs little).
    save_every = args.save_every or max(1, min(200, math.ceil((stop - step) / 4)))
    bar = None
    if main_proc and not args.no_progress:
        from tqdm import tqdm

        bar = tqdm(total=stop, initial=step, unit="step", dynamic_ncols=True)

    last_saved = resume.step if resume is not None else None

    def save():
        nonlocal last_saved
        states = [gen.get_state(), torch.get_rng_state()]
        if world > 1:
            gathered = [None] * world
            dist.all_gather_object(gathered, states)
        else:
            gathered = [states]
        if main_proc:
            save_checkpoint(
                out / "checkpoint", model, step=step, optimizer=optimizer, scheduler=scheduler,
                ema=ema, rng={"model": [s[0] for s in gathered], "torch": [s[1] for s in gathered]},
                extra={"args": vars(args), "preset": args.preset, "world_size": world,
                       "conditional": use_labels,
                       "data_classes": dataset.num_classes if use_labels else 0},
            )
        last_saved = step
        if world > 1:
            dist.barrier()

    model.train()
    t_start = time.time()
    t_window, images_window = time.time(), 0
    last = {}
    budget_s = args.minutes * 60 if args.minutes else None
    skipped = skipped_in_a_row = 0
    requests = StopRequests()
    with requests:  # Ctrl-C / SIGTERM: finish the step, save, stop
        while step < stop:
            epoch, offset = divmod(step, per_epoch)
            sampler.set_epoch(epoch)
            dataset.set_epoch(epoch)
            order = list(sampler)
            batches = [order[i * local_batch : (i + 1) * local_batch] for i in range(offset, per_epoch)]
            loader = torch.utils.data.DataLoader(dataset, batch_sampler=batches, num_workers=args.workers)
            for x, y in loader:
                x = x.to(device, non_blocking=True)
                y = y.to(device) if use_labels else None
                with autocast(device, bf16):
                    total_loss, nll = wrapped(x, y, gen)
                optimizer.zero_grad(set_to_none=True)
                total_loss.backward()
                gnorm = torch.nn.utils.clip_grad_norm_(
                    model.parameters(), grad_clip if grad_clip > 0 else float("inf")
                )
                lr_used = optimizer.param_groups[0]["lr"]
                bad = nonfinite_terms({"total loss": total_loss, "nll": nll, "gradient norm": gnorm})
                if world > 1:  # every rank takes the same decision
                    flag = torch.tensor([float(bool(bad))], device=device)
                    dist.all_reduce(flag)
                    bad = bad or ({"loss on another rank": math.nan} if float(flag) > 0 else {})
                if bad:
                    optimizer.zero_grad(set_to_none=True)
                    if main_proc:
                        with open(log_path, "a") as f:
                            f.write(json.dumps({"step": step + 1, "nonfinite": bad}) + "\n")
                    if not args.skip_nonfinite_batches or skipped_in_a_row >= MAX_SKIPPED_IN_A_ROW:
                        kept = (f"the last good checkpoint {out / 'checkpoint'} (step {last_saved}) is "
                                "untouched" if last_saved is not None else "no checkpoint was written")
                        raise NonFiniteLoss(
                            f"{describe(step + 1, bad)}; the run stopped before applying it and {kept}. "
                            "Lower --lr/--base-lr, keep --grad-clip on, or pass --skip-nonfinite-batches"
                        )
                    skipped, skipped_in_a_row = skipped + 1, skipped_in_a_row + 1
                else:  # the step counts either way: data order and schedule stay the run's
                    skipped_in_a_row = 0
                    optimizer.step()
                    if ema is not None:
                        ema.update(model)
                scheduler.step()
                step += 1
                images_window += batch
                nll_v = float(nll.detach())
                out_of_time = budget_s is not None and time.time() - t_start > budget_s
                out_of_time = out_of_time or requests.requested is not None  # Ctrl-C / SIGTERM
                if world > 1:
                    flag = torch.tensor([float(out_of_time)], device=device)
                    dist.all_reduce(flag)
                    out_of_time = bool(flag > 0)
                last_step = step >= stop or out_of_time
                evaluate = heldout is not None and args.eval_every > 0 and (
                    step % args.eval_every == 0 or last_step
                )
                logging = step % args.log_every == 0 or last_step or evaluate
                if world > 1 and logging:
                    t = torch.tensor([nll_v], device=device)
                    dist.all_reduce(t)
                    nll_v = float(t) / world
                bpd = nll_v / math.log(2)
                if bar is not None:
                    rate = images_window / max(time.time() - t_window, 1e-9)
                    bar.set_postfix(loss=f"{float(total_loss.detach()):.4f}", bpd=f"{bpd:.3f}", img_s=f"{rate:.1f}")
                    bar.update(1)
                if logging:
                    now = time.time()
                    rec = {
                        "step": step, "epoch": step / per_epoch, "loss": float(total_loss.detach()),
                        "nll": nll_v, "train_bpd": bpd, "lr": lr_used,
                        "grad_norm": float(gnorm), "images_per_s": images_window / max(now - t_window, 1e-9),
                        "elapsed_s": now - t_start,
                    }
                    if evaluate:
                        mean, se, kind = heldout_bpd(model, heldout, args.eval_images, local_batch, device, use_labels, args.seed)
                        rec.update(heldout_bpd=mean, heldout_stderr=se, heldout_kind=kind)
                    t_window, images_window = time.time(), 0  # evaluation time is not training time
                    if main_proc:
                        with open(log_path, "a") as f:
                            f.write(json.dumps(rec) + "\n")
                    last = rec
                if step % save_every == 0 or step == stop or out_of_time:
                    save()
                if step >= stop or out_of_time:
                    stop = step
                    break
    if bar is not None:
        bar.close()
    if requests.requested and main_proc:
        print(f"[train] {requests.requested}: saved {out / 'checkpoint'} at step {step}; continue "
              f"with --resume {out}", flush=True)

    summary = {"final": True, "step": step, "total_steps": total, "elapsed_s": time.time() - t_start,
               "train_bpd_last": last.get("train_bpd"), "skipped_nonfinite": skipped,
               "interrupted": requests.requested}
    if world > 1:
        digests = [None] * world
        dist.all_gather_object(digests, parameter_digest(model))
        summary["parameter_digests"] = digests
        summary["ranks_identical"] = len(set(digests)) == 1
    if main_proc:
        with open(log_path, "a") as f:
            f.write(json.dumps(summary) + "\n")
        if log_path.exists():
            plot_curve(log_path, out / "curve.png", f"{args.preset} on {data_name(args.data)}")
        print(f"[train] done: {json.dumps(summary)}", flush=True)
        if args.preset in CPU_PRESETS:
            print(CPU_EXPECTATION, flush=True)
    if world > 1:
        dist.destroy_process_group()
    return summary


if __name__ == "__main__":
    result = run(main)
    if result.get("interrupted"):
        sys.exit({"SIGINT": 130, "SIGTERM": 143}[result["interrupted"]])
