"""Class-conditional waveform fractal vs a flat AR model on the Free Spoken Digit Dataset.

Shape letters: N clips, L = 4096 samples per clip (0.512 s at 8 kHz), V = 256 mu-law values.

Data: every 8 kHz 16-bit recording is converted to floats in [-1, 1), then **centre-cropped or
zero-padded (equally on both sides) to a fixed length of 4,096 samples**, then 8-bit mu-law
encoded (mu = 255, V = 256; digital silence is value 128). Test split: ``index`` 0-4 (300
clips); training: the other 2,700. The condition is the spoken digit (10 classes).

The fractal: ``SequenceChunks(4096, 256)`` -> ``SequenceChunks(256, 16)`` ->
``SequenceChunks(16, 1)`` (three AR levels) -> a discretised mixture of 10 logistics over the
256 mu-law values (:class:`fractalkit.leaves.DiscretizedLogisticLeaf`, the plug-in leaf). The
flat baseline: one AR level over all 4,096 samples with the same leaf. Both are exact AR
models: bits per sample are exact (over the 4,096 samples, padding included).

Usage (from the repository root)::

    python examples/audio/train.py --budget-s 240 --out examples/audio/results

writes ``results.json``, ``samples/*.wav``, ``samples.png`` and prints a Markdown table.
"""

from __future__ import annotations

import io
import json
import math
import wave
from pathlib import Path

import numpy as np
import torch
from torch.utils.flop_counter import FlopCounterMode

from fractalkit import ARLevelConfig, Fractal, SequenceChunks, cli
from fractalkit.leaves import DiscretizedLogisticLeafConfig
from fractalkit.training import budget

DATA = Path(__file__).resolve().parents[2].parent / "shared" / "data" / "fsdd-8k" / "recordings.parquet"
RATE = 8000
LENGTH = 4096
MU = 255


def mu_law_encode(audio: np.ndarray) -> np.ndarray:
    """Floats in ``[-1, 1]`` to 8-bit mu-law values (int64 in ``[0, 256)``; 0.0 maps to 128)."""
    y = np.sign(audio) * np.log1p(MU * np.abs(audio)) / np.log1p(MU)
    return np.clip(np.floor((y + 1) / 2 * MU + 0.5), 0, MU).astype(np.int64)


def mu_law_decode(values: np.ndarray) -> np.ndarray:
    """8-bit mu-law values back to floats in ``[-1, 1]`` (the inverse of the companding)."""
    y = 2 * np.asarray(values, dtype=np.float64) / MU - 1
    return np.sign(y) * ((1 + MU) ** np.abs(y) - 1) / MU


def fix_length(audio: np.ndarray, length: int = LENGTH) -> np.ndarray:
    """Centre-crop a longer clip, or zero-pad a shorter one equally on both sides, to ``length``."""
    n = audio.shape[0]
    if n >= length:
        start = (n - length) // 2
        return audio[start : start + length]
    left = (length - n) // 2
    return np.pad(audio, (left, length - n - left))


def read_wav(data: bytes) -> np.ndarray:
    """16-bit mono WAV bytes to float64 samples in ``[-1, 1)`` (standard library ``wave``)."""
    with wave.open(io.BytesIO(data)) as w:
        if w.getsampwidth() != 2 or w.getnchannels() != 1:
            raise ValueError(f"read_wav: expected 16-bit mono, got {w.getparams()}")
        frames = w.readframes(w.getnframes())
    return np.frombuffer(frames, dtype="<i2").astype(np.float64) / 32768.0


def load_clips(path: Path = DATA, *, limit: int | None = None, length: int = LENGTH):
    """All clips as mu-law tensors with their digits, split by ``index`` (0-4: test).

    Args:
        path: the ``recordings.parquet`` file.
        limit: read only the first ``limit`` rows (for quick tests).
        length: L.

    Returns:
        ``(train_x, train_y, test_x, test_y)``: int64 ``[N, L]`` mu-law clips, int64 ``[N]``
        digits.

    Raises:
        FileNotFoundError: if ``path`` does not exist.
    """
    import pyarrow.parquet as pq

    if not Path(path).exists():
        raise FileNotFoundError(path)
    table = pq.read_table(path, columns=["audio_wav", "digit", "index"])
    if limit is not None:
        table = table.slice(0, limit)
    wavs = table.column("audio_wav").to_pylist()
    x = torch.from_numpy(np.stack([mu_law_encode(fix_length(read_wav(b), length)) for b in wavs]))
    y = torch.tensor(table.column("digit").to_pylist(), dtype=torch.int64)
    test = torch.tensor(table.column("index").to_pylist()) < 5
    return x[~test], y[~test], x[test], y[test]


def build_model(kind: str, *, length: int = LENGTH, small: bool = False) -> Fractal:
    """The fractal (``"fractal"``) or the flat baseline (``"flat"``), conditional on 10 digits.

    Args:
        kind: ``"fractal"`` (levels 16 x 256 -> 16 x 16 -> 16 x 1) or ``"flat"``.
        length: L; must be a multiple of 256 for the fractal.
        small: tiny widths for tests.

    Raises:
        ValueError: for an unknown ``kind``.
    """
    leaf = DiscretizedLogisticLeafConfig(num_values=256, num_components=10)

    def level(width: int, depth: int, heads: int) -> ARLevelConfig:
        if small:
            return ARLevelConfig(width=16, depth=1, heads=2)
        return ARLevelConfig(width=width, depth=depth, heads=heads)

    if kind == "fractal":
        levels = [
            (SequenceChunks(length, 256), level(128, 2, 4)),
            (SequenceChunks(256, 16), level(96, 2, 4)),
            (SequenceChunks(16, 1), level(64, 1, 4)),
        ]
    elif kind == "flat":
        levels = [(SequenceChunks(length, 1), level(96, 4, 4))]
    else:
        raise ValueError(f"build_model: kind must be 'fractal' or 'flat', got {kind!r}")
    return Fractal(levels, leaf=leaf, num_classes=10, label_drop=0.1)


def train(model: Fractal, x: torch.Tensor, y: torch.Tensor, *, budget_s: float, batch: int = 8,
          lr: float = 1e-3, max_steps: int | None = None, seed: int = 0) -> dict[str, float]:
    """AdamW for ``budget_s`` seconds of wall-clock (or ``max_steps``): 20 warm-up steps, then a
    cosine in elapsed time / budget (:func:`fractalkit.training.train_for_budget`); batches of
    ``(clips, digits)`` drawn uniformly from the clips.

    Returns:
        ``{"steps", "seconds", "s_per_step", "last_loss_bps"}``.
    """

    def next_batch(g: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
        idx = torch.randint(0, x.shape[0], (batch,), generator=g)
        return x[idx], y[idx]

    log = budget.train_for_budget(model, next_batch, budget_s=budget_s, lr=lr, max_steps=max_steps,
                                  generator=torch.Generator().manual_seed(seed))
    log["last_loss_bps"] = log.pop("last_loss_nats") / math.log(2)
    return log


@torch.no_grad()
def bits_per_sample(model: Fractal, x: torch.Tensor, y: torch.Tensor, *, batch: int = 16) -> float:
    """Exact class-conditional bits per sample over the clips (all L samples of each)."""
    model.eval()
    device = next(model.parameters()).device
    total = 0.0
    for i in range(0, x.shape[0], batch):
        lp = model.log_prob(x[i : i + batch].to(device), y[i : i + batch].to(device))
        assert lp.kind == "exact"
        total += float(lp.value.sum())
    return -total / (x.numel() * math.log(2))


def flops_per_example(model: Fractal, x: torch.Tensor, y: torch.Tensor) -> int:
    """FLOPs of one teacher-forced ``log_prob`` on one clip (FlopCounterMode; autograd on,
    because its module tracker fails under ``torch.no_grad``)."""
    model.eval()
    counter = FlopCounterMode(display=False)
    device = next(model.parameters()).device
    with counter:
        model.log_prob(x[:1].to(device), y[:1].to(device))
    return int(counter.get_total_flops())


@torch.no_grad()
def sample_clips(model: Fractal, digits: torch.Tensor, *, seed: int = 0) -> tuple[torch.Tensor, float]:
    """``(mu-law clips [N, L], seconds per clip)``: one clip per digit, KV cache, no guidance."""
    model.eval()
    device = next(model.parameters()).device
    with budget.Stopwatch(device) as clock:
        x = model.sample(y=digits.to(device), generator=torch.Generator().manual_seed(seed))
    return x.cpu(), clock.seconds / digits.numel()


def write_wav(path: Path, values: np.ndarray) -> None:
    """Write mu-law values as a 16-bit 8 kHz mono WAV file."""
    pcm = np.clip(np.round(mu_law_decode(values) * 32767), -32768, 32767).astype("<i2")
    with wave.open(str(path), "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(RATE)
        w.writeframes(pcm.tobytes())


def plot(path: Path, clips: dict[str, np.ndarray], digits: list[int]) -> None:
    """Waveforms and spectrograms, one column per clip, one pair of rows per source."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = list(clips)
    cols = len(digits)
    fig, axes = plt.subplots(2 * len(names), cols, figsize=(2.2 * cols, 2.6 * len(names)), squeeze=False)
    for r, name in enumerate(names):
        for c in range(cols):
            audio = mu_law_decode(clips[name][c])
            axes[2 * r, c].plot(np.arange(audio.size) / RATE, audio, lw=0.4)
            axes[2 * r, c].set_ylim(-1, 1)
            axes[2 * r, c].set_title(f"{name}: digit {digits[c]}", fontsize=7)
            with np.errstate(divide="ignore"):  # zero padding: log10 of zero power is -inf
                nfft = max(min(256, audio.size // 4), 16)  # 32 ms windows; shorter for short clips
                axes[2 * r + 1, c].specgram(audio, NFFT=nfft, Fs=RATE, noverlap=nfft * 3 // 4)
            for ax in (axes[2 * r, c], axes[2 * r + 1, c]):
                ax.tick_params(labelsize=5)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def main(argv: list[str] | None = None) -> None:
    """Train both models for the same wall-clock budget; write the table, WAVs and a PNG."""
    ap = cli.ArgumentParser(description=__doc__.split("\n")[0])
    budget.add_budget_arguments(ap, batch=8, out=Path(__file__).parent / "results")
    ap.add_argument("--data", type=Path, default=DATA, help="the FSDD recordings.parquet")
    cli.add_debug_argument(ap)
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    train_x, train_y, test_x, test_y = load_clips(args.data)
    (args.out / "samples").mkdir(parents=True, exist_ok=True)
    digits = torch.arange(10)
    results, clips = {}, {"data (test)": np.stack([test_x[test_y == d][0].numpy() for d in range(10)])}
    for kind in args.models.split(","):
        torch.manual_seed(0)
        model = build_model(kind).to(device)
        log = train(model, train_x, train_y, budget_s=args.budget_s, batch=args.batch)
        bps = bits_per_sample(model, test_x, test_y)
        x, s_per_clip = sample_clips(model, digits)
        clips[kind] = x.numpy()
        for d in range(10):
            write_wav(args.out / "samples" / f"{kind}_digit{d}.wav", clips[kind][d])
        results[kind] = {
            "test_bits_per_sample": bps,
            "params": sum(p.numel() for p in model.parameters()),
            "flops_per_example": flops_per_example(model, test_x, test_y),
            "train_s_per_step": log["s_per_step"],
            "train_steps": log["steps"],
            "train_seconds": log["seconds"],
            "sample_s_per_example": s_per_clip,
            "batch": args.batch,
            "device": budget.device_description(device, args.threads),
        }
        (args.out / "results.json").write_text(json.dumps(results, indent=2))
        print(kind, json.dumps(results[kind]), flush=True)
    plot(args.out / "samples.png", clips, digits.tolist())
    (args.out / "results.json").write_text(json.dumps(results, indent=2))
    print(f"| model | test bits/sample (exact) | params | GFLOPs / clip (log_prob) | "
          f"train s / step (batch {args.batch}) | steps | sample s / clip |")
    print("|---|---|---|---|---|---|---|")
    for kind, r in results.items():
        print(f"| {kind} | {r['test_bits_per_sample']:.3f} | {r['params'] / 1e6:.2f}M | "
              f"{r['flops_per_example'] / 1e9:.3f} | {r['train_s_per_step']:.3f} | "
              f"{r['train_steps']} | {r['sample_s_per_example']:.2f} |")


if __name__ == "__main__":
    cli.run(main)
