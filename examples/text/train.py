"""Character-level fractal vs a flat AR model on Tiny Shakespeare, trained for equal wall-clock.

Shape letters: N sequences, L = 256 characters per sequence, c = 16 characters per chunk,
V = 65 distinct characters.

The fractal: ``SequenceChunks(256, 16)`` (an AR level over 16 chunks) -> ``SequenceChunks(16, 1)``
(an AR level over a chunk's 16 characters) -> a categorical leaf over V characters. The flat
baseline: one AR level over all 256 characters with the same leaf. Both embed characters with a
table (one-hot), both are exact autoregressive models, so their bits per character are exact.

The held-out set is the last 10% of the text, cut into non-overlapping 256-character windows;
each window is scored from its own start (no context from before it).

Usage (from the repository root)::

    python examples/text/train.py --budget-s 240 --out examples/text/results

writes ``results.json``, ``samples.txt`` and prints a Markdown table.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import torch
from torch.utils.flop_counter import FlopCounterMode

from fractalkit import ARLevelConfig, CategoricalLeafConfig, Fractal, SequenceChunks, cli
from fractalkit.training import budget

DATA = Path(__file__).resolve().parents[2].parent / "shared" / "data" / "tinyshakespeare" / "input.txt"
SEQ_LEN = 256
CHUNK = 16


def load_corpus(path: Path = DATA) -> tuple[torch.Tensor, str]:
    """The text as character indices and its vocabulary.

    Args:
        path: a UTF-8 text file.

    Returns:
        ``(data, vocab)``: int64 ``[num_chars]`` indices into ``vocab``, and ``vocab`` the sorted
        distinct characters (65 for Tiny Shakespeare).

    Raises:
        FileNotFoundError: if ``path`` does not exist.
    """
    text = Path(path).read_text(encoding="utf-8")
    vocab = "".join(sorted(set(text)))
    lookup = {ch: i for i, ch in enumerate(vocab)}
    return torch.tensor([lookup[ch] for ch in text], dtype=torch.int64), vocab


def split_corpus(data: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """``(train, held_out)``: the first 90% and the last 10% of the characters."""
    cut = int(0.9 * data.numel())
    return data[:cut], data[cut:]


def build_model(kind: str, vocab_size: int, *, seq_len: int = SEQ_LEN, chunk: int = CHUNK,
                width: int = 128, depth: int = 4, heads: int = 4) -> Fractal:
    """The fractal (``"fractal"``) or the flat baseline (``"flat"``) over ``seq_len`` characters.

    Both use ``depth`` transformer blocks in all: the fractal splits them between its two levels.

    Args:
        kind: ``"fractal"`` or ``"flat"``.
        vocab_size: V.
        seq_len: L; ``chunk`` must divide it.
        chunk: c, characters per chunk of the fractal's top level.
        width, depth, heads: transformer size.

    Returns:
        An unconditional :class:`fractalkit.Fractal` over int64 ``[N, L]`` in ``[0, V)``.

    Raises:
        ValueError: for an unknown ``kind``.
    """
    leaf = CategoricalLeafConfig(num_values=vocab_size)
    if kind == "fractal":
        half = max(depth // 2, 1)
        levels = [
            (SequenceChunks(seq_len, chunk), ARLevelConfig(width=width, depth=half, heads=heads, embed="table")),
            (SequenceChunks(chunk, 1), ARLevelConfig(width=width, depth=half, heads=heads, embed="table")),
        ]
    elif kind == "flat":
        levels = [(SequenceChunks(seq_len, 1), ARLevelConfig(width=width, depth=depth, heads=heads, embed="table"))]
    else:
        raise ValueError(f"build_model: kind must be 'fractal' or 'flat', got {kind!r}")
    return Fractal(levels, leaf=leaf, num_classes=0)


def random_windows(data: torch.Tensor, n: int, seq_len: int, generator: torch.Generator) -> torch.Tensor:
    """int64 ``[n, seq_len]`` windows of ``data`` at uniformly random offsets."""
    starts = torch.randint(0, data.numel() - seq_len + 1, (n,), generator=generator)
    return torch.stack([data[s : s + seq_len] for s in starts.tolist()])


def train(model: Fractal, data: torch.Tensor, *, budget_s: float, batch: int = 16,
          lr: float = 1e-3, max_steps: int | None = None, seed: int = 0) -> dict[str, float]:
    """Train with AdamW for ``budget_s`` seconds of wall-clock (or ``max_steps``) on random
    windows of ``data`` (:func:`fractalkit.training.train_for_budget`: 20 warm-up steps, then a
    cosine in elapsed time / budget).

    Returns:
        ``{"steps", "seconds", "s_per_step", "last_loss_bpc"}``.
    """
    seq_len = model.event_shape[0]
    log = budget.train_for_budget(model, lambda g: random_windows(data, batch, seq_len, g),
                                  budget_s=budget_s, lr=lr, max_steps=max_steps,
                                  generator=torch.Generator().manual_seed(seed))
    log["last_loss_bpc"] = log.pop("last_loss_nats") / math.log(2)
    return log


@torch.no_grad()
def bits_per_char(model: Fractal, data: torch.Tensor, *, batch: int = 64,
                  max_windows: int | None = None) -> float:
    """Exact bits per character over non-overlapping windows of ``data`` (each from its start)."""
    model.eval()
    seq_len = model.event_shape[0]
    device = next(model.parameters()).device
    windows = data[: data.numel() // seq_len * seq_len].view(-1, seq_len).to(device)
    if max_windows is not None:
        windows = windows[:max_windows]
    total = 0.0
    for i in range(0, windows.shape[0], batch):
        lp = model.log_prob(windows[i : i + batch])
        assert lp.kind == "exact"
        total += float(lp.value.sum())
    return -total / (windows.numel() * math.log(2))


def flops_per_example(model: Fractal, example: torch.Tensor) -> int:
    """FLOPs of one teacher-forced ``log_prob`` pass on one example (FlopCounterMode's count).

    Counted with autograd on: FlopCounterMode's module tracker fails under ``torch.no_grad``.
    """
    model.eval()
    counter = FlopCounterMode(display=False)
    with counter:
        model.log_prob(example[:1].to(next(model.parameters()).device))
    return int(counter.get_total_flops())


@torch.no_grad()
def sample_seconds(model: Fractal, n: int = 4, seed: int = 0) -> tuple[torch.Tensor, float]:
    """``(samples [n, L], seconds per example)`` with the KV cache, temperature 1."""
    model.eval()
    with budget.Stopwatch(next(model.parameters()).device) as clock:
        x = model.sample(num_samples=n, generator=torch.Generator().manual_seed(seed))
    return x.cpu(), clock.seconds / n


def decode_text(x: torch.Tensor, vocab: str) -> list[str]:
    """int64 ``[N, L]`` indices back to N strings."""
    return ["".join(vocab[i] for i in row.tolist()) for row in x]


def main(argv: list[str] | None = None) -> None:
    """Train both models for the same wall-clock budget and write the table."""
    ap = cli.ArgumentParser(description=__doc__.split("\n")[0])
    budget.add_budget_arguments(ap, batch=16, out=Path(__file__).parent / "results")
    ap.add_argument("--data", type=Path, default=DATA, help="the Tiny Shakespeare input.txt")
    cli.add_debug_argument(ap)
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    data, vocab = load_corpus(args.data)
    train_data, held_out = split_corpus(data)
    args.out.mkdir(parents=True, exist_ok=True)
    results, samples = {}, []
    for kind in args.models.split(","):
        torch.manual_seed(0)
        model = build_model(kind, len(vocab)).to(device)
        log = train(model, train_data, budget_s=args.budget_s, batch=args.batch)
        bpc = bits_per_char(model, held_out)
        x, s_per_ex = sample_seconds(model)
        results[kind] = {
            "held_out_bpc": bpc,
            "params": sum(p.numel() for p in model.parameters()),
            "flops_per_example": flops_per_example(model, held_out[:SEQ_LEN][None]),
            "train_s_per_step": log["s_per_step"],
            "train_steps": log["steps"],
            "train_seconds": log["seconds"],
            "sample_s_per_example": s_per_ex,
            "batch": args.batch,
            "device": budget.device_description(device, args.threads),
        }
        (args.out / "results.json").write_text(json.dumps(results, indent=2))
        samples += [f"=== {kind} sample {i} ===\n{t}\n" for i, t in enumerate(decode_text(x, vocab))]
        print(kind, json.dumps(results[kind]), flush=True)
    (args.out / "results.json").write_text(json.dumps(results, indent=2))
    (args.out / "samples.txt").write_text("\n".join(samples))
    print("| model | held-out bits/char (exact) | params | GFLOPs / example (log_prob) | "
          f"train s / step (batch {args.batch}) | steps | sample s / example |")
    print("|---|---|---|---|---|---|---|")
    for kind, r in results.items():
        print(f"| {kind} | {r['held_out_bpc']:.3f} | {r['params'] / 1e6:.2f}M | "
              f"{r['flops_per_example'] / 1e9:.3f} | {r['train_s_per_step']:.3f} | "
              f"{r['train_steps']} | {r['sample_s_per_example']:.2f} |")


if __name__ == "__main__":
    cli.run(main)
