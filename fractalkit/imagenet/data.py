"""Image datasets for training and evaluating pixel models, through HuggingFace ``datasets``.

Sources: a local image folder (``datasets``' ``imagefolder``: class sub-folders become labels), a
parquet file (or a glob of them), a dataset written with ``Dataset.save_to_disk``, or a public
dataset's name on the Hugging Face Hub (``zh-plus/tiny-imagenet``, ``uoft-cs/cifar10``; see
:mod:`fractalkit.data.hub_datasets`). With no
source, :class:`NaturalCrops` gives crops of the photographs inside scikit-image (no download).

Every image is decoded to RGB, center-cropped to a square and resized to the target size (the
ADM / original FractalGen ``center_crop_arr``: box-downsample by two while the short side is at
least twice the target, then bicubic, then a center crop), and optionally flipped left-right.
Flips are decided by ``(seed, epoch, index)``, not by a global random state, so a resumed run
sees the same images as an uninterrupted one.

Images smaller than the target: an error by default (``small="error"``, naming the row and its
size), because upsampling silently changes the data's statistics and its bits/dim. Pass
``small="upsample"`` to upsample them bicubically instead, with one warning per dataset.

Items are ``(image, label)``: uint8 ``[3, S, S]`` and an int64 scalar (-1 when the source has
no labels).
"""

from __future__ import annotations

import hashlib
import os
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
from torch import Tensor
from torch.utils.data import Dataset

from fractalkit.data.hub_datasets import is_hub_name, load_hub_dataset

__all__ = [
    "IMAGE_EXTENSIONS",
    "HFImageDataset",
    "NaturalCrops",
    "center_crop_resize",
    "load_image_dataset",
    "split_indices",
]

#: File extensions accepted in an image folder (case-insensitive).
IMAGE_EXTENSIONS = frozenset(
    {".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp", ".tif", ".tiff", ".ppm", ".pgm"}
)
#: Non-image files an image folder may hold (``datasets``' metadata files).
_METADATA_FILES = frozenset({"metadata.csv", "metadata.jsonl", "metadata.parquet"})

SmallPolicy = Literal["error", "upsample"]


def _flip_bit(seed: int, epoch: int, index: int) -> bool:
    """A reproducible fair coin for ``(seed, epoch, index)``, independent of any global state."""
    digest = hashlib.blake2b(f"{seed}:{epoch}:{index}".encode(), digest_size=1).digest()
    return bool(digest[0] & 1)


def center_crop_resize(image: Any, size: int, *, small: SmallPolicy = "error", where: str = "image"):
    """Center-crop a PIL image to a square and resize it to ``size`` (ADM's ``center_crop_arr``).

    Args:
        image: a ``PIL.Image.Image`` (any mode; converted to RGB).
        size: target side S in pixels.
        small: ``"error"`` to refuse images whose short side is below ``size``, ``"upsample"``
            to upsample them bicubically.
        where: how to name the image in error messages.

    Returns:
        uint8 numpy array ``[S, S, 3]``.

    Raises:
        ValueError: the image is smaller than ``size`` and ``small="error"``.
    """
    from PIL import Image

    image = image.convert("RGB")
    short = min(image.size)
    if short < size and small == "error":
        raise ValueError(
            f"{where} is {image.size[0]}x{image.size[1]} pixels, smaller than the {size}x{size} "
            "crop; use a preset of a lower resolution, or small='upsample' (--upsample-small) "
            "to upsample such images bicubically"
        )
    while min(image.size) >= 2 * size:
        image = image.resize(tuple(x // 2 for x in image.size), resample=Image.BOX)
    scale = size / min(image.size)
    image = image.resize(tuple(round(x * scale) for x in image.size), resample=Image.BICUBIC)
    arr = np.asarray(image)
    top = (arr.shape[0] - size) // 2
    left = (arr.shape[1] - size) // 2
    return arr[top : top + size, left : left + size]


def split_indices(n: int, holdout: float, part: str, seed: int = 0) -> np.ndarray:
    """Indices of a seeded random train / held-out split of ``n`` rows.

    Args:
        n: number of rows.
        holdout: fraction of rows held out, in ``[0, 1)``.
        part: ``"all"``, ``"train"`` (the rest) or ``"heldout"``.
        seed: seed of the permutation (the same seed gives the same split).

    Returns:
        int64 numpy array of row indices, sorted.
    """
    if not 0 <= holdout < 1:
        raise ValueError(f"holdout: expected a fraction in [0, 1), got {holdout}")
    if part not in ("all", "train", "heldout"):
        raise ValueError(f"part: expected 'all', 'train' or 'heldout', got {part!r}")
    if part == "all":
        return np.arange(n)
    perm = np.random.default_rng(seed).permutation(n)
    cut = round(n * holdout)
    chosen = perm[:cut] if part == "heldout" else perm[cut:]
    return np.sort(chosen)


class NaturalCrops(Dataset):
    """Crops of scikit-image's photographs (:func:`fractalkit.data.natural_image_crops`): no labels.

    The default training data when no dataset is given: real photographs, no download.

    Args:
        size: crop side S.
        count: number of crops.
        seed: crop seed (flips are part of the crops).
    """

    has_labels = False
    num_classes = 0

    def __init__(self, size: int, count: int = 2048, *, seed: int = 0) -> None:
        from fractalkit.data.natural import natural_image_crops

        self.images = natural_image_crops(size, count, seed=seed)  # uint8 [count, 3, S, S]
        self.size = size

    def __len__(self) -> int:
        """Number of crops."""
        return self.images.shape[0]

    def set_epoch(self, epoch: int) -> None:
        """No-op (crops are fixed); present for a uniform interface."""

    def __getitem__(self, index: int) -> tuple[Tensor, Tensor]:
        """``(uint8 [3, S, S], int64 -1)``."""
        return self.images[index], torch.tensor(-1)


class HFImageDataset(Dataset):
    """A HuggingFace ``datasets.Dataset`` of images as ``(uint8 [3, S, S], int64 label)`` items.

    Args:
        dataset: a ``datasets.Dataset`` with an image column.
        size: target side S.
        image_column: the column holding images (default: the first ``Image`` feature, else a
            column named ``image``/``img``).
        label_column: the label column (default: the first ``ClassLabel`` feature, else a column
            named ``label``/``labels``); None in the data means unlabelled.
        flip: random horizontal flips (seeded by ``(seed, epoch, index)``).
        seed: flip seed.
        small: ``"error"`` or ``"upsample"`` for images smaller than S (see module docs).
        num_classes: if given, every label must lie in ``[0, num_classes)`` (checked now).
        indices: rows to use (e.g. from :func:`split_indices`); default all.
        name: how to name the source in error messages.

    Raises:
        ValueError: no image column, labels out of range, or an empty selection.
    """

    def __init__(
        self,
        dataset: Any,
        size: int,
        *,
        image_column: str | None = None,
        label_column: str | None = None,
        flip: bool = True,
        seed: int = 0,
        small: SmallPolicy = "error",
        num_classes: int | None = None,
        indices: Sequence[int] | None = None,
        name: str = "dataset",
    ) -> None:
        from datasets import ClassLabel
        from datasets import Image as ImageFeature

        if small not in ("error", "upsample"):
            raise ValueError(f"small: expected 'error' or 'upsample', got {small!r}")
        if not isinstance(size, int) or size < 1:
            raise ValueError(f"size: expected a positive int, got {size!r}")
        features = dataset.features
        if image_column is None:
            image_column = next((k for k, f in features.items() if isinstance(f, ImageFeature)), None)
            if image_column is None:
                image_column = next((k for k in ("image", "img") if k in features), None)
        if image_column is None or image_column not in features:
            raise ValueError(
                f"{name}: no image column found (columns: {list(features)}); is this an image "
                "dataset? Name the column with image_column="
            )
        if label_column is None:
            label_column = next((k for k, f in features.items() if isinstance(f, ClassLabel)), None)
            if label_column is None:
                label_column = next((k for k in ("label", "labels") if k in features), None)
        elif label_column not in features:
            raise ValueError(f"{name}: no column {label_column!r} (columns: {list(features)})")
        self.name = name
        self.dataset = dataset
        self.size = size
        self.image_column = image_column
        self.label_column = label_column
        self.flip = flip
        self.seed = seed
        self.small = small
        self.epoch = 0
        self._warned = False
        self.indices = np.arange(len(dataset)) if indices is None else np.asarray(indices, dtype=np.int64)
        if len(self.indices) == 0:
            raise ValueError(f"{name}: the selection holds no images")
        self.has_labels = label_column is not None
        self.num_classes = 0
        if self.has_labels:
            feature = features[label_column]
            labels = np.asarray(dataset[label_column])
            if labels.dtype.kind not in "iu":
                raise ValueError(
                    f"{name}: label column {label_column!r} must hold integers, got {labels.dtype}"
                )
            labels = labels[self.indices]
            if isinstance(feature, ClassLabel):
                self.num_classes = feature.num_classes
            elif labels.size:
                self.num_classes = int(labels.max()) + 1
            if labels.size and int(labels.min()) < 0:
                raise ValueError(f"{name}: labels must be >= 0, got min {int(labels.min())}")
            if num_classes is not None and labels.size and int(labels.max()) >= num_classes:
                raise ValueError(
                    f"{name}: labels go up to {int(labels.max())} but the model has {num_classes} "
                    f"classes (labels must lie in [0, {num_classes})); pass a larger num_classes "
                    "(--num-classes) or train unconditionally (--unconditional)"
                )

    def __len__(self) -> int:
        """Number of images in the selection."""
        return len(self.indices)

    def set_epoch(self, epoch: int) -> None:
        """Select the flips of ``epoch`` (call once per epoch, as with a DistributedSampler)."""
        self.epoch = int(epoch)

    def __getitem__(self, index: int) -> tuple[Tensor, Tensor]:
        """``(uint8 [3, S, S], int64 label or -1)`` of row ``indices[index]``."""
        row = int(self.indices[index])
        try:
            item = self.dataset[row]
        except Exception as err:  # PIL / datasets decoding errors
            raise ValueError(
                f"{self.name}: row {row} could not be decoded as an image ({type(err).__name__}: "
                f"{err}); is every file an image?"
            ) from err
        image = item[self.image_column]
        if image is None or not hasattr(image, "convert"):
            raise ValueError(f"{self.name}: row {row} holds no image (got {type(image).__name__})")
        where = f"{self.name} row {row}"
        if self.small == "upsample" and min(image.size) < self.size and not self._warned:
            warnings.warn(
                f"{where} is {image.size[0]}x{image.size[1]}, smaller than {self.size}; upsampling "
                "small images bicubically (reported once)",
                UserWarning,
                stacklevel=2,
            )
            self._warned = True
        arr = center_crop_resize(image, self.size, small=self.small, where=where)
        if self.flip and _flip_bit(self.seed, self.epoch, row):
            arr = arr[:, ::-1]
        x = torch.from_numpy(arr.copy()).permute(2, 0, 1).contiguous()  # copy: PIL arrays are read-only
        label = item.get(self.label_column) if self.label_column else None
        return x, torch.tensor(-1 if label is None else int(label))


def _check_folder(path: Path) -> None:
    """Refuse image folders that hold non-image files (other than metadata and hidden files)."""
    bad, images = [], 0
    for root, dirs, files in os.walk(path):
        dirs[:] = [d for d in dirs if not d.startswith(".")]
        for f in files:
            if f.startswith(".") or f in _METADATA_FILES:
                continue
            if Path(f).suffix.lower() in IMAGE_EXTENSIONS:
                images += 1
            else:
                bad.append(str(Path(root, f).relative_to(path)))
    if bad:
        shown = ", ".join(bad[:5]) + (f" and {len(bad) - 5} more" if len(bad) > 5 else "")
        raise ValueError(
            f"image folder {path} holds {len(bad)} non-image file(s): {shown}; remove them or "
            f"point at a folder of images only (accepted: {', '.join(sorted(IMAGE_EXTENSIONS))})"
        )
    if images == 0:
        raise ValueError(f"image folder {path} holds no image files")


def _open(source: str | os.PathLike, split: str) -> tuple[Any, str]:
    """Open ``source`` as a ``datasets.Dataset`` of one split; returns it and its display name."""
    import datasets

    path = Path(source)
    text = str(source)
    if is_hub_name(text):  # a public dataset by name, downloaded once and cached
        return load_hub_dataset(text, kind="image", split=split), text
    if any(c in text for c in "*?["):
        if not list(path.parent.glob(path.name)):
            raise FileNotFoundError(f"data: no files match {text}")
        return datasets.load_dataset("parquet", data_files=text, split=split), text
    if not path.exists():
        raise FileNotFoundError(
            f"data: {path} does not exist (expected an image folder, a .parquet file, a "
            "dataset saved with save_to_disk, or a Hugging Face Hub dataset name such as "
            "zh-plus/tiny-imagenet)"
        )
    if path.is_file():
        if path.suffix.lower() != ".parquet":
            raise ValueError(
                f"data: {path} is a file but not a .parquet file; give a parquet file, an image "
                "folder or a save_to_disk folder"
            )
        try:
            return datasets.load_dataset("parquet", data_files=str(path), split=split), str(path)
        except Exception as err:
            raise ValueError(f"data: {path} could not be read as parquet: {err}") from err
    if (path / "dataset_info.json").exists() or (path / "dataset_dict.json").exists():
        ds = datasets.load_from_disk(str(path))
        if isinstance(ds, datasets.DatasetDict):
            if split not in ds:
                raise ValueError(f"data: {path} has splits {list(ds)}, not {split!r}")
            ds = ds[split]
        return ds, str(path)
    _check_folder(path)
    try:
        return datasets.load_dataset("imagefolder", data_dir=str(path), split=split), str(path)
    except ValueError as err:
        raise ValueError(f"data: {path} could not be read as an image folder: {err}") from err


def load_image_dataset(
    source: str | os.PathLike | None,
    size: int,
    *,
    split: str = "train",
    num_classes: int | None = None,
    flip: bool = True,
    seed: int = 0,
    small: SmallPolicy = "error",
    holdout: float = 0.0,
    part: str = "all",
    image_column: str | None = None,
    label_column: str | None = None,
    natural_count: int = 2048,
) -> Dataset:
    """Open an image dataset for a pixel model of resolution ``size``.

    Args:
        source: an image folder, a ``.parquet`` file (or glob), a ``save_to_disk`` folder, a
            Hugging Face Hub dataset name such as ``zh-plus/tiny-imagenet`` or ``uoft-cs/cifar10``
            (downloaded once and cached; columns mapped by
            :mod:`fractalkit.data.hub_datasets`), or None for :class:`NaturalCrops`
            (scikit-image photographs, no labels, no download).
        size: target side S in pixels.
        split: the ``datasets`` split to read (slices such as ``"train[:10%]"`` work for
            folders and parquet files).
        num_classes: the model's classes; labels at or above it raise a ValueError.
        flip: random horizontal flips (seeded, see :class:`HFImageDataset`).
        seed: seed of flips, the held-out split and the natural crops.
        small: ``"error"`` (default) or ``"upsample"`` for images smaller than S.
        holdout: fraction of rows held out (a seeded random split, see :func:`split_indices`).
        part: ``"all"``, ``"train"`` or ``"heldout"``.
        image_column, label_column: column names, detected when None.
        natural_count: number of crops when ``source`` is None.

    Returns:
        A torch ``Dataset`` of ``(uint8 [3, S, S], int64 label)`` with ``has_labels``,
        ``num_classes`` and ``set_epoch(epoch)``.

    Raises:
        FileNotFoundError: ``source`` does not exist.
        fractalkit.data.hub_datasets.DatasetUnavailableError: a Hub name that cannot be loaded
            (offline without a cache, unknown or gated); the message says what to download.
        ValueError: not an image source, non-image files, labels out of range (images smaller
            than S raise when they are read).
    """
    if source is None:
        count = natural_count
        if part != "all":
            idx = split_indices(natural_count, holdout, part, seed)
            count = len(idx)
        # Held-out crops come from another seed, so they differ from the training crops.
        return NaturalCrops(size, count, seed=seed + (1 if part == "heldout" else 0))
    dataset, name = _open(source, split)
    indices = split_indices(len(dataset), holdout, part, seed)
    return HFImageDataset(
        dataset,
        size,
        image_column=image_column,
        label_column=label_column,
        flip=flip,
        seed=seed,
        small=small,
        num_classes=num_classes,
        indices=indices,
        name=name,
    )
