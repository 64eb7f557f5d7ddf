"""Rebuild the tiny data samples in this folder from local copies of the public datasets.

Usage: ``python tests/data/make_samples.py SOURCE`` where SOURCE holds the datasets' local copies
(``tiny-imagenet-64/train.parquet``, ``cifar10-32/train.parquet``, ``fsdd-8k/recordings.parquet``,
``qm9/qm9.csv``, ``graphs/*_edges.npz``, ``tinyshakespeare/input.txt``; README.md here says what
each is). The tests only read the samples; they never need SOURCE.
"""

from __future__ import annotations

import io
import shutil
import sys
import wave
from pathlib import Path

HERE = Path(__file__).resolve().parent
IMAGE_ROWS = {"tiny-imagenet-64": 40, "cifar10-32": 20}  # first rows, in file order
CLIPS = 60  # first recordings; the audio tests read 60
CLIP_SAMPLES = 1024  # each clip keeps its central 1024 samples (the tests crop 256)
TEXT_CHARS = 50_000  # the first characters of Tiny Shakespeare
QM9_ROWS = 400  # the first SMILES; more than 200 survive the example's filters
GRAPHS = ("ego_small", "community_small")  # whole files, 5 kB together


def central(wav: bytes, keep: int) -> bytes:
    """The central ``keep`` frames of a mono WAV file, as a WAV file of the same format."""
    with wave.open(io.BytesIO(wav)) as r:
        params, n = r.getparams(), r.getnframes()
        start = max(0, (n - keep) // 2)
        r.setpos(start)
        frames = r.readframes(min(keep, n))
    out = io.BytesIO()
    with wave.open(out, "wb") as w:
        w.setparams(params)
        w.writeframes(frames)
    return out.getvalue()


def main(source: Path) -> None:
    import pyarrow as pa
    import pyarrow.parquet as pq
    from datasets import load_dataset

    for name, rows in IMAGE_ROWS.items():
        ds = load_dataset("parquet", data_files=str(source / name / "train.parquet"), split=f"train[:{rows}]")
        (HERE / name).mkdir(exist_ok=True)
        ds.to_parquet(str(HERE / name / "train.parquet"))  # keeps the Image / ClassLabel features
    table = pq.read_table(source / "fsdd-8k" / "recordings.parquet").slice(0, CLIPS)
    wavs = pa.array([central(b, CLIP_SAMPLES) for b in table.column("audio_wav").to_pylist()], pa.binary())
    table = table.set_column(table.schema.get_field_index("audio_wav"), "audio_wav", wavs)
    (HERE / "fsdd-8k").mkdir(exist_ok=True)
    pq.write_table(table, HERE / "fsdd-8k" / "recordings.parquet")
    (HERE / "qm9").mkdir(exist_ok=True)
    lines = (source / "qm9" / "qm9.csv").read_text().splitlines(keepends=True)
    (HERE / "qm9" / "qm9.csv").write_text("".join(lines[: QM9_ROWS + 1]))
    (HERE / "tinyshakespeare").mkdir(exist_ok=True)
    text = (source / "tinyshakespeare" / "input.txt").read_text(encoding="utf-8")
    (HERE / "tinyshakespeare" / "input.txt").write_text(text[:TEXT_CHARS], encoding="utf-8")
    (HERE / "graphs").mkdir(exist_ok=True)
    for name in GRAPHS:
        shutil.copyfile(source / "graphs" / f"{name}_edges.npz", HERE / "graphs" / f"{name}_edges.npz")


if __name__ == "__main__":
    if len(sys.argv) != 2:
        sys.exit(__doc__)
    main(Path(sys.argv[1]))
