"""The five ImageNet paper models of FractalGen, each described once.

One :class:`PaperModel` record per released model holds everything fractalkit knows about it:
the architecture (levels, widths, blocks, heads), the parameter count of the released state
dict, the sampling settings published with it (each figure with its source), the address and
size of the released file, and the training recipe. Everything else is derived from these
records: the presets (:data:`fractalkit.imagenet.presets.PRESETS`), the converter's
expectations (:data:`fractalkit.imagenet.convert.RELEASED`) and the releases that
``Fractal.from_pretrained`` can fetch by name (registered with :func:`fractalkit.hub.register_release`
by :mod:`fractalkit.imagenet`).

The ImageNet constants (per-channel mean and std, the red-channel loss weight, the guiding-pixel
leaf's size) live here too, and only here.

Sources (the original repository, LTH14/fractalgen, commit c7d0990):

- ``README``: its README.md. Section "Evaluation" gives one sampling command per released model
  for FractalAR-64, FractalMAR-64 and FractalMAR-H-256; the sentence after them gives the
  FID-optimal guidance of FractalMAR-B-256 and FractalMAR-L-256; section "Training" gives the
  settings FractalMAR-L-256 is evaluated with during training. The model table gives the
  download addresses.
- ``util/download.py`` and ``models/fractalgen.py``: the download script and the model presets
  (head counts, which are not stored in the weights).
- ``code``: the original's sampler (the 1e-4 low-probability filter is its fixed default).
- ``assumed``: not published for that model; the value of the other 256x256 models is used and
  labelled so.

Temperatures: the original *multiplies* logits by its ``temperature``, fractalkit divides them,
so the original's T is fractalkit's ``1 / T`` (:meth:`PublishedSampling.options` converts).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any

from fractalkit.fractal import FORMAT, FORMAT_VERSION
from fractalkit.leaves.rgb import RGBLeafConfig
from fractalkit.levels.ar import ARLevelConfig
from fractalkit.levels.mar import MARLevelConfig
from fractalkit.levels.summary import SummaryConfig
from fractalkit.partition import ImagePatches
from fractalkit.protocol import SampleOptions

__all__ = [
    "GUIDE_DEPTH",
    "GUIDE_HEADS",
    "GUIDE_WIDTH",
    "IMAGENET_CLASSES",
    "IMAGENET_MEAN",
    "IMAGENET_STD",
    "PAPER_MODELS",
    "PAPER_SUMMARY_LEAF",
    "RED_WEIGHT",
    "PaperModel",
    "PublishedSampling",
    "Release",
    "TrainingSettings",
    "imagenet_config",
    "paper_model",
]

#: ImageNet per-channel mean (R, G, B) of values scaled to [0, 1], as the original normalises.
IMAGENET_MEAN = (0.485, 0.456, 0.406)
#: ImageNet per-channel standard deviation (R, G, B) of values scaled to [0, 1].
IMAGENET_STD = (0.229, 0.224, 0.225)
#: Number of ImageNet-1k classes the released models are conditioned on.
IMAGENET_CLASSES = 1000
#: The paper's red-channel loss weight for RGB leaves and guiding pixels (R, G, B; training only).
RED_WEIGHT = (5.0, 1.0, 1.0)
#: The original's guiding-pixel leaf: ``PixelLoss(width=128, depth=3, num_heads=4)``.
GUIDE_WIDTH, GUIDE_DEPTH, GUIDE_HEADS = 128, 3, 4
#: The paper's summary leaf (the guiding pixel's): an RGB leaf, width 128, 3 blocks, 4 heads, the
#: red channel's loss weighted 5, 256 values. The levels below the top of the 256x256 models use it.
PAPER_SUMMARY_LEAF = RGBLeafConfig(
    width=GUIDE_WIDTH, depth=GUIDE_DEPTH, heads=GUIDE_HEADS, channel_weights=RED_WEIGHT
)

#: Quoted lines of the original README (LTH14/fractalgen, README.md) each published figure comes from.
_AR64_EVAL = (
    'README, "Evaluate pre-trained FractalAR on ImageNet 64x64 class-conditional generation": '
    "`--num_iter_list 64,16 --cfg 11.0 --cfg_schedule linear --temperature 1.03`"
)
_MAR64_EVAL = (
    'README, "Evaluate pre-trained FractalMAR on ImageNet 64x64 class-conditional generation": '
    "`--num_iter_list 64,16 --cfg 6.5 --cfg_schedule linear --temperature 1.02`"
)
_HUGE_EVAL = (
    'README, "Evaluate pre-trained FractalMAR-Huge on ImageNet 256x256 class-conditional '
    'generation": `--num_iter_list 64,16,16 --cfg 19.0 --cfg_schedule linear --temperature 1.1`'
)
_FID_NOTE = (
    'README, after the evaluation commands: "For ImageNet 256x256, the optimal classifier-free '
    "guidance values `--cfg` that achieve the best FID are `29.0` for FractalMAR-Base and "
    '`21.0` for FractalMAR-Large."'
)
_LARGE_TRAIN = (
    'README, "Example script for training FractalMAR-L on ImageNet 256x256" (its online '
    "evaluation): `--num_iter_list 64,16,16 --cfg 21.0 --cfg_schedule linear --temperature 1.1`"
)
_FILTER = "code: the original sampler's fixed low-probability filter, 1e-4"
_ASSUMED_256 = (
    "assumed: the README publishes no such setting for FractalMAR-B-256; the value FractalMAR-L-256 "
    "and FractalMAR-H-256 are published with is used"
)


@dataclass(frozen=True)
class PublishedSampling:
    """Sampling settings a released model is published with, in the original's terms.

    Attributes:
        guidance: classifier-free guidance scale (the original's ``--cfg``).
        schedule: the guidance schedule (``--cfg_schedule``), ``"linear"`` or ``"constant"``.
        temperature: the original's temperature, which *multiplies* logits (``--temperature``).
        steps: MAR decoding steps per level, top first (``--num_iter_list``), or None for AR
            levels (one child per step).
        filter_threshold: the low-probability filter (values below it cannot be boosted).
        sources: where each figure comes from, by field name (quoted README lines, or
            ``"assumed: ..."`` for a setting the original does not publish for this model).
    """

    guidance: float
    schedule: str
    temperature: float
    steps: tuple[int, ...] | None
    filter_threshold: float
    sources: MappingProxyType = field(default_factory=lambda: MappingProxyType({}))

    @property
    def assumed(self) -> tuple[str, ...]:
        """The fields whose values are not published for this model (their source says why)."""
        return tuple(k for k, v in self.sources.items() if v.startswith("assumed"))

    def as_dict(self) -> dict[str, Any]:
        """The settings as :class:`fractalkit.SampleOptions` fields (fractalkit's temperature)."""
        return {
            "guidance": self.guidance,
            "guidance_schedule": self.schedule,
            # The original multiplies logits by its temperature; fractalkit divides: T -> 1 / T.
            "temperature": 1.0 / self.temperature,
            "filter_threshold": self.filter_threshold,
            "steps": self.steps,
        }

    def options(self, **overrides: Any) -> SampleOptions:
        """A :class:`fractalkit.SampleOptions` with these settings (temperature ``1 / T``).

        Args:
            overrides: fields of :class:`fractalkit.SampleOptions` to replace (e.g. ``callback``).
        """
        return SampleOptions.make(None, **{**self.as_dict(), **overrides})


def _published(cfg: float, t: float, num_iter: tuple[int, ...] | None,
               **sources: str) -> PublishedSampling:
    return PublishedSampling(
        guidance=cfg, schedule="linear", temperature=t, steps=num_iter,
        filter_threshold=1e-4, sources=MappingProxyType({**sources, "filter_threshold": _FILTER}),
    )


@dataclass(frozen=True)
class Release:
    """Where the original checkpoint of a paper model is published.

    Attributes:
        url: the download address (README's model table; ``util/download.py``).
        size_mb: the file's approximate size in MB (10^6 bytes), for messages. The original's
            download table counts MiB (2^20 bytes: FractalMAR-64's "1650" is this 1,730 MB,
            1.73 GB); each file holds one float32 state dict, 4 bytes per parameter
            (:attr:`PaperModel.num_params`) plus about 2 MB.
    """

    url: str
    size_mb: float


def _dropbox(file_id: str, rlkey: str, st: str) -> str:
    return f"https://www.dropbox.com/scl/fi/{file_id}/checkpoint-last.pth?rlkey={rlkey}&st={st}&dl=0"


@dataclass(frozen=True)
class TrainingSettings:
    """The paper's training schedule of a model (Appendix A): global batch size and epochs."""

    batch_size: int
    epochs: int


@dataclass(frozen=True)
class PaperModel:
    """One released ImageNet FractalGen model: architecture, count, settings, release.

    Shape letters: sizes are block sides in pixels, top first (``(64, 4, 1)``: 64x64 images ->
    4x4 patches -> pixels); widths, depths and heads list each level top first, then the RGB
    leaf's.

    Attributes:
        name: fractalkit's name (preset and release), e.g. ``"fractalmar-in64"``.
        title: the paper's name, e.g. ``"FractalMAR-64"``.
        kind: ``"ar"`` (causal levels, LLaMA blocks, 1 condition token) or ``"mar"`` (masked
            levels, ViT blocks, 5 condition tokens).
        sizes: block side per level then 1 (the pixel).
        widths: D per level, then the leaf's.
        depths: transformer blocks per level, then the leaf's.
        heads: attention heads per level, then the leaf's (from the original's presets: head
            counts are not stored in the weights).
        guiding_pixel: whether the levels below the top predict their block's mean colour first.
        num_params: parameters of the released state dict (and of the converted model).
        sampling: the published sampling settings, each figure with its source.
        release: the download address and size of the original checkpoint.
        training: the paper's batch size and epochs.
    """

    name: str
    title: str
    kind: str
    sizes: tuple[int, ...]
    widths: tuple[int, ...]
    depths: tuple[int, ...]
    heads: tuple[int, ...]
    guiding_pixel: bool
    num_params: int
    sampling: PublishedSampling
    release: Release
    training: TrainingSettings

    @property
    def kinds(self) -> tuple[str, ...]:
        """The generator type of each level, top first (the converter reads these off the shapes)."""
        return (self.kind,) * (len(self.sizes) - 1)

    @property
    def image_size(self) -> int:
        """H = W of the images the model takes."""
        return self.sizes[0]

    @property
    def description(self) -> str:
        """One line for ``--help`` texts and the docs."""
        levels = "->".join(str(s) for s in self.sizes)
        if self.kind == "ar":
            what = f"AR levels {levels} (LLaMA blocks), RGB leaf"
        elif self.guiding_pixel:
            what = f"MAR levels {levels}, guiding pixel"
        else:
            what = f"MAR levels {levels}, 5 condition tokens, RGB leaf"
        short = self.title.replace("-Base", "-B").replace("-Large", "-L").replace("-Huge", "-H")
        short = short.replace("-256", "").replace("-64", "")
        side = self.image_size
        return f"{short}, ImageNet {side}x{side}: {what}; {self.num_params / 1e6:.1f}M"

    def config(self) -> dict[str, Any]:
        """The model as a :meth:`fractalkit.Fractal.from_config` dict (1000 classes)."""
        return imagenet_config(
            self.sizes, self.kind, self.widths, self.depths, self.heads,
            guiding_pixel=self.guiding_pixel,
        )


# ---- configs -------------------------------------------------------------------------------------


def _levels(
    sizes: Sequence[int],
    kind: str,
    widths: Sequence[int],
    depths: Sequence[int],
    heads: Sequence[int],
    *,
    guiding_pixel: bool = False,
) -> list[dict[str, Any]]:
    """Level entries for ``sizes`` (e.g. ``(64, 4, 1)``: 64x64 images -> 4x4 patches -> pixels)."""
    out = []
    for i in range(len(sizes) - 1):
        if kind == "ar":
            level = ARLevelConfig(width=widths[i], depth=depths[i], heads=heads[i], block="llama", rope=True)
        else:
            level = MARLevelConfig(
                width=widths[i],
                depth=depths[i],
                heads=heads[i],
                block="vit",
                neighbours=True,
                # As the original (and the converter): the summary token (guiding pixel) sees
                # the continuous block mean when scoring; "rounded" keeps log_prob a strict bound.
                summary=SummaryConfig(PAPER_SUMMARY_LEAF, input="continuous")
                if guiding_pixel and i > 0
                else None,
            )
        part = ImagePatches(sizes[i], sizes[i + 1], channels=3)
        out.append({"partitioner": part.config(), "level": level.to_dict()})
    return out


def imagenet_config(
    sizes: Sequence[int],
    kind: str,
    widths: Sequence[int],
    depths: Sequence[int],
    heads: Sequence[int],
    *,
    guiding_pixel: bool = False,
    num_classes: int = IMAGENET_CLASSES,
    imagenet_norm: bool = True,
    label_drop: float = 0.1,
) -> dict[str, Any]:
    """A ``Fractal.from_config`` dict of the paper's shape: image patches, RGB leaf, red weight 5.

    Args:
        sizes: block side per level then 1, e.g. ``(64, 4, 1)``.
        kind: ``"ar"`` (LLaMA blocks, rotary) or ``"mar"`` (ViT blocks, 5 condition tokens).
        widths, depths, heads: per level, then the leaf's (``len(sizes)`` entries each).
        guiding_pixel: MAR levels below the top predict their block's mean colour first.
        num_classes: K class labels (0: unconditional).
        imagenet_norm: normalise values with :data:`IMAGENET_MEAN` / :data:`IMAGENET_STD`
            (else mean 0.5, std 0.5).
        label_drop: condition dropout probability during training.

    Returns:
        A JSON-serialisable config dict.
    """
    n = len(sizes) - 1
    leaf = RGBLeafConfig(width=widths[n], depth=depths[n], heads=heads[n], channel_weights=RED_WEIGHT)
    return {
        "format": FORMAT,
        "version": FORMAT_VERSION,
        "levels": _levels(sizes, kind, widths[:n], depths[:n], heads[:n], guiding_pixel=guiding_pixel),
        "leaf": leaf.to_dict(),
        "num_classes": num_classes,
        "label_drop": label_drop,
        "value_mean": list(IMAGENET_MEAN) if imagenet_norm else 0.5,
        "value_std": list(IMAGENET_STD) if imagenet_norm else 0.5,
    }


# ---- the records ----------------------------------------------------------------------------------


PAPER_MODELS: MappingProxyType[str, PaperModel] = MappingProxyType({
    m.name: m
    for m in [
        PaperModel(
            name="fractalar-in64", title="FractalAR-64", kind="ar", sizes=(64, 4, 1),
            widths=(1024, 512, 128), depths=(32, 8, 3), heads=(16, 8, 4), guiding_pixel=False,
            num_params=442_068_224,
            # AR levels decode one child per step: the command's --num_iter_list is unused.
            sampling=_published(11.0, 1.03, None, guidance=_AR64_EVAL, schedule=_AR64_EVAL,
                                temperature=_AR64_EVAL),
            release=Release(_dropbox("n25tbij7aqkwo1ypqhz72", "2czevgex3ocg2ae8zde3xpb3f", "mj0subup"), 1770),
            training=TrainingSettings(batch_size=2048, epochs=800),
        ),
        PaperModel(
            name="fractalmar-in64", title="FractalMAR-64", kind="mar", sizes=(64, 4, 1),
            widths=(1024, 512, 128), depths=(32, 8, 3), heads=(16, 8, 4), guiding_pixel=False,
            num_params=431_995_648,
            sampling=_published(6.5, 1.02, (64, 16), guidance=_MAR64_EVAL, schedule=_MAR64_EVAL,
                                temperature=_MAR64_EVAL, steps=_MAR64_EVAL),
            release=Release(_dropbox("lh7fmv48pusujd6m4kcdn", "huihey61ok32h28o3tbbq6ek9", "fxtoawba"), 1730),
            training=TrainingSettings(batch_size=2048, epochs=800),
        ),
        PaperModel(
            name="fractalmar-base-in256", title="FractalMAR-Base-256", kind="mar", sizes=(256, 16, 4, 1),
            widths=(768, 384, 192, 64), depths=(24, 6, 3, 1), heads=(12, 6, 3, 4), guiding_pixel=True,
            num_params=186_300_224,
            sampling=_published(29.0, 1.1, (64, 16, 16), guidance=_FID_NOTE, schedule=_ASSUMED_256,
                                temperature=_ASSUMED_256, steps=_ASSUMED_256),
            release=Release(_dropbox("zrdm7853ih4tcv98wmzhe", "htq9yuzovet7d6ioa64s1xxd0", "4c4d93vs"), 747),
            training=TrainingSettings(batch_size=1024, epochs=800),
        ),
        PaperModel(
            name="fractalmar-large-in256", title="FractalMAR-Large-256", kind="mar", sizes=(256, 16, 4, 1),
            widths=(1024, 512, 256, 64), depths=(32, 8, 4, 1), heads=(16, 8, 4, 4), guiding_pixel=True,
            num_params=437_000_064,
            sampling=_published(21.0, 1.1, (64, 16, 16), guidance=f"{_FID_NOTE}; {_LARGE_TRAIN}",
                                schedule=_LARGE_TRAIN, temperature=_LARGE_TRAIN, steps=_LARGE_TRAIN),
            release=Release(_dropbox("y1k05xx7ry8521ckxkqgt", "wolq4krdq7z7eyjnaw5ndhq6k", "vjeu5uzo"), 1750),
            training=TrainingSettings(batch_size=1024, epochs=800),
        ),
        PaperModel(
            name="fractalmar-huge-in256", title="FractalMAR-Huge-256", kind="mar", sizes=(256, 16, 4, 1),
            widths=(1280, 640, 320, 64), depths=(40, 10, 5, 1), heads=(16, 8, 4, 4), guiding_pixel=True,
            num_params=849_586_240,
            sampling=_published(19.0, 1.1, (64, 16, 16), guidance=_HUGE_EVAL, schedule=_HUGE_EVAL,
                                temperature=_HUGE_EVAL, steps=_HUGE_EVAL),
            release=Release(_dropbox("t2rru8xr6wm23yvxskpww", "dn9ss9zw4zsnckf6bat9hss6h", "y7w921zo"), 3401),
            training=TrainingSettings(batch_size=1024, epochs=600),
        ),
    ]
})


def paper_model(name: str) -> PaperModel:
    """The record of the paper model ``name``.

    Raises:
        KeyError: not one of :data:`PAPER_MODELS` (the message lists them).
    """
    if name not in PAPER_MODELS:
        raise KeyError(f"no paper model {name!r}; the paper models are {sorted(PAPER_MODELS)}")
    return PAPER_MODELS[name]
