"""Variable-length spoken digits: a waveform fractal, a WaveNet, a flat transformer and count
n-grams, scored in bits per *real* sample on the Free Spoken Digit Dataset.

Shape letters: N clips, L = 4096 samples per padded clip (0.512 s at 8 kHz), V values (256
mu-law values for 8-bit, 65,536 PCM values for 16-bit).

Data: every 8 kHz 16-bit recording is converted to floats in [-1, 1); a clip longer than L is
**centre-cropped** to L (24.5% of the clips); a shorter one keeps its length n and is padded
*after its end* to L (the padding is never scored). Values: 8-bit mu-law (mu = 255) or the raw
16-bit PCM shifted to ``[0, 65536)``. Test split: ``index`` 0-4 (300 clips; the tables use
``index`` 0, 60 clips, one per digit and speaker, to keep CPU evaluation short); training: the
other 2,700 (``index`` 5-9 is the n-gram's validation split for choosing its order).

Likelihood of a clip: every model here is causal in time, so the sum of its first n
conditionals is exactly log p(x_1..x_n), the probability of the real samples whatever would
follow. Bits per real sample = -sum over clips of log2 p(real samples) / (number of real
samples). The length is not modelled: coding it with a uniform code over 1..L adds 12 bits
per clip (about 0.004 bits per sample) to every model alike. Training uses the same masked
objective (padding contributes no gradient).

Models (all with the discretised-logistic leaf, 10 components, except the n-grams):

- ``fractal``: ``SequenceChunks(L, 256)`` -> ``SequenceChunks(256, 16)`` -> ``SequenceChunks(16, 1)``,
  three AR levels;
- ``wavenet``: one :class:`wavenet.WaveNetLevel` (gated dilated causal convolutions, the field's
  flat raw-audio model) over all L samples, a plug-in level;
- ``flat``: one AR transformer level over all L samples;
- n-grams: interpolated Kneser-Ney (:mod:`fractalkit.baselines.ngram`), order chosen on the
  validation split.

Conditions (a model spec's suffix): the spoken digit (default; 10 classes), ``-speaker`` (6),
``-digit+speaker`` (one combined class label per pair, 60) or ``-uncond``; a ``ClassLabel``
conditioner each, label dropout 0.1.

Budgets are CPU time of the training process (``time.process_time``), one thread, not
wall-clock: the development machine is shared; or a step count (``--max-steps``).

Sampling: ``--leaf-sampling direct`` draws each value from the logistic mixture directly
(component, inverse CDF, bin: O(K) per value), which makes 16-bit samples as cheap as 8-bit
ones; ``bins`` evaluates all V bins per value.

Usage (from the repository root)::

    PYTHONPATH=. python examples/audio/train.py --budgets 60,180 --seeds 0,1,2

writes ``results.json``, ``samples/*.wav``, ``samples_<bits>bit.png`` into ``--out`` (default
``runs/audio-results``; the committed figures: ``--out examples/audio/results``) and prints Markdown
tables (and, for conditional models with an unconditional one at the same budget, Welch's
t-test of the difference over seeds).
"""

from __future__ import annotations

import io
import json
import math
import sys
import time
import wave
from pathlib import Path

import numpy as np
import torch

from fractalkit import ARLevelConfig, Fractal, SequenceChunks, cli
from fractalkit.baselines import NGramModel, choose_order
from fractalkit.data import hub_datasets
from fractalkit.leaves import DiscretizedLogisticLeafConfig
from fractalkit.protocol import ScoreContext
from fractalkit.training import budget
from fractalkit.validation import read_json_file

sys.path.insert(0, str(Path(__file__).resolve().parent))
from wavenet import WaveNetLevelConfig

#: the default data: the Free Spoken Digit Dataset on the Hugging Face Hub (downloaded once and
#: cached); ``--data`` also takes a local parquet file with columns audio_wav (WAV bytes), digit,
#: speaker, index, such as ``../shared/data/fsdd-8k/recordings.parquet``
DATA = "silky1708/Free-Spoken-Digit-Dataset"
RATE = 8000
#: recordings with ``index`` below this are the test split (FSDD's usual split: 0-4)
TEST_INDICES = 5
LENGTH = 4096
MU = 255
#: what a model can be conditioned on, and its number of classes (``digit+speaker``: one
#: combined label ``speaker * 10 + digit``; speakers numbered in sorted name order)
CONDITIONS = {"digit": 10, "speaker": 6, "digit+speaker": 60}


def mu_law_encode(audio: np.ndarray) -> np.ndarray:
    """Floats in ``[-1, 1]`` to 8-bit mu-law values (int64 in ``[0, 256)``; 0.0 maps to 128)."""
    y = np.sign(audio) * np.log1p(MU * np.abs(audio)) / np.log1p(MU)
    return np.clip(np.floor((y + 1) / 2 * MU + 0.5), 0, MU).astype(np.int64)


def mu_law_decode(values: np.ndarray) -> np.ndarray:
    """8-bit mu-law values back to floats in ``[-1, 1]`` (the inverse of the companding)."""
    y = 2 * np.asarray(values, dtype=np.float64) / MU - 1
    return np.sign(y) * ((1 + MU) ** np.abs(y) - 1) / MU


def crop(audio: np.ndarray, length: int = LENGTH) -> np.ndarray:
    """Centre-crop a clip longer than ``length``; a shorter one is returned unchanged."""
    n = audio.shape[0]
    if n <= length:
        return audio
    start = (n - length) // 2
    return audio[start : start + length]


def quantise(audio: np.ndarray, bits: int) -> np.ndarray:
    """Floats in ``[-1, 1)`` to int64 values: 8-bit mu-law, or 16-bit PCM + 32768."""
    if bits == 8:
        return mu_law_encode(audio)
    if bits == 16:
        return np.clip(np.round(audio * 32768), -32768, 32767).astype(np.int64) + 32768
    raise ValueError(f"quantise: bits must be 8 or 16, got {bits}")


def dequantise(values: np.ndarray, bits: int) -> np.ndarray:
    """The inverse of :func:`quantise`: int values to floats in ``[-1, 1]``."""
    if bits == 8:
        return mu_law_decode(values)
    return (np.asarray(values, dtype=np.float64) - 32768) / 32768


def silence(bits: int) -> int:
    """The value of digital silence (the padding value): 128 (mu-law) or 32768 (PCM)."""
    return 128 if bits == 8 else 32768


def read_wav(data: bytes) -> np.ndarray:
    """16-bit mono WAV bytes to float64 samples in ``[-1, 1)`` (standard library ``wave``)."""
    with wave.open(io.BytesIO(data)) as w:
        if w.getsampwidth() != 2 or w.getnchannels() != 1 or w.getframerate() != RATE:
            raise ValueError(f"read_wav: expected 16-bit mono at {RATE} Hz, got {w.getparams()}")
        frames = w.readframes(w.getnframes())
    return np.frombuffer(frames, dtype="<i2").astype(np.float64) / 32768.0


COLUMNS = ("audio_wav", "digit", "speaker", "index")


def read_recordings(source: str | Path = DATA, limit: int | None = None) -> dict[str, list]:
    """The recordings' columns: ``{"audio_wav": WAV bytes, "digit", "speaker", "index"}`` lists.

    Args:
        source: a local parquet file with those columns, or a Hub dataset name (its audio, digit
            and speaker columns are mapped by :mod:`fractalkit.data.hub_datasets`; speaker and
            index missing there are read from FSDD file names ``{digit}_{speaker}_{index}.wav``).
        limit: only the first ``limit`` rows.

    Raises:
        FileNotFoundError: a local ``source`` does not exist.
        ValueError: a column is missing or the file is not parquet.
    """
    if hub_datasets.is_hub_name(source):
        ds = hub_datasets.load_hub_dataset(str(source), kind="audio")
        if limit is not None:
            ds = ds.select(range(min(limit, len(ds))))
        audio = ds["audio_wav"] if "audio_wav" in ds.column_names else None
        if audio is None or "digit" not in ds.column_names:
            raise ValueError(f"--data {source}: expected audio and digit columns, got {ds.column_names}")
        table = {"audio_wav": [a["bytes"] if isinstance(a, dict) else a for a in audio],
                 "digit": [int(d) for d in ds["digit"]]}
        names = [a.get("path") if isinstance(a, dict) else None for a in audio]
        parsed = [hub_datasets.speaker_and_index(n) for n in names]
        for column, part in (("speaker", 0), ("index", 1)):
            if column in ds.column_names:
                table[column] = list(ds[column])
            elif all(p is not None for p in parsed):
                table[column] = [p[part] for p in parsed]
            else:
                raise ValueError(f"--data {source}: no {column} column and no FSDD file names to read it from")
        return table
    import pyarrow as pa
    import pyarrow.parquet as pq

    if not Path(source).exists():
        raise FileNotFoundError(f"{source}: no such file (the FSDD recordings.parquet, or a Hub dataset name)")
    try:
        table = pq.read_table(source, columns=list(COLUMNS))
    except (pa.ArrowInvalid, KeyError) as err:
        raise ValueError(f"--data {source}: not a parquet file with columns {', '.join(COLUMNS)} ({err})") from None
    if limit is not None:
        table = table.slice(0, limit)
    return {c: table.column(c).to_pylist() for c in COLUMNS}


def load_clips(path: str | Path = DATA, *, limit: int | None = None, length: int = LENGTH,
               bits: int = 8) -> dict[str, torch.Tensor]:
    """Every clip, cropped to at most ``length`` samples, padded after its end, with its metadata.

    Args:
        path: the ``recordings.parquet`` file, or a Hub dataset name (see :func:`read_recordings`).
        limit: read only the first ``limit`` rows (for quick tests).
        length: L.
        bits: 8 (mu-law) or 16 (PCM).

    Returns:
        ``{"x": int64 [N, L] values (padding: silence), "lengths": int64 [N] real samples,
        "digit", "speaker", "index": int64 [N]}`` (speakers numbered in sorted name order).

    Raises:
        FileNotFoundError: if ``path`` does not exist.
    """
    table = read_recordings(path, limit)
    if not table["audio_wav"]:
        raise ValueError(f"--data {path} holds no recordings")
    clips = [quantise(crop(read_wav(b), length), bits) for b in table["audio_wav"]]
    x = torch.full((len(clips), length), silence(bits), dtype=torch.int64)
    for i, c in enumerate(clips):
        x[i, : c.size] = torch.from_numpy(c)
    speakers = table["speaker"]
    names = sorted(set(speakers))
    return {
        "x": x,
        "lengths": torch.tensor([c.size for c in clips], dtype=torch.int64),
        "digit": torch.tensor(table["digit"], dtype=torch.int64),
        "speaker": torch.tensor([names.index(s) for s in speakers], dtype=torch.int64),
        "index": torch.tensor(table["index"], dtype=torch.int64),
    }


def subset(clips: dict[str, torch.Tensor], keep: torch.Tensor) -> dict[str, torch.Tensor]:
    """The clips where the bool ``[N]`` ``keep`` is True."""
    return {k: v[keep] for k, v in clips.items()}


def real_samples(clips: dict[str, torch.Tensor]) -> list[np.ndarray]:
    """Each clip's real samples (its first ``lengths[i]`` values), as numpy arrays."""
    return [x[:n].numpy() for x, n in zip(clips["x"], clips["lengths"].tolist(), strict=True)]


def parse_spec(spec: str) -> tuple[str, str | None]:
    """A model spec -> ``(kind, condition)``: ``"fractal"`` is digit-conditional,
    ``"fractal-uncond"`` unconditional, ``"fractal-speaker"`` and ``"fractal-digit+speaker"``
    conditioned on the speaker or on both (see :data:`CONDITIONS`).

    Raises:
        ValueError: for an unknown condition suffix.
    """
    kind, _, suffix = spec.partition("-")
    if not suffix:
        return kind, "digit"
    if suffix == "uncond":
        return kind, None
    if suffix not in CONDITIONS:
        raise ValueError(f"model spec {spec!r}: the suffix must be 'uncond' or one of {sorted(CONDITIONS)}")
    return kind, suffix


def condition_labels(clips: dict[str, torch.Tensor], condition: str | None) -> torch.Tensor | None:
    """The int64 ``[N]`` class labels of ``condition`` (None: no condition) for the clips."""
    if condition is None:
        return None
    if condition == "digit+speaker":
        return clips["speaker"] * 10 + clips["digit"]
    return clips[condition]


def build_model(kind: str, *, bits: int = 8, conditional: bool = True, length: int = LENGTH,
                small: bool = False, condition: str = "digit") -> Fractal:
    """One of the compared models over ``length`` samples, with the logistic-mixture leaf.

    Args:
        kind: ``"fractal"`` (levels 16 x 256 -> 16 x 16 -> 16 x 1), ``"wavenet"`` (a
            :class:`wavenet.WaveNetLevel`, receptive field 1,024 samples) or ``"flat"`` (one AR
            transformer level over all samples).
        bits: 8 (V = 256) or 16 (V = 65,536).
        conditional: condition on ``condition`` (label dropout 0.1); False: unconditional.
        length: L; a multiple of 256 for the fractal.
        small: tiny widths for tests.
        condition: a key of :data:`CONDITIONS` (a class label each; ``"digit+speaker"`` is one
            label per pair).

    Raises:
        ValueError: for an unknown ``kind``.
    """
    leaf = DiscretizedLogisticLeafConfig(num_values=2**bits, num_components=10)

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
    elif kind == "wavenet":
        cfg = WaveNetLevelConfig(width=16, layers=3, cycle=3) if small else WaveNetLevelConfig(
            width=48, layers=10, cycle=10)
        levels = [(SequenceChunks(length, 1), cfg)]
    elif kind == "flat":
        levels = [(SequenceChunks(length, 1), level(96, 4, 4))]
    else:
        raise ValueError(f"build_model: kind must be 'fractal', 'wavenet' or 'flat', got {kind!r}")
    return Fractal(levels, leaf=leaf, num_classes=CONDITIONS[condition] if conditional else 0,
                   label_drop=0.1 if conditional else 0.0)


def sample_log_probs(model: Fractal, x: torch.Tensor, y: torch.Tensor | None, *,
                     generator: torch.Generator | None = None, train: bool = False) -> torch.Tensor:
    """Every sample's log-probability (nats) given the samples before it: ``[N, L]``.

    The leaf records its per-element scores (:meth:`fractalkit.Leaf.recording`); with nested
    ``SequenceChunks`` AR levels (or one flat level) its rows are the samples in time order.
    With ``train`` the scores keep their graph and the labels are dropped with ``label_drop``.
    """
    model.root.check_x(x)
    cond = model.top_condition(y, x.shape[0], drop=train and model.training, generator=generator)
    ctx = ScoreContext("train" if train else "exact", generator=generator)
    with model.leaf.recording(keep_graph=train) as records:
        score = model.root.score(x.long(), cond, ctx)
    per_sample = torch.cat(records).reshape(x.shape)  # [N, L]
    if not train:  # the records must be the whole likelihood, in order
        assert torch.allclose(per_sample.sum(1), score.logp.to(per_sample.dtype), rtol=1e-4, atol=1e-2)
    return per_sample


def real_mask(lengths: torch.Tensor, length: int) -> torch.Tensor:
    """bool ``[N, L]``: True on each clip's real samples."""
    return torch.arange(length, device=lengths.device) < lengths[:, None]


class RealSampleLoss(torch.nn.Module):
    """Wraps a model so that ``loss(x, lengths, y)`` is the mean nats per *real* sample (the
    objective :func:`fractalkit.training.train_for_budget` minimises)."""

    def __init__(self, model: Fractal) -> None:
        super().__init__()
        self.model = model

    def loss(self, x: torch.Tensor, lengths: torch.Tensor, y: torch.Tensor | None = None, *,
             generator: torch.Generator | None = None):
        """``[N, L]`` padded clips, ``[N]`` lengths, ``[N]`` labels or None -> ``.total``, ``.nll``."""
        from fractalkit import TrainingLoss

        lp = sample_log_probs(self.model, x, y, generator=generator, train=True)
        nll = -(lp * real_mask(lengths, x.shape[1])).sum() / lengths.sum()
        return TrainingLoss(nll, nll.detach(), {})


def train(model: Fractal, clips: dict[str, torch.Tensor], *, budget_s: float, batch: int = 8,
          lr: float = 1e-3, max_steps: int | None = None, seed: int = 0,
          clock=time.process_time, condition: str = "digit") -> dict[str, float]:
    """AdamW on the masked objective for ``budget_s`` seconds of ``clock`` (default: this
    process's CPU time) or ``max_steps``: 20 warm-up steps, then a cosine in elapsed / budget
    (:func:`fractalkit.training.train_for_budget`; ``budget_s = math.inf``: a constant rate
    after warm-up, for a step count only); clips drawn uniformly, with their ``condition``
    labels when the model is conditional.

    Returns:
        ``{"steps", "seconds", "s_per_step", "last_loss_bps"}``.
    """
    conditional = model.num_classes > 0
    x, lengths = clips["x"], clips["lengths"]
    y = condition_labels(clips, condition if conditional else None)

    def next_batch(g: torch.Generator) -> tuple[torch.Tensor, ...]:
        idx = torch.randint(0, x.shape[0], (batch,), generator=g)
        return x[idx], lengths[idx], (y[idx] if conditional else None)

    log = budget.train_for_budget(RealSampleLoss(model), next_batch, budget_s=budget_s, lr=lr,
                                  max_steps=max_steps, generator=torch.Generator().manual_seed(seed),
                                  clock=clock)
    log["last_loss_bps"] = log.pop("last_loss_nats") / math.log(2)
    return log


@torch.no_grad()
def bits_per_real_sample(model: Fractal, clips: dict[str, torch.Tensor], *, batch: int = 10,
                         condition: str = "digit") -> float:
    """Exact bits per real sample (``condition``-conditional when the model is): padding not scored."""
    model.eval()
    total = 0.0
    labels = condition_labels(clips, condition if model.num_classes > 0 else None)
    for i in range(0, clips["x"].shape[0], batch):
        x, n = clips["x"][i : i + batch], clips["lengths"][i : i + batch]
        y = labels[i : i + batch] if labels is not None else None
        lp = sample_log_probs(model, x, y)
        total += float((lp.double() * real_mask(n, x.shape[1])).sum())
    return -total / (float(clips["lengths"].sum()) * math.log(2))


def ngram_baseline(train_clips: dict[str, torch.Tensor], eval_sets: dict[str, dict[str, torch.Tensor]],
                   *, bits: int = 8, orders=(1, 2, 3, 4, 5, 6)) -> dict[str, object]:
    """Kneser-Ney n-grams on the real samples: the order with the fewest bits on the training
    clips of ``index`` 5-9 (fit on the others), refit on all training clips, then bits per real
    sample on each of ``eval_sets``."""
    v = 2**bits
    valid = (train_clips["index"] >= 5) & (train_clips["index"] < 10)
    order, scores = choose_order(real_samples(subset(train_clips, ~valid)),
                                 real_samples(subset(train_clips, valid)), v, orders)
    model = NGramModel(order, v).fit(real_samples(train_clips))
    return {"order": order, "validation_bits": scores,
            **{name: model.bits(real_samples(c)) for name, c in eval_sets.items()}}


@torch.no_grad()
def sample_clips(model: Fractal, digits: torch.Tensor, *, seed: int = 0) -> tuple[torch.Tensor, float]:
    """``(clips [N, L], seconds per clip)``: one clip per label in ``digits`` (or N unconditional
    ones), temperature 1, no guidance."""
    model.eval()
    g = torch.Generator().manual_seed(seed)
    with budget.Stopwatch("cpu") as clock:
        if model.num_classes > 0:
            x = model.sample(y=digits, generator=g)
        else:
            x = model.sample(num_samples=digits.numel(), generator=g)
    return x.cpu(), clock.seconds / digits.numel()


def write_wav(path: Path, values: np.ndarray, bits: int = 8) -> None:
    """Write quantised values (see :func:`quantise`) as a 16-bit 8 kHz mono WAV file."""
    pcm = np.clip(np.round(dequantise(values, bits) * 32767), -32768, 32767).astype("<i2")
    with wave.open(str(path), "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(RATE)
        w.writeframes(pcm.tobytes())


def plot(path: Path, clips: dict[str, np.ndarray], digits: list[int], bits: int = 8, *,
         titles: list[str] | None = None) -> None:
    """Waveforms and spectrograms, one column per clip, one pair of rows per source (clips:
    ``{source: quantised values [columns, <= L]}``); columns titled ``digit d`` or ``titles``."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = list(clips)
    cols = len(digits)
    fig, axes = plt.subplots(2 * len(names), cols, figsize=(2.2 * cols, 2.6 * len(names)), squeeze=False)
    for r, name in enumerate(names):
        for c in range(cols):
            audio = dequantise(clips[name][c], bits)
            axes[2 * r, c].plot(np.arange(audio.size) / RATE, audio, lw=0.4)
            axes[2 * r, c].set_ylim(-1, 1)
            label = titles[c] if titles else f"digit {digits[c]}"
            axes[2 * r, c].set_title(f"{name}: {label}", fontsize=7)
            with np.errstate(divide="ignore"):  # zero padding: log10 of zero power is -inf
                nfft = max(min(256, audio.size // 4), 16)  # 32 ms windows; shorter for short clips
                axes[2 * r + 1, c].specgram(audio, NFFT=nfft, Fs=RATE, noverlap=nfft * 3 // 4)
            for ax in (axes[2 * r, c], axes[2 * r + 1, c]):
                ax.tick_params(labelsize=5)
    fig.tight_layout()
    fig.savefig(path, dpi=72)
    plt.close(fig)
    shrink_png(path)


def shrink_png(path: Path, colours: int = 64) -> None:
    """Rewrite a PNG with a palette of ``colours`` (noise-like spectrograms otherwise make
    pictures of several hundred KB)."""
    from PIL import Image

    with Image.open(path) as image:
        small = image.convert("RGB").quantize(colours)
    small.save(path, optimize=True)


def speaker_names(path: str | Path = DATA) -> list[str]:
    """The speakers in label order (sorted names, as :func:`load_clips` numbers them)."""
    return sorted(set(read_recordings(path)["speaker"]))


def sample_labels(condition: str | None, names: list[str]) -> tuple[torch.Tensor, list[str]]:
    """The labels to draw one clip each for, and their file-name stems: digits 0-9, speakers
    0-5, speaker s saying digit s for ``digit+speaker``, or 10 unconditional clips."""
    if condition == "digit" or condition is None:
        stem = "digit" if condition else "sample"
        return torch.arange(10), [f"{stem}{d}" for d in range(10)]
    speakers = torch.arange(len(names))
    if condition == "speaker":
        return speakers, [f"speaker{s}_{names[s]}" for s in range(len(names))]
    return speakers * 10 + speakers, [f"speaker{s}_{names[s]}_digit{s}" for s in range(len(names))]


def welch(a: list[float], b: list[float]) -> dict[str, float]:
    """Welch's two-sided t-test of mean(a) = mean(b) over seeds (scipy): difference, t, p."""
    from scipy.stats import ttest_ind

    test = ttest_ind(a, b, equal_var=False)
    return {"difference": float(np.mean(a) - np.mean(b)), "t": float(test.statistic), "p": float(test.pvalue)}


def main(argv: list[str] | None = None) -> None:
    """Train every model for each budget (CPU seconds, or ``--max-steps``) and seed; write the
    tables, WAVs and a PNG."""
    ap = cli.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--data", default=DATA, help="the FSDD recordings: a parquet file or a Hugging Face Hub "
                    f"dataset name (default {DATA}, downloaded once and cached)")
    ap.add_argument("--out", type=Path, default=Path("runs/audio-results"),
                    help="results folder (default runs/audio-results; the committed figures: --out examples/audio/results)")
    ap.add_argument("--results", default="", help="results file name in --out (default: results.json, "
                    "results_16bit.json for --bits 16)")
    ap.add_argument("--bits", type=cli.positive_int, default=8, choices=(8, 16))
    ap.add_argument("--models", default="fractal,wavenet,fractal-uncond",
                    help="comma-separated: fractal, wavenet, flat; suffix '-uncond' (no condition), "
                    "'-speaker' or '-digit+speaker' (default: the digit)")
    ap.add_argument("--budgets", type=cli.positive_float_list, default=(60.0, 180.0), help="CPU seconds of training per run")
    ap.add_argument("--max-steps", type=cli.positive_int, default=None,
                    help="train for this many optimizer steps instead of a CPU budget (constant rate after warm-up)")
    ap.add_argument("--seeds", type=cli.int_list, default=(0, 1, 2), help="comma-separated seeds")
    ap.add_argument("--batch", type=cli.positive_int, default=8)
    ap.add_argument("--eval-index", type=cli.int_list, default=(0,), help="test clips with these `index` values")
    ap.add_argument("--sample", default="", help="models (specs of this run) to draw clips from after the last run")
    ap.add_argument("--leaf-sampling", default="bins", choices=("bins", "direct"),
                    help="how the logistic leaf draws a value: all V bins, or component + inverse CDF")
    ap.add_argument("--picture", default="", help="file name of the samples picture (default samples_<bits>bit.png)")
    cli.add_debug_argument(ap)
    args = ap.parse_args(argv)
    specs = [parse_spec(spec) for spec in args.models.split(",")]  # unknown suffixes fail here
    outside = [i for i in args.eval_index if i >= TEST_INDICES]
    if outside:
        ap.error(f"--eval-index {','.join(map(str, outside))}: the test clips have index 0-{TEST_INDICES - 1}")
    args.data = cli.check_data(ap, "--data", args.data, expect="file", suffixes=(".parquet",),
                               what="a .parquet file or a Hub dataset name such as " + DATA)
    args.out = cli.check_output_folder(ap, "--out", args.out)
    torch.set_num_threads(1)  # the budget is CPU time: one thread keeps it comparable
    clips = load_clips(args.data, bits=args.bits)
    names = speaker_names(args.data)
    test = clips["index"] < TEST_INDICES
    train_clips = subset(clips, ~test)
    keep = torch.zeros_like(clips["index"], dtype=torch.bool)
    for i in args.eval_index:
        keep |= clips["index"] == i
    eval_clips = subset(clips, test & keep)
    if eval_clips["x"].shape[0] == 0:
        raise cli.UserError(f"--eval-index {','.join(map(str, args.eval_index))}: no test clip of {args.data} "
                            "has that index")
    if train_clips["x"].shape[0] == 0:
        raise cli.UserError(f"--data {args.data}: no training clips (every clip has index < {TEST_INDICES})")
    name = args.results or ("results.json" if args.bits == 8 else "results_16bit.json")
    path = args.out / name
    results = read_json_file(path, owner="audio", fix="delete it (or pass another --out) and run again", error=SystemExit) if path.exists() else {}
    results.setdefault("runs", [])
    if "ngram" not in results:
        t = time.process_time()
        results["ngram"] = ngram_baseline(train_clips, {"eval": eval_clips, "test_all": subset(clips, test)},
                                          bits=args.bits, orders=(1, 2, 3, 4, 5, 6) if args.bits == 8 else (1, 2, 3))
        results["ngram"]["cpu_s"] = time.process_time() - t
        path.write_text(json.dumps(results, indent=2))
        print("ngram", results["ngram"], flush=True)
    results["eval"] = {"clips": int(eval_clips["x"].shape[0]), "real_samples": int(eval_clips["lengths"].sum()),
                       "index": ",".join(map(str, args.eval_index))}
    done = {(r["model"], r["budget_s"], r.get("max_steps"), r["seed"]) for r in results["runs"]}
    budgets = [None] if args.max_steps else list(args.budgets)  # None: a step count only
    models = {}
    for budget_s in budgets:
        for seed in args.seeds:
            for spec, (kind, condition) in zip(args.models.split(","), specs, strict=True):
                if (spec, budget_s, args.max_steps, seed) in done:
                    continue
                torch.manual_seed(seed)
                model = build_model(kind, bits=args.bits, conditional=condition is not None,
                                    condition=condition or "digit")
                log = train(model, train_clips, budget_s=math.inf if budget_s is None else budget_s,
                            max_steps=args.max_steps, batch=args.batch, seed=seed, condition=condition or "digit")
                t = time.process_time()
                bps = bits_per_real_sample(model, eval_clips, condition=condition or "digit")
                run = {"model": spec, "budget_s": budget_s, "max_steps": args.max_steps, "seed": seed,
                       "bits_per_real_sample": bps,
                       "params": sum(p.numel() for p in model.parameters()), "steps": log["steps"],
                       "cpu_s_per_step": log["s_per_step"], "eval_cpu_s": time.process_time() - t,
                       "batch": args.batch}
                results["runs"].append(run)
                path.write_text(json.dumps(results, indent=2))
                print(json.dumps(run), flush=True)
                models[spec] = model
    if args.sample:
        sampled = [s for s in args.sample.split(",") if s in models]
        conditions = {parse_spec(s)[1] for s in sampled}
        if len(conditions) > 1:
            raise ValueError(f"--sample: the models of one picture must share a condition, got {sorted(map(str, conditions))}")
        condition = conditions.pop() if conditions else "digit"
        labels, stems = sample_labels(condition, names)
        (args.out / "samples").mkdir(exist_ok=True)
        eval_labels = condition_labels(eval_clips, condition)
        shown, titles = {}, stems
        if eval_labels is not None:  # one real test clip per label
            rows = [int((eval_labels == label).nonzero()[0]) for label in labels.tolist()]
            shown["data (test)"] = [eval_clips["x"][r][: int(eval_clips["lengths"][r])].numpy() for r in rows]
        for spec in sampled:
            model = models[spec]
            if args.leaf_sampling == "direct":
                model.leaf.sampling = "direct"
            x, s_per_clip = sample_clips(model, labels)
            shown[spec] = list(x.numpy())
            results.setdefault("sample_s_per_clip", {})[spec] = s_per_clip
            results.setdefault("sample_leaf_sampling", {})[spec] = args.leaf_sampling
            for clip, stem in zip(x, stems, strict=True):
                write_wav(args.out / "samples" / f"{spec}_{args.bits}bit_{stem}.wav", clip.numpy(), args.bits)
        plot(args.out / (args.picture or f"samples_{args.bits}bit.png"), shown, labels.tolist(), args.bits,
             titles=titles)
        path.write_text(json.dumps(results, indent=2))
    print("| model | CPU budget (s) | steps | bits / real sample (mean ± std, seeds) | params | CPU s / step |")
    print("|---|---|---|---|---|---|")
    groups: dict[tuple, list[dict]] = {}
    for r in results["runs"]:
        groups.setdefault((r["model"], r["budget_s"], r.get("max_steps")), []).append(r)
    for (spec, budget_s, _), runs in sorted(groups.items(), key=lambda kv: (kv[0][1] or 0, kv[0][2] or 0, kv[0][0])):
        print(f"| {spec} | {'-' if budget_s is None else f'{budget_s:.0f}'} | {np.mean([r['steps'] for r in runs]):.0f} | "
              f"{budget.summarise_runs([r['bits_per_real_sample'] for r in runs])} | "
              f"{runs[0]['params'] / 1e6:.2f}M | {np.mean([r['cpu_s_per_step'] for r in runs]):.2f} |")
    ng = results["ngram"]
    print(f"| {ng['order']}-gram (Kneser-Ney) | counts | | {ng['eval']:.3f} | | |")
    tests = {}
    for (spec, budget_s, steps), runs in groups.items():  # each condition against no condition
        kind, condition = parse_spec(spec)
        base = groups.get((f"{kind}-uncond", budget_s, steps))
        if condition is None or base is None or len(runs) < 2 or len(base) < 2:
            continue
        t = welch([r["bits_per_real_sample"] for r in runs], [r["bits_per_real_sample"] for r in base])
        at = f"steps {steps}" if budget_s is None else f"{budget_s:.0f} s"
        tests[f"{spec} vs {kind}-uncond at {at}"] = t
        print(f"{spec} - {kind}-uncond at {at} ({len(runs)} vs {len(base)} seeds): {t['difference']:+.3f} "
              f"bits/sample, Welch t = {t['t']:.2f}, p = {t['p']:.3f}")
    if tests:
        results["welch_vs_uncond"] = tests
        path.write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    cli.run(main)
