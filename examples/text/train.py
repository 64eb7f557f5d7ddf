"""Character-level fractal vs a flat AR transformer of matched parameters and a Kneser-Ney
n-gram on Tiny Shakespeare, trained for equal CPU time (or wall-clock on a GPU).

Shape letters: N sequences, L = 256 characters per sequence, c = 16 characters per chunk,
V = 65 distinct characters.

The fractal: ``SequenceChunks(256, 16)`` (an AR level over 16 chunks) -> ``SequenceChunks(16, 1)``
(an AR level over a chunk's 16 characters) -> a categorical leaf over V characters. The flat
baseline: one AR level over all 256 characters with the same leaf. Both embed characters with a
table (one-hot), both are exact autoregressive models, so their bits per character are exact.

The held-out set is the last 10% of the text, cut into non-overlapping 256-character windows;
each window is scored from its own start (no context from before it).

The n-gram baseline (:mod:`fractalkit.baselines.ngram`, interpolated Kneser-Ney) chooses its
order on a validation split (the last 10% of the training part), is refit on the whole training
part, and is scored on the same held-out windows, each from its start.

Usage (from the repository root)::

    PYTHONPATH=. python examples/text/train.py --cpu-budgets 30,90 --seeds 0,1,2 --width 64

(budgets in CPU seconds of this process, one thread) or, on a GPU,
``--device cuda --budget-s 70 --batch 64`` (wall-clock, one seed, the model sizes of the GPU
table); writes ``results.json``, ``samples.txt`` into ``--out`` (default ``runs/text-results``;
the committed figures: ``--out examples/text/results``) and prints a Markdown table.
"""

from __future__ import annotations

import json
import math
import time
from pathlib import Path

import numpy as np
import torch
from torch.utils.flop_counter import FlopCounterMode

from fractalkit import ARLevelConfig, CategoricalLeafConfig, Fractal, SequenceChunks, cli
from fractalkit.baselines import NGramModel, choose_order
from fractalkit.data import hub_datasets
from fractalkit.training import budget
from fractalkit.validation import read_json_file

#: the default data: Tiny Shakespeare on the Hugging Face Hub (0.7 MB, downloaded once and cached);
#: ``--data`` also takes a local UTF-8 .txt file such as ``../shared/data/tinyshakespeare/input.txt``
DATA = "karpathy/tiny_shakespeare"
SEQ_LEN = 256
CHUNK = 16


def read_text(source: str | Path = DATA) -> str:
    """The whole text of ``source``: a local UTF-8 file, or a Hub dataset name whose ``text``
    rows (every split, in order) are joined.

    Raises:
        FileNotFoundError: a local ``source`` does not exist.
        fractalkit.data.hub_datasets.DatasetUnavailableError: a Hub name that cannot be loaded.
        ValueError: the text is empty or not UTF-8.
    """
    if hub_datasets.is_hub_name(source):
        ds = hub_datasets.load_hub_dataset(str(source), kind="text", split="all")
        if "text" not in ds.column_names:
            raise ValueError(f"--data {source}: no text column (columns: {ds.column_names})")
        text = "".join(ds["text"])
    else:
        try:
            text = Path(source).read_text(encoding="utf-8")
        except UnicodeDecodeError as err:
            raise ValueError(f"--data {source} is not UTF-8 text ({err.reason} at byte {err.start})") from None
    if not text:
        raise ValueError(f"--data {source} holds no text")
    return text


def load_corpus(path: str | Path = DATA) -> tuple[torch.Tensor, str]:
    """The text as character indices and its vocabulary.

    Args:
        path: a UTF-8 text file, or a Hub dataset name with a ``text`` column.

    Returns:
        ``(data, vocab)``: int64 ``[num_chars]`` indices into ``vocab``, and ``vocab`` the sorted
        distinct characters (65 for Tiny Shakespeare).

    Raises:
        FileNotFoundError: if a local ``path`` does not exist.
    """
    text = read_text(path)
    vocab = "".join(sorted(set(text)))
    lookup = {ch: i for i, ch in enumerate(vocab)}
    return torch.tensor([lookup[ch] for ch in text], dtype=torch.int64), vocab


def split_corpus(data: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """``(train, held_out)``: the first 90% and the last 10% of the characters."""
    cut = int(0.9 * data.numel())
    return data[:cut], data[cut:]


def build_model(kind: str, vocab_size: int, *, seq_len: int = SEQ_LEN, chunk: int = CHUNK,
                width: int = 128, depth: int = 4, heads: int = 4, flat_depth: int | None = None) -> Fractal:
    """The fractal (``"fractal"``) or the flat baseline (``"flat"``) over ``seq_len`` characters.

    The fractal splits ``depth`` transformer blocks between its two levels; the flat model has
    ``flat_depth`` blocks (default ``depth``; one more matches the fractal's parameter count
    within a few percent, as the fractal's second level has its own embeddings).

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
        levels = [(SequenceChunks(seq_len, 1), ARLevelConfig(width=width, depth=flat_depth or depth, heads=heads,
                                                             embed="table"))]
    else:
        raise ValueError(f"build_model: kind must be 'fractal' or 'flat', got {kind!r}")
    return Fractal(levels, leaf=leaf, num_classes=0)


def random_windows(data: torch.Tensor, n: int, seq_len: int, generator: torch.Generator) -> torch.Tensor:
    """int64 ``[n, seq_len]`` windows of ``data`` at uniformly random offsets."""
    starts = torch.randint(0, data.numel() - seq_len + 1, (n,), generator=generator)
    return torch.stack([data[s : s + seq_len] for s in starts.tolist()])


def train(model: Fractal, data: torch.Tensor, *, budget_s: float, batch: int = 16,
          lr: float = 1e-3, max_steps: int | None = None, seed: int = 0,
          clock=time.perf_counter) -> dict[str, float]:
    """Train with AdamW for ``budget_s`` seconds of ``clock`` (wall-clock by default;
    ``time.process_time`` for CPU time) or ``max_steps`` on random windows of ``data``
    (:func:`fractalkit.training.train_for_budget`: 20 warm-up steps, then a cosine in elapsed
    time / budget).

    Returns:
        ``{"steps", "seconds", "s_per_step", "last_loss_bpc"}``.
    """
    seq_len = model.event_shape[0]
    log = budget.train_for_budget(model, lambda g: random_windows(data, batch, seq_len, g),
                                  budget_s=budget_s, lr=lr, max_steps=max_steps,
                                  generator=torch.Generator().manual_seed(seed), clock=clock)
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


def windows(data: torch.Tensor, seq_len: int = SEQ_LEN) -> list[np.ndarray]:
    """The non-overlapping ``seq_len`` windows of ``data`` that the models score, as numpy rows."""
    return list(data[: data.numel() // seq_len * seq_len].view(-1, seq_len).numpy())


def ngram_baseline(train_data: torch.Tensor, held_out: torch.Tensor, vocab_size: int,
                   orders=(1, 2, 3, 4, 5, 6, 7, 8)) -> dict[str, object]:
    """Kneser-Ney n-grams: the order chosen on the last 10% of ``train_data`` (fit on the rest),
    refit on all of it, scored on the held-out windows and on the held-out text as one stream."""
    inner, valid = split_corpus(train_data)
    order, scores = choose_order(inner.numpy(), valid.numpy(), vocab_size, orders)
    model = NGramModel(order, vocab_size).fit(train_data.numpy())
    return {"order": order, "validation_bpc": scores, "held_out_windows_bpc": model.bits(windows(held_out)),
            "held_out_stream_bpc": model.bits(held_out.numpy())}


def main(argv: list[str] | None = None) -> None:
    """Train both models for each budget and seed, fit the n-gram, and write the table."""
    ap = cli.ArgumentParser(description=__doc__.split("\n")[0])
    # runs write under the ignored runs/; the committed figures pass --out examples/text/results
    budget.add_budget_arguments(ap, batch=16, out=Path("runs/text-results"))
    ap.add_argument("--data", default=DATA, help="a UTF-8 .txt file or a Hugging Face Hub dataset with a "
                    f"text column (default {DATA}, downloaded once and cached)")
    ap.add_argument("--cpu-budgets", type=cli.positive_float_list, default=None, help="CPU-second budgets (comma-separated); "
                    "overrides --budget-s and uses one thread")
    ap.add_argument("--seeds", type=cli.int_list, default=(0,), help="comma-separated seeds")
    ap.add_argument("--width", type=cli.positive_int, default=128)
    ap.add_argument("--flat-depth", type=cli.positive_int, default=5, help="blocks of the flat model (5: matched params)")
    cli.add_debug_argument(ap)
    args = ap.parse_args(argv)
    cpu = bool(args.cpu_budgets)
    torch.set_num_threads(1 if cpu else args.threads)
    device = cli.check_device(ap, args.device)
    args.data = cli.check_data(ap, "--data", args.data, expect="file", text=True,
                               what="a UTF-8 .txt file or a Hub dataset name such as karpathy/tiny_shakespeare")
    data, vocab = load_corpus(args.data)
    train_data, held_out = split_corpus(data)
    args.out.mkdir(parents=True, exist_ok=True)
    path = args.out / "results.json"
    results = read_json_file(path, owner="text", fix="delete it (or pass another --out) and run again", error=SystemExit) if path.exists() else {}
    results.setdefault("runs", [])
    if "ngram" not in results:
        t = time.process_time()
        results["ngram"] = ngram_baseline(train_data, held_out, len(vocab))
        results["ngram"]["cpu_s"] = time.process_time() - t
        print("ngram", results["ngram"], flush=True)
    budgets = list(args.cpu_budgets or (args.budget_s,))
    done = {(r["model"], r["budget_s"], r["seed"]) for r in results["runs"]}
    samples = []
    for budget_s in budgets:
        for seed in args.seeds:
            for kind in args.models.split(","):
                if (kind, budget_s, seed) in done:
                    continue
                torch.manual_seed(seed)
                model = build_model(kind, len(vocab), width=args.width, flat_depth=args.flat_depth).to(device)
                log = train(model, train_data, budget_s=budget_s, batch=args.batch, seed=seed,
                            clock=time.process_time if cpu else time.perf_counter)
                bpc = bits_per_char(model, held_out)
                run = {"model": kind, "budget_s": budget_s, "clock": "cpu" if cpu else "wall", "seed": seed,
                       "held_out_bpc": bpc, "params": sum(p.numel() for p in model.parameters()),
                       "train_steps": log["steps"], "s_per_step": log["s_per_step"], "batch": args.batch,
                       "width": args.width, "device": budget.device_description(device, 1 if cpu else args.threads)}
                results["runs"].append(run)
                path.write_text(json.dumps(results, indent=2))
                print(json.dumps(run), flush=True)
                if seed == args.seeds[0] and budget_s == budgets[-1]:
                    x, _ = sample_seconds(model)
                    samples += [f"=== {kind} sample {i} ===\n{t}\n" for i, t in enumerate(decode_text(x, vocab))]
    if samples:
        (args.out / "samples.txt").write_text("\n".join(samples))
    print(f"| model | budget (s, {'CPU' if cpu else 'wall'}) | held-out bits/char (mean ± std, seeds) | params | steps |")
    print("|---|---|---|---|---|")
    groups: dict[tuple[str, float], list[dict]] = {}
    for r in results["runs"]:
        groups.setdefault((r["model"], r["budget_s"]), []).append(r)
    for (kind, budget_s), runs in sorted(groups.items(), key=lambda kv: (kv[0][1], kv[0][0])):
        print(f"| {kind} | {budget_s:.0f} | {budget.summarise_runs([r['held_out_bpc'] for r in runs])} | "
              f"{runs[0]['params'] / 1e6:.2f}M | {np.mean([r['train_steps'] for r in runs]):.0f} |")
    ng = results["ngram"]
    print(f"| {ng['order']}-gram (Kneser-Ney) | counts | {ng['held_out_windows_bpc']:.3f} | | |")


if __name__ == "__main__":
    cli.run(main)
