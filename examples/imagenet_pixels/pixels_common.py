"""Shared helpers of the ImageNet pixel example: device choice, image grids, masks, loading.

The scripts choose the device (CUDA with bf16 autocast when available, CPU otherwise); the
library itself never does.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from fractalkit import SampleOptions
from fractalkit.cli import (
    UserError,
    check_device,
    non_negative_float,
    positive_float,
    probability,
    steps_list,
)
from fractalkit.imagenet.presets import PRESETS
from fractalkit.training.checkpoint import MANIFEST, resolve_checkpoint
from fractalkit.validation import read_json_file

HERE = Path(__file__).resolve().parent

#: Named completion regions (True = unknown, to be generated).
REGIONS = ("center", "left-half", "right-half", "top-half", "bottom-half", "border", "outside-center")


#: the forms ``--data`` takes (for messages)
IMAGE_DATA = ("an image folder, a .parquet file, a save_to_disk folder or a Hugging Face Hub dataset name "
              "such as zh-plus/tiny-imagenet")


def pick_device(name: str | None = None) -> torch.device:
    """``name`` if given (``"cpu"``, ``"cuda"``, ``"cuda:1"``), else CUDA when present, else CPU.

    Raises:
        UserError: an unknown device name or a CUDA/MPS device this machine lacks (one line,
            exit code 2 under :func:`fractalkit.cli.run`).
    """
    return check_device(None, name)


def autocast(device: torch.device, enabled: bool):
    """bf16 autocast on ``device`` when ``enabled`` (a no-op context otherwise)."""
    return torch.autocast(device.type, dtype=torch.bfloat16, enabled=enabled)


def to_pil(image: Tensor):
    """uint8/int ``[3, H, W]`` to a PIL RGB image."""
    from PIL import Image

    arr = image.detach().to("cpu", torch.uint8).permute(1, 2, 0).numpy()
    return Image.fromarray(np.ascontiguousarray(arr), "RGB")


def make_grid(images: Tensor, nrow: int = 8, pad: int = 2, scale: int = 1, fill: int = 255) -> Tensor:
    """Tile ``[N, 3, H, W]`` integer images into one uint8 ``[3, H', W']`` grid.

    Args:
        images: values in [0, 255].
        nrow: images per row.
        pad: pixels between images (filled with ``fill``).
        scale: nearest-neighbour upscaling factor (small images are easier to see larger).
        fill: padding value.
    """
    images = images.detach().to("cpu", torch.uint8)
    if scale > 1:
        images = images.repeat_interleave(scale, -1).repeat_interleave(scale, -2)
    n, c, h, w = images.shape
    ncol = min(nrow, max(n, 1))
    rows = (n + ncol - 1) // ncol
    grid = torch.full((c, rows * (h + pad) + pad, ncol * (w + pad) + pad), fill, dtype=torch.uint8)
    for i in range(n):
        r, col = divmod(i, ncol)
        top, left = pad + r * (h + pad), pad + col * (w + pad)
        grid[:, top : top + h, left : left + w] = images[i]
    return grid


def save_grid(images: Tensor, path: str | os.PathLike, **kwargs) -> Path:
    """Save :func:`make_grid` of ``images`` as a PNG; returns the path."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    to_pil(make_grid(images, **kwargs)).save(path)
    return path


def region_mask(name: str, size: int) -> Tensor:
    """A named region as a bool ``[size, size]`` mask, True where pixels are *unknown*.

    Args:
        name: one of :data:`REGIONS`: ``center`` (inpainting the middle half), ``left-half`` /
            ``right-half`` / ``top-half`` / ``bottom-half`` (outpainting), ``border`` (the outer
            eighth on each side: uncropping), ``outside-center`` (everything but the middle
            half: uncropping a small crop).
        size: image side.
    """
    m = torch.zeros(size, size, dtype=torch.bool)
    q, h = size // 4, size // 2
    if name == "center":
        m[q : size - q, q : size - q] = True
    elif name == "left-half":
        m[:, :h] = True
    elif name == "right-half":
        m[:, h:] = True
    elif name == "top-half":
        m[:h] = True
    elif name == "bottom-half":
        m[h:] = True
    elif name == "border":
        e = max(1, size // 8)
        m[:] = True
        m[e : size - e, e : size - e] = False
    elif name == "outside-center":
        m[:] = True
        m[q : size - q, q : size - q] = False
    else:
        raise ValueError(f"region: unknown name {name!r}; expected a PNG mask file or one of {REGIONS}")
    return m


def load_mask(spec: str, size: int) -> Tensor:
    """A mask from a region name or a PNG file (white = unknown), resized to ``size``.

    Returns:
        bool ``[size, size]``, True where pixels are unknown.

    Raises:
        FileNotFoundError: ``spec`` looks like a path but there is no such file.
        ValueError: unknown region name.
    """
    if spec in REGIONS:
        return region_mask(spec, size)
    path = Path(spec)
    if path.suffix.lower() in (".png", ".jpg", ".jpeg", ".bmp", ".gif") or path.exists():
        if not path.is_file():
            raise FileNotFoundError(f"--mask: no mask file at {path}")
        from PIL import Image

        with Image.open(path) as f:
            img = f.convert("L").resize((size, size), Image.NEAREST)
        return torch.from_numpy(np.asarray(img) >= 128)
    return region_mask(spec, size)  # raises with the list of names


def load_image(path: str | os.PathLike, size: int) -> Tensor:
    """An image file, center-cropped and resized to ``size``: uint8 ``[3, size, size]``."""
    from PIL import Image

    from fractalkit.imagenet.data import center_crop_resize

    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"--image: no image file at {path}")
    try:
        with Image.open(path) as f:
            img = f.convert("RGB")
    except Exception as err:
        raise ValueError(f"--image: {path} is not a readable image: {err}") from err
    arr = center_crop_resize(img, size, small="upsample", where=str(path))
    return torch.from_numpy(arr.copy()).permute(2, 0, 1).contiguous()


def photo(name: str, size: int) -> Tensor:
    """A scikit-image sample photograph (shipped in the wheel), center-cropped and resized."""
    import skimage.data
    from PIL import Image

    from fractalkit.data.natural import PHOTOS
    from fractalkit.imagenet.data import center_crop_resize

    if name not in PHOTOS:
        raise ValueError(f"--photo: expected one of {PHOTOS}, got {name!r}")
    img = Image.fromarray(np.asarray(getattr(skimage.data, name)()))
    arr = center_crop_resize(img, size, small="upsample", where=f"skimage.data.{name}")
    return torch.from_numpy(arr.copy()).permute(2, 0, 1).contiguous()


def checkpoint_info(path: Path) -> dict:
    """The ``extra`` dict a checkpoint folder stores (preset, training arguments), or {}."""
    folder = resolve_checkpoint(path)  # also after an interrupted save
    if (folder / MANIFEST).is_file():
        manifest = read_json_file(folder / MANIFEST, owner="checkpoint_info", error=UserError,
                                  fix="the checkpoint is corrupt: use an older copy or train again")
        return manifest.get("extra", {}) if isinstance(manifest, dict) else {}
    return {}


def add_sampling_arguments(parser) -> None:
    """The sampling overrides :func:`options_from` reads: ``--guidance``, ``--guidance-schedule``,
    ``--temperature``, ``--filter`` and ``--steps`` (all default to the preset's settings)."""
    parser.add_argument("--guidance", type=non_negative_float, default=None,
                        help="classifier-free guidance scale (1: none)")
    parser.add_argument("--guidance-schedule", choices=["constant", "linear"], default=None)
    parser.add_argument("--temperature", type=positive_float, default=None, help="logits are divided by this")
    parser.add_argument("--filter", type=probability, default=None, help="low-probability filter threshold (0: off)")
    parser.add_argument("--steps", type=steps_list, default=False,
                        help="steps per level, e.g. 64,16 ('exact' = one child per step)")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")


def options_from(args, info: dict) -> SampleOptions:
    """The preset's published settings with the command line's overrides."""
    preset = PRESETS.get(info.get("preset", ""))
    base = preset.sampling if preset is not None else SampleOptions()
    over = {}
    if args.guidance is not None:
        over["guidance"] = args.guidance
    if args.guidance_schedule is not None:
        over["guidance_schedule"] = args.guidance_schedule
    if args.temperature is not None:
        over["temperature"] = args.temperature
    if args.filter is not None:
        over["filter_threshold"] = args.filter
    if args.steps is not False:  # False: not given; None: exact
        over["steps"] = args.steps
    return SampleOptions.make(base, **over)


def check_classes(classes, model, info: dict) -> None:
    """Refuse ``--classes`` a checkpoint cannot honour: an unconditional model, a model trained
    without labels (its class embeddings never learned anything), or ids out of range."""
    if classes is None:
        return
    if model.num_classes == 0:
        raise UserError("--classes: this model is unconditional (0 classes); drop --classes")
    if info.get("conditional") is False:
        raise UserError(
            "--classes: this checkpoint was trained without labels (unconditional run), so its "
            "class embeddings are untrained; drop --classes"
        )
    if min(classes) < 0 or max(classes) >= model.num_classes:
        raise UserError(f"--classes: ids must lie in [0, {model.num_classes}), got {list(classes)}")


class ProgressBar:
    """A tqdm bar over the top-level sampling steps of every batch, fed by the library's
    progress callback (:attr:`fractalkit.SampleOptions.callback`).

    Args:
        batches: how many ``sample``/``complete`` calls will report.
        enabled: False for no bar (``--no-progress``).
        then: another callback to call with each :class:`fractalkit.Progress` (e.g. frames).
    """

    def __init__(self, batches: int, enabled: bool = True, then=None, desc: str = "sampling") -> None:
        from tqdm import tqdm

        self.batches, self.then = batches, then
        self.bar = tqdm(total=None, unit="step", desc=desc, disable=not enabled, dynamic_ncols=True)

    def __call__(self, progress) -> None:
        """Advance by one top-level step (the total is known from the first report)."""
        if self.bar.total is None:
            self.bar.total = progress.num_steps * self.batches
            self.bar.refresh()
        self.bar.update(1)
        if self.then is not None:
            self.then(progress)

    def close(self) -> None:
        """Finish the bar."""
        self.bar.close()
