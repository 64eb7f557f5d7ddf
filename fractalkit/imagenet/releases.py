"""The paper models' releases, registered with the generic Hub code (:mod:`fractalkit.hub`).

Each :class:`fractalkit.hub.Release` is derived from the model's one record
(:data:`fractalkit.imagenet.models.PAPER_MODELS`): its address and size, parameter count, title
and published sampling settings; it carries the converter (:class:`FractalGenConverter`, the
original ``.pth`` to a :class:`fractalkit.Fractal`) and the check against the preset
(:class:`PresetShapes`). :mod:`fractalkit.imagenet` registers them when ``fractalkit`` is
imported, so ``Fractal.from_pretrained("fractalmar-in64")`` finds them.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from fractalkit.fractal import Fractal
from fractalkit.hub import Release, register_release
from fractalkit.imagenet.models import PAPER_MODELS, PaperModel
from fractalkit.protocol import SampleOptions

__all__ = [
    "FractalGenConverter",
    "PresetShapes",
    "fractalgen_release",
    "paper_release",
    "register_paper_releases",
]


@dataclass(frozen=True)
class FractalGenConverter:
    """A release's ``convert`` callable: an original FractalGen checkpoint to a fractalkit model.

    A frozen dataclass (not a closure) so that two registrations of the same release compare
    equal. The model is built by :func:`fractalkit.imagenet.convert.load_fractalgen` (a
    :class:`fractalkit.Fractal`, whatever ``cls`` asks for).

    Attributes:
        preset: a paper model's name the file must have the architecture of, or None.
        heads: attention heads per level then the leaf's, for a non-paper architecture.
    """

    preset: str | None = None
    heads: tuple[int, ...] | None = None

    def __call__(self, path: Path, cls: type) -> Any:
        """The model in the original checkpoint at ``path``.

        Raises:
            ValueError: (:class:`~fractalkit.imagenet.convert.FractalGenFormatError`) the file
                is not a FractalGen checkpoint of this architecture.
        """
        # Imported on use: ``python -m fractalkit.imagenet.convert`` must find it not yet imported.
        from fractalkit.imagenet import convert

        if self.preset is not None:
            return convert.load_fractalgen(path, preset=self.preset)
        return convert.load_fractalgen(path, heads=self.heads)


@dataclass(frozen=True)
class PresetShapes:
    """A release's ``verify`` callable: every tensor's name and shape equal the paper model's.

    Attributes:
        preset: the paper model's name.
    """

    preset: str

    def __call__(self, model: Any) -> None:
        """Raises ValueError naming the first tensors that differ from the preset's."""
        with torch.device("meta"):  # shapes only: no memory for the preset's weights
            want = Fractal.from_config(PAPER_MODELS[self.preset].config()).state_dict()
        got = model.state_dict()
        bad = sorted(k for k in set(want) | set(got)
                     if k not in want or k not in got or want[k].shape != got[k].shape)
        if bad:
            raise ValueError(f"does not match the {self.preset} preset: {bad[:5]}")


def fractalgen_release(
    name: str,
    url: str,
    size_bytes: int,
    *,
    preset: str | None = None,
    heads: Sequence[int] | None = None,
    num_params: int | None = None,
    title: str = "",
    sampling: SampleOptions | None = None,
    published: bool = False,
    notes: str = "",
    size_tolerance: int = 0,
) -> Release:
    """A :class:`fractalkit.hub.Release` of an original FractalGen checkpoint (e.g. a mirror).

    Args:
        name: the name users pass to ``Fractal.from_pretrained``.
        url: the address of the ``.pth`` file.
        size_bytes: its size in bytes (exact, or within ``size_tolerance`` bytes): bounds the
            download and is checked before conversion.
        preset: a paper model's name (:data:`fractalkit.imagenet.models.PAPER_MODELS`) the file
            must match, tensor by tensor.
        heads: attention heads per level then the leaf's, for another architecture.
        num_params, title, sampling, published, notes, size_tolerance: as in
            :class:`fractalkit.hub.Release`.

    Raises:
        ValueError: neither ``preset`` nor ``heads`` says how to build it, or an unknown preset.
    """
    if preset is None and heads is None:
        raise ValueError(f"fractalgen_release: {name!r} needs a preset or heads")
    if preset is not None and preset not in PAPER_MODELS:
        raise ValueError(f"fractalgen_release: unknown preset {preset!r}; known: {sorted(PAPER_MODELS)}")
    return Release(
        name=name, url=url, size_bytes=size_bytes, size_tolerance=size_tolerance,
        convert=FractalGenConverter(preset, None if heads is None else tuple(int(h) for h in heads)),
        verify=PresetShapes(preset) if preset is not None else None,
        num_params=num_params, title=title, sampling=sampling, published=published, notes=notes,
    )


def paper_release(model: PaperModel) -> Release:
    """The release of a paper model, read from its record."""
    assumed = model.sampling.assumed
    notes = "Sampling settings as published with the original (temperature 1/T: fractalkit divides)."
    if assumed:
        notes += (f" Not published for this model: {', '.join(assumed)}; the values of the other "
                  "256x256 models are used.")
    return fractalgen_release(
        model.name, model.release.url, model.release.size_bytes, preset=model.name,
        size_tolerance=model.release.size_tolerance,
        num_params=model.num_params, title=model.title, sampling=model.sampling.options(),
        published=True, notes=notes,
    )


def register_paper_releases() -> None:
    """Register the five paper models with :func:`fractalkit.hub.register_release` (idempotent)."""
    for model in PAPER_MODELS.values():
        register_release(paper_release(model))
