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
from fractalkit.data.images import load_image_dataset
from fractalkit.presets import PRESETS, get_preset
from fractalkit.training import EMA, WarmupCosine, load_checkpoint, save_checkpoint


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """The command line (see ``--help``)."""
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--preset", choices=list(PRESETS), default="tiny-in32", help="model configuration")
    p.add_argument("--data", default=None, help="image folder, .parquet file or save_to_disk folder "
                   "(default: crops of scikit-image's photographs, no download)")
    p.add_argument("--split", default="train", help="datasets split to read (default train)")
    p.add_argument("--holdout", type=float, default=0.0, help="fraction held out for evaluation (seeded split)")
    p.add_argument("--upsample-small", action="store_true", help="upsample images smaller than the "
                   "preset's resolution instead of stopping with an error")
    p.add_argument("--natural-count", type=int, default=2048, help="crops in the default dataset")
    p.add_argument("--unconditional", action="store_true", help="ignore labels (train p(x))")
    p.add_argument("--num-classes", type=int, default=None, help="override the preset's classes")
    p.add_argument("--out", default=None, help="run folder (default runs/<preset>)")
    p.add_argument("--batch-size", type=int, default=None, help="global batch (default: preset's)")
    p.add_argument("--lr", type=float, default=None, help="peak lr (default: base lr x batch / 256)")
    p.add_argument("--base-lr", type=float, default=None, help="lr per 256 images (default: preset's)")
    p.add_argument("--epochs", type=float, default=None, help="training epochs (default: preset's)")
    p.add_argument("--steps", type=int, default=None, help="optimizer steps (overrides --epochs)")
    p.add_argument("--minutes", type=float, default=None, help="stop (with a checkpoint) after this "
                   "wall time; the lr schedule still follows --steps/--epochs, so size those to fit")
    p.add_argument("--warmup-steps", type=int, default=None, help="default: the preset's warm-up epochs")
    p.add_argument("--grad-clip", type=float, default=None, help="default: the preset's (0: off)")
    p.add_argument("--weight-decay", type=float, default=None)
    p.add_argument("--ema", action="store_true", help="keep an EMA of the weights (saved beside them)")
    p.add_argument("--ema-decay", type=float, default=None)
    p.add_argument("--bf16", action=argparse.BooleanOptionalAction, default=None,
                   help="bf16 autocast (default: on with CUDA, off on CPU)")
    p.add_argument("--grad-checkpointing", action=argparse.BooleanOptionalAction, default=None,
                   help="recompute blocks in the backward pass (default: on with CUDA)")
    p.add_argument("--compile", action="store_true",
                   help="torch.compile every transformer block (Fractal.compile); pays off on GPUs")
    p.add_argument("--threads", type=int, default=None, help="CPU threads for torch (default: torch's "
                   "choice; 1 is often fastest on a busy machine)")
    p.add_argument("--device", default=None, help="cpu, cuda, cuda:N (default: CUDA if present)")
    p.add_argument("--workers", type=int, default=0, help="data-loading worker processes")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--log-every", type=int, default=10)
    p.add_argument("--save-every", type=int, default=200, help="checkpoint every N steps (and at the end)")
    p.add_argument("--eval-every", type=int, default=0, help="held-out bits/dim every N steps (needs --holdout)")
    p.add_argument("--eval-images", type=int, default=64, help="held-out images per evaluation")
    p.add_argument("--resume", default=None, help="checkpoint folder (or run folder) to continue from")
    p.add_argument("--stop-after", type=int, default=None, help="stop after this many steps in all "
                   "(the schedule still runs to --steps; resume later with --resume)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
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


# ---- main ----------------------------------------------------------------------------------------


def main(argv: list[str] | None = None) -> dict:
    """Train; returns a summary dict (also the last line of ``log.jsonl``)."""
    args = parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    rank, world, device = setup_distributed(args)
    main_proc = rank == 0
    preset = get_preset(args.preset)
    recipe = preset.training
    cuda = device.type == "cuda"
    bf16 = cuda if args.bf16 is None else args.bf16
    ckpting = cuda if args.grad_checkpointing is None else args.grad_checkpointing
    out = Path(args.out or f"runs/{args.preset}")
    torch.manual_seed(args.seed + rank)  # only for anything outside our generators (dropout)

    # ---- model ----
    resume = None
    if args.resume:
        rpath = Path(args.resume)
        if rpath.is_dir() and (rpath / "checkpoint").is_dir() and not (rpath / "MANIFEST.json").exists():
            rpath = rpath / "checkpoint"
        resume = load_checkpoint(rpath, device=device)
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
    bar = None
    if main_proc and not args.no_progress:
        from tqdm import tqdm

        bar = tqdm(total=stop, initial=step, unit="step", dynamic_ncols=True)

    def save():
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
        if world > 1:
            dist.barrier()

    model.train()
    t_start = time.time()
    t_window, images_window = time.time(), 0
    last = {}
    budget_s = args.minutes * 60 if args.minutes else None
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
            optimizer.step()
            scheduler.step()
            if ema is not None:
                ema.update(model)
            step += 1
            images_window += batch
            nll_v = float(nll.detach())
            out_of_time = budget_s is not None and time.time() - t_start > budget_s
            if world > 1 and budget_s is not None:
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
            if step % args.save_every == 0 or step == stop or out_of_time:
                save()
            if step >= stop or out_of_time:
                stop = step
                break
    if bar is not None:
        bar.close()

    summary = {"final": True, "step": step, "total_steps": total, "elapsed_s": time.time() - t_start,
               "train_bpd_last": last.get("train_bpd")}
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
    if world > 1:
        dist.destroy_process_group()
    return summary


if __name__ == "__main__":
    main()
