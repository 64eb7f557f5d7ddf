"""Public datasets by name on the Hugging Face Hub: the examples' default data.

Every example's ``--data`` (and :func:`fractalkit.imagenet.data.load_image_dataset`) accepts a
Hub dataset name such as ``uoft-cs/cifar10`` besides its local forms. The name is loaded with
``datasets.load_dataset(name, split=...)``, which downloads it once and caches it (under
``~/.cache/huggingface/datasets``, or ``$HF_HOME``); later runs read the cache, also offline.

:data:`KNOWN` lists the names the examples use, with their page, size, licence and a small
column mapping: each dataset's own columns are renamed to the names the examples read
(``image``/``label`` for images; ``audio_wav``/``digit``/``speaker``/``index`` for the spoken
digits; ``smiles``; ``text``; ``num_nodes``/``edge_index`` for graphs). Other names load too,
with the same renaming when their columns are among the known candidates.

When a name cannot be loaded (offline without a cache, a typo, a gated dataset without a
token), :func:`load_hub_dataset` raises :class:`DatasetUnavailableError`, whose one message says
what to download, from where, the local forms accepted and the ``--data`` override with a
local copy, instead of a ``datasets`` traceback.

Nothing here downloads at import; ``datasets`` is imported when a name is first loaded.
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

__all__ = [
    "COLUMNS",
    "KNOWN",
    "DatasetUnavailableError",
    "HubDataset",
    "hub_url",
    "is_hub_name",
    "load_hub_dataset",
    "speaker_and_index",
    "unavailable_message",
]

#: ``owner/name`` with the Hub's allowed characters (no further slashes, no ``..``).
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*/[A-Za-z0-9][A-Za-z0-9_.-]*$")

#: Per kind of data: the column name the examples read -> the names a Hub dataset may use for
#: it, in order of preference (the first present is renamed).
COLUMNS: dict[str, dict[str, tuple[str, ...]]] = {
    "image": {"image": ("image", "img", "picture"), "label": ("label", "labels", "fine_label")},
    "audio": {
        "audio_wav": ("audio_wav", "audio", "wav"),
        "digit": ("digit", "label", "labels"),
        "speaker": ("speaker", "speaker_id", "speaker_name"),
        "index": ("index", "recording_index"),
    },
    "smiles": {"smiles": ("smiles", "SMILES", "canonical_smiles", "canonsmiles")},
    "text": {"text": ("text", "Text", "content")},
    "graphs": {"num_nodes": ("num_nodes",), "edge_index": ("edge_index", "edges")},
}


class DatasetUnavailableError(FileNotFoundError):
    """A Hub dataset could not be loaded (offline without a cache, an unknown or gated name).

    A ``FileNotFoundError`` (as for a missing local path, so callers that catch that keep
    working, and the example scripts report it as one line with exit code 2); the message names
    the dataset, its page, the local forms accepted and the ``--data`` override.
    """


@dataclass(frozen=True)
class HubDataset:
    """One public dataset on the Hub that the examples use by default.

    Attributes:
        name: the Hub name, ``owner/name``.
        what: a short description (contents, sizes in the units of the data).
        kind: ``"image"``, ``"audio"``, ``"smiles"``, ``"text"`` or ``"graphs"``
            (selects the column mapping in :data:`COLUMNS`).
        splits: the dataset's splits, in order.
        download: the download size as the Hub states it (MB = 10^6 bytes).
        licence: the licence or terms of use.
        local: the local forms an example accepts instead (for the offline message).
        local_example: a local override to show, e.g. ``--data ../shared/data/...``.
        gated: True when the Hub asks users to accept terms and log in first.
        verified: what of the layout was checked against the dataset card (for the docs).
    """

    name: str
    what: str
    kind: str
    splits: tuple[str, ...] = ("train",)
    download: str = ""
    licence: str = ""
    local: str = ""
    local_example: str = ""
    gated: bool = False
    verified: str = ""
    columns: Mapping[str, tuple[str, ...]] = field(default_factory=dict)

    @property
    def url(self) -> str:
        """The dataset's page on the Hub."""
        return hub_url(self.name)


_IMAGE_LOCAL = "an image folder (class sub-folders), a .parquet file or a save_to_disk folder"

#: The examples' default datasets (and the gated ImageNet-1k), by name.
KNOWN: dict[str, HubDataset] = {
    d.name: d
    for d in (
        HubDataset(
            "zh-plus/tiny-imagenet",
            "Tiny ImageNet: 100,000 training and 10,000 validation photos, 64x64 RGB, 200 classes",
            "image", splits=("train", "valid"), download="161 MB",
            licence="ImageNet terms: non-commercial research and education",
            local=_IMAGE_LOCAL, local_example="--data ../shared/data/tiny-imagenet-64/train.parquet",
            verified="columns image (Image) and label (ClassLabel, 200 classes), splits train/valid",
        ),
        HubDataset(
            "uoft-cs/cifar10",
            "CIFAR-10: 50,000 training and 10,000 test photos, 32x32 RGB, 10 classes",
            "image", splits=("train", "test"), download="144 MB",
            licence="CIFAR-10 (Krizhevsky 2009), no formal licence",
            local=_IMAGE_LOCAL, local_example="--data ../shared/data/cifar10-32/train.parquet",
            verified="parquet files plain_text/{train,test}-00000-of-00001.parquet; columns img/label "
            "from the card's former script (not seen offline)",
        ),
        HubDataset(
            "ILSVRC/imagenet-1k",
            "ImageNet-1k (ILSVRC 2012): 1.28M training and 50,000 validation photos, 1,000 classes",
            "image", splits=("train", "validation", "test"), download="about 167 GB",
            licence="ImageNet terms: non-commercial research and education",
            local=_IMAGE_LOCAL, local_example="--data /path/to/imagenet/train",
            gated=True, verified="gated: accept the terms on its page, then log in",
        ),
        HubDataset(
            "silky1708/Free-Spoken-Digit-Dataset",
            "Free Spoken Digit Dataset: 3,000 recordings of spoken digits, 6 speakers, 8 kHz mono",
            "audio", download="about 20 MB, an estimate", licence="CC BY-SA 4.0",
            local="a .parquet file with columns audio_wav (WAV bytes), digit, speaker, index",
            local_example="--data ../shared/data/fsdd-8k/recordings.parquet",
            verified="3,000 rows; column names not seen offline: the audio, digit/label, speaker "
            "and index are found by candidates, speaker and index also from file names "
            "{digit}_{speaker}_{index}.wav",
        ),
        HubDataset(
            "yairschiff/qm9",
            "QM9: 133,885 small organic molecules (up to 9 heavy atoms) with SMILES and properties",
            "smiles", download="180 MB", licence="QM9 (Ramakrishnan et al. 2014), openly distributed",
            local="a .csv file with a smiles column (or one SMILES per line) or a .parquet file",
            local_example="--data ../shared/data/qm9/qm9.csv",
            verified="one train split, parquet; a smiles column (card of its duplicate "
            "structure-epflai/qm9: smiles, canonical_smiles)",
        ),
        HubDataset(
            "karpathy/tiny_shakespeare",
            "Tiny Shakespeare: 1,115,394 characters, 65 distinct (train/validation/test in order)",
            "text", splits=("train", "validation", "test"), download="0.7 MB", licence="public domain text",
            local="a UTF-8 .txt file", local_example="--data ../shared/data/tinyshakespeare/input.txt",
            verified="parquet since its conversion (loading script deleted); one text column, "
            "one row per split",
        ),
    )
}


def hub_url(name: str) -> str:
    """The page of dataset ``name`` on the Hugging Face Hub."""
    return f"https://huggingface.co/datasets/{name}"


def is_hub_name(source: str | os.PathLike | None) -> bool:
    """True when ``source`` reads as a Hub name ``owner/name`` and is no existing local path.

    A local path always wins: ``data/train`` that exists is a folder, not a name.
    """
    text = str(source) if source is not None else ""
    if not _NAME.match(text):
        return False
    return not Path(text).exists()


def unavailable_message(name: str, reason: str = "", *, local: str = "", example: str = "") -> str:
    """The one message for a Hub dataset that cannot be loaded.

    Args:
        name: the Hub name.
        reason: what ``datasets`` said, shortened (e.g. ``offline``).
        local: the local forms accepted (default: the entry in :data:`KNOWN`, if any).
        example: a ``--data`` override with a local copy (default: from :data:`KNOWN`).

    Returns:
        One line (no newlines).
    """
    info = KNOWN.get(name)
    local = local or (info.local if info else "a local copy of it")
    example = example or (info.local_example if info else "--data PATH")
    size = f" ({info.download})" if info and info.download else ""
    gated = (
        " It is gated: accept its terms on that page, then run `huggingface-cli login` (or set "
        "HF_TOKEN) before downloading."
        if info and info.gated else ""
    )
    why = f" ({reason})" if reason else ""
    return (
        f"data: the Hugging Face Hub dataset {name!r} could not be loaded{why}. Download it once "
        f"with network access{size} from {hub_url(name)} (datasets caches it under "
        f"~/.cache/huggingface/datasets, or $HF_HOME, and later runs read the cache offline), or "
        f"put a local copy on this machine and pass it instead: {local}, e.g. {example}.{gated}"
    )


def _short(err: BaseException) -> str:
    text = " ".join(str(err).split())
    if "OfflineModeIsEnabled" in text or "HF_DATASETS_OFFLINE" in text or "HF_HUB_OFFLINE" in text:
        return "offline (HF_DATASETS_OFFLINE/HF_HUB_OFFLINE is set) and not in the cache"
    if isinstance(err, ConnectionError):
        return "no network and not in the cache"
    if "gated" in text.lower():
        return "gated: not logged in or terms not accepted"
    return f"{type(err).__name__}: {text[:200]}"


def _rename(ds: Any, kind: str, name: str) -> Any:
    """Rename ``ds``'s columns to the names the examples read (see :data:`COLUMNS`)."""
    mapping = dict(COLUMNS.get(kind, {}))
    info = KNOWN.get(name)
    if info is not None and info.columns:
        mapping.update(info.columns)
    present = list(ds.column_names)
    renames = {}
    for target, candidates in mapping.items():
        if target in present:
            continue
        found = next((c for c in candidates if c in present and c not in renames), None)
        if found is not None:
            renames[found] = target
    return ds.rename_columns(renames) if renames else ds


def load_hub_dataset(
    name: str,
    *,
    kind: str,
    split: str | None = None,
    local: str = "",
    example: str = "",
) -> Any:
    """Load Hub dataset ``name`` (downloaded once, then from the cache) with renamed columns.

    Args:
        name: ``owner/name`` on the Hub.
        kind: ``"image"``, ``"audio"``, ``"smiles"``, ``"text"`` or ``"graphs"`` (the column
            mapping, :data:`COLUMNS`). Audio columns are read undecoded (WAV bytes).
        split: the split (slices such as ``"train[:10%]"`` work); default the first split the
            dataset lists in :data:`KNOWN`, else ``"train"``. ``"all"`` joins every split of a
            :data:`KNOWN` entry in order (Tiny Shakespeare's whole text).
        local, example: override the offline message's local forms and ``--data`` example.

    Returns:
        A ``datasets.Dataset`` whose columns carry the names the examples read.

    Raises:
        DatasetUnavailableError: offline without a cache, an unknown name, a gated dataset
            without a token; the message says what to download and where to put it.
        ValueError: ``kind`` is not one of :data:`COLUMNS`.
    """
    if kind not in COLUMNS:
        raise ValueError(f"load_hub_dataset: kind must be one of {sorted(COLUMNS)}, got {kind!r}")
    import datasets

    info = KNOWN.get(name)
    if split is None:
        split = info.splits[0] if info else "train"
    if split == "all":
        split = "+".join(info.splits) if info else "train"
    try:
        ds = datasets.load_dataset(name, split=split)
    except OSError as err:  # ConnectionError, DatasetNotFoundError (a FileNotFoundError) ...
        raise DatasetUnavailableError(unavailable_message(name, _short(err), local=local, example=example)) from err
    if isinstance(ds, datasets.DatasetDict):  # a split-less call (not made here), kept safe
        ds = ds[next(iter(ds))]
    if kind == "audio":
        for column, feature in ds.features.items():
            if isinstance(feature, datasets.Audio):
                ds = ds.cast_column(column, datasets.Audio(decode=False))
    return _rename(ds, kind, name)


_FSDD_FILE = re.compile(r"(?P<digit>\d)_(?P<speaker>[A-Za-z]+)_(?P<index>\d+)\.wav$")


def speaker_and_index(path: str | None) -> tuple[str, int] | None:
    """``(speaker, index)`` from an FSDD file name ``{digit}_{speaker}_{index}.wav``, else None."""
    if not path:
        return None
    m = _FSDD_FILE.search(str(path))
    return (m["speaker"], int(m["index"])) if m else None
