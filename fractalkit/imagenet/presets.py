"""Named model presets: the paper's ImageNet configurations and small CPU-sized ones.

The five paper presets are derived from their records in :mod:`fractalkit.imagenet.models`
(architecture, published sampling settings, training schedule); the small presets are ours.

A :class:`Preset` bundles three things a user needs to reproduce a configuration: the model
(a :meth:`fractalkit.Fractal.from_config` dict), the published sampling settings (a
:class:`fractalkit.SampleOptions`) and the training hyper-parameters (:class:`TrainingRecipe`).
:data:`PRESETS` is the one registry; command lines use its keys as ``choices``.

Temperatures: fractalkit *divides* logits by the temperature, while the original FractalGen
multiplies them by its "temperature"; a published 1.02 is therefore ``1 / 1.02`` here.

Example:
    >>> from fractalkit.imagenet.presets import PRESETS, build_preset
    >>> sorted(PRESETS)[:2]
    ['fractalar-in64', 'fractalmar-base-in256']
    >>> model = build_preset("tiny-in32")
    >>> model.event_shape
    (3, 32, 32)
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

from fractalkit.fractal import Fractal
from fractalkit.imagenet.models import (
    IMAGENET_MEAN,
    IMAGENET_STD,
    PAPER_MODELS,
    PaperModel,
    imagenet_config,
)
from fractalkit.protocol import SampleOptions

__all__ = [
    "IMAGENET_MEAN",
    "IMAGENET_STD",
    "PRESETS",
    "Preset",
    "TrainingRecipe",
    "build_preset",
    "get_preset",
    "transformer_block_parameters",
]

@dataclass(frozen=True)
class TrainingRecipe:
    """Training hyper-parameters of a preset (the paper's Appendix A for the paper presets).

    Attributes:
        base_lr: learning rate per 256 images; the lr used is ``base_lr * batch_size / 256``.
        batch_size: global batch size (images per optimizer step, over all processes).
        epochs: training epochs.
        warmup_epochs: linear warm-up epochs before the cosine decay.
        weight_decay: AdamW weight decay.
        betas: AdamW momenta.
        grad_clip: gradient-norm clipping threshold (0 disables clipping).
        min_lr: the cosine schedule's floor (absolute lr).
        ema_decay: decay of the optional exponential moving average of the weights.
    """

    base_lr: float = 5e-5
    batch_size: int = 2048
    epochs: int = 800
    warmup_epochs: float = 40
    weight_decay: float = 0.05
    betas: tuple[float, float] = (0.9, 0.95)
    grad_clip: float = 3.0
    min_lr: float = 0.0
    ema_decay: float = 0.9999

    def lr(self, batch_size: int | None = None) -> float:
        """The peak learning rate for ``batch_size`` images per step (default: the recipe's).

        Args:
            batch_size: global batch size, or None for :attr:`batch_size`.

        Returns:
            ``base_lr * batch_size / 256``.
        """
        b = self.batch_size if batch_size is None else batch_size
        if not isinstance(b, int) or b < 1:
            raise ValueError(f"TrainingRecipe.lr: batch_size must be a positive int, got {b!r}")
        return self.base_lr * b / 256


@dataclass(frozen=True)
class Preset:
    """A named configuration: model, published sampling settings and training recipe.

    Attributes:
        name: registry key, e.g. ``"fractalmar-in64"``.
        description: one line for ``--help`` texts and the docs.
        config: the model, in :meth:`fractalkit.Fractal.from_config` format.
        sampling: the sampling settings published with the original checkpoints (fractalkit's
            temperature convention), or sensible defaults for the small presets.
        training: the training hyper-parameters.
        image_size: H = W of the images the model takes.
        notes: provenance of the numbers (which are published, which are ours).
    """

    name: str
    description: str
    config: dict[str, Any]
    sampling: SampleOptions
    training: TrainingRecipe
    image_size: int
    notes: str = ""

    @property
    def num_classes(self) -> int:
        """K, the number of class labels the model takes (0: unconditional)."""
        return int(self.config["num_classes"])

    def build(self, **overrides: Any) -> Fractal:
        """A freshly initialised :class:`fractalkit.Fractal`; see :func:`build_preset`."""
        return Fractal.from_config(_override(self.config, overrides, self.name))


# ---- building blocks ------------------------------------------------------------------------


def _override(config: dict[str, Any], overrides: dict[str, Any], name: str) -> dict[str, Any]:
    """``config`` with top-level keys (``num_classes``, ``label_drop``, ...) and the per-level
    ``checkpointing`` flag replaced."""
    import copy

    out = copy.deepcopy(config)
    allowed = {"num_classes", "label_drop", "value_mean", "value_std", "checkpointing"}
    unknown = sorted(set(overrides) - allowed)
    if unknown:
        raise TypeError(
            f"build_preset({name!r}): unknown override(s) {unknown}; allowed are {sorted(allowed)}"
        )
    for key, value in overrides.items():
        if key == "checkpointing":
            for entry in out["levels"]:
                entry["level"]["checkpointing"] = bool(value)
        else:
            out[key] = value
    return out


# ---- the registry -----------------------------------------------------------------------------


def _paper_preset(model: PaperModel) -> Preset:
    """The preset of a paper model: everything read from its one record."""
    assumed = model.sampling.assumed
    notes = _SAMPLING_NOTE
    if assumed:
        notes += (f" Not published for {model.title}: {', '.join(assumed)} (the other 256x256 "
                  "models' values are used; see fractalkit.imagenet.models).")
    return Preset(
        name=model.name,
        description=model.description,
        config=model.config(),
        sampling=model.sampling.options(),
        training=TrainingRecipe(batch_size=model.training.batch_size, epochs=model.training.epochs),
        image_size=model.image_size,
        notes=notes,
    )


_SAMPLING_NOTE = (
    "Sampling settings as published with the original checkpoints (temperature converted to "
    "fractalkit's divide convention); each figure's source is in "
    "fractalkit.imagenet.models.PAPER_MODELS[name].sampling.sources."
)

PRESETS: dict[str, Preset] = {
    **{name: _paper_preset(model) for name, model in PAPER_MODELS.items()},
    # Small presets for CPUs: the paper's shape (MAR levels, neighbours, red weight, ImageNet
    # normalisation) scaled down. Their recipes are ours: a higher base lr suits short runs.
    "tiny-in32": Preset(
        name="tiny-in32",
        description="Tiny CPU preset, 32x32: MAR levels 32->4->1 (widths 128, 64), RGB leaf 32; 0.9M",
        config=imagenet_config((32, 4, 1), "mar", (128, 64, 32), (3, 1, 1), (4, 4, 4)),
        sampling=SampleOptions(
            guidance=2.0, guidance_schedule="linear", temperature=1.0, filter_threshold=1e-4, steps=(16, 8)
        ),
        training=TrainingRecipe(
            base_lr=1.2e-2, batch_size=32, epochs=2, warmup_epochs=0.25, grad_clip=3.0, ema_decay=0.999
        ),
        image_size=32,
        notes="Ours, not from the paper: sized to train for minutes on a laptop CPU.",
    ),
    "small-in64": Preset(
        name="small-in64",
        description="Small CPU preset, 64x64: MAR levels 64->4->1 (widths 256, 64), RGB leaf 32; 3.7M",
        config=imagenet_config((64, 4, 1), "mar", (256, 64, 32), (4, 2, 1), (8, 4, 4)),
        sampling=SampleOptions(
            guidance=2.0, guidance_schedule="linear", temperature=1.0, filter_threshold=1e-4, steps=(32, 8)
        ),
        training=TrainingRecipe(
            base_lr=2e-3, batch_size=32, epochs=20, warmup_epochs=0.5, grad_clip=3.0, ema_decay=0.999
        ),
        image_size=64,
        notes="Ours, not from the paper: a few million parameters, trainable on a CPU in an hour.",
    ),
}


def get_preset(name: str) -> Preset:
    """The preset registered as ``name``.

    Args:
        name: a key of :data:`PRESETS`.

    Returns:
        The :class:`Preset`.

    Raises:
        ValueError: unknown name (the message lists the known ones).
    """
    if not isinstance(name, str) or name not in PRESETS:
        raise ValueError(f"unknown preset {name!r}; known presets are {sorted(PRESETS)}")
    return PRESETS[name]


def build_preset(name: str, **overrides: Any) -> Fractal:
    """Build the model of preset ``name``, freshly initialised, on the current default device.

    Build under ``with torch.device("meta"):`` to count parameters without allocating them.

    Args:
        name: a key of :data:`PRESETS`.
        **overrides: ``num_classes`` (e.g. 200 for Tiny ImageNet, 0 for unconditional),
            ``label_drop``, ``value_mean``, ``value_std``, ``checkpointing`` (every level).

    Returns:
        A :class:`fractalkit.Fractal`.

    Raises:
        ValueError: unknown preset name.
        TypeError: unknown override name.
    """
    return get_preset(name).build(**overrides)


def transformer_block_parameters(model: Fractal) -> list[int]:
    """Parameters in each level's transformer blocks, top first, then the leaf's.

    This is the paper's Table 1 convention: blocks only (no embeddings, norms outside blocks,
    position embeddings, guiding-pixel leaves or output biases).

    Args:
        model: any :class:`fractalkit.Fractal` (works on the meta device).

    Returns:
        One count per generator, top level first, the leaf last.
    """
    counts = []
    for gen in model.levels:
        backbone = getattr(gen, "backbone", None)
        if backbone is None:
            counts.append(0)
            continue
        counts.append(sum(p.numel() for p in backbone.blocks.parameters()))
    return counts


def _check_registry() -> None:
    """Keys must match the presets' names (guards against copy-paste slips)."""
    for key, preset in PRESETS.items():
        if key != preset.name:
            raise RuntimeError(f"presets: registry key {key!r} holds preset {preset.name!r}")
        if not math.isclose(preset.training.lr(256), preset.training.base_lr):
            raise RuntimeError(f"presets: {key!r} has an inconsistent learning rate")


_check_registry()
