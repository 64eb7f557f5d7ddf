"""Load the official FractalGen checkpoints (LTH14/fractalgen, commit c7d0990) into fractalkit.

Shape letters: N images, M leaf rows (pixels), E channels (3), V values (256), D widths.

The authors released five ImageNet models (FractalAR-64, FractalMAR-64, FractalMAR-B/L/H-256) as
PyTorch pickles whose ``"model"`` entry is a state dict in the original module names. This
module reads such a file *without executing arbitrary code*, renames every tensor to fractalkit's
modules, builds the matching :class:`fractalkit.Fractal` and refuses any file with a missing,
unexpected or mis-shaped tensor (the error names it). The fractalkit model then computes what the
original computes: on the reference fixtures made with the original code
(``shared/fixtures/fractalgen``) every leaf logit agrees within 1e-5 in float32.

Loading a released checkpoint
-----------------------------
Convert once (the pickle is never opened again), load, sample with the published settings::

    fractalkit-convert-fractalgen convert fractalmar_in64.pth fractalmar-in64.safetensors

    model = Fractal.load("fractalmar-in64.safetensors").eval()
    images = model.sample(y=torch.tensor([207, 360]), options=published_options("fractalmar-in64"),
                          generator=torch.Generator().manual_seed(0))

``images`` is uint8-valued int64 ``[2, 3, 64, 64]`` (RGB). In Python the conversion is
``convert_checkpoint("fractalmar_in64.pth", "fractalmar-in64.safetensors")``, or
``load_fractalgen(path)`` to get the model without writing a file.

Sampling settings: the original versus fractalkit
-------------------------------------------------
- **Temperature.** The original *multiplies* its logits by its ``temperature``; fractalkit
  *divides* them. The published T = 1.02 is ``temperature=1/1.02`` here (both sharpen).
- **Published settings**, translated (:func:`published_options`): FractalAR-64: guidance 11.0,
  ``temperature=1/1.03``; FractalMAR-64: guidance 6.5, ``temperature=1/1.02``, ``steps=(64, 16)``;
  FractalMAR-L-256: guidance 21.0, ``temperature=1/1.1``, ``steps=(64, 16, 16)``;
  FractalMAR-H-256: guidance 19.0, ``temperature=1/1.1``, ``steps=(64, 16, 16)``;
  FractalMAR-B-256: guidance 29.0 (the README publishes only its FID-optimal guidance: T 1.1 and
  steps (64, 16, 16) are assumed, as for L and H); all with ``guidance_schedule="linear"`` and
  ``filter_threshold=1e-4``. Each figure's source is recorded in
  :data:`fractalkit.imagenet.models.PAPER_MODELS` (``.sampling.sources``).
- **Order at the leaf**, as in the original: temperature on both halves, then the filter (a value
  whose conditional probability is below 1e-4 cannot be boosted), then guidance
  ``l_u + w (l_c - l_u)``.
- **Guidance below the top level.** Only the top level runs the schedule: at each of its steps it
  sets w (linear: ``1 + (w - 1) * progress``, see
  :func:`fractalkit.sampling.schedules.guidance_at`) and every level below, including the
  guiding-pixel leaves, uses that value unchanged for everything it decides within the step (the
  original passes ``cfg_schedule="constant"`` down). Progress differs in detail: the original's
  MAR level uses the fraction of children decided after the step, counting at least one child as
  still masked, so it never reaches w; fractalkit reaches w at the last top-level step (its MAR
  levels currently measure progress as the fraction of *steps* done). Samples with the same
  settings are therefore close to, not identical with, the original's. AR levels ignore
  ``steps`` (one child per step, raster order).

Where fractalkit differs from the original on purpose
-----------------------------------------------------
- **Guiding pixel** (the 256x256 models, levels below the top): when *scoring*, the original
  feeds ``pix_proj`` the exact float mean of the normalised block; fractalkit's default feeds
  the mean rounded to an 8-bit value (the value its summary leaf scores), normalised, which keeps
  ``log_prob`` a true bound. Converted models (and the presets) set
  ``SummaryConfig(leaf, input="continuous")`` (a MAR level's ``summary``), which feeds the
  continuous mean as the original does, so their teacher-forced leaf logits match the original's (on a 4-level guiding-pixel
  model, ``benchmarks/guiding_pixel_compat.py``: largest difference 0 with the switch, 7.9e-2
  with the rounded input). Sampling is the same in both (the original also feeds the sampled
  8-bit value). The summary leaf's target is that
  rounded mean in both, except at exact .5 ties, which fractalkit rounds half to even and the
  original decides by its 0.01-scale rounding noise. The guiding pixel's likelihood is part of
  fractalkit's ``log_prob`` (a bound); the original *adds its cross-entropy to the loss*.
- **Likelihoods.** The original's evaluation forward always replaces the class by the null
  embedding (``fake_latent``), so its NLL is unconditional; ``model.log_prob(x, y)`` here is
  class-conditional, ``model.log_prob(x)`` unconditional. The original recovers 8-bit targets
  from normalised floats (``round(255 * (x * std + mean) + 0.01 * noise)``); fractalkit takes the
  integer image itself (for 8-bit input these agree exactly).
- **Training**: the original draws MAR mask ratios from numpy's global RNG; fractalkit draws
  everything from the ``torch.Generator`` passed in.

Names
-----
``generator.*`` is ``root.*``, ``next_fractal.generator.*`` is ``root.child.*`` and so on; the
leaf ``next_fractal.next_fractal.*`` (two levels) is ``root.child.child.*``; a guiding pixel's
``...generator.guiding_pixel_loss.*`` is ``...summary.leaf.*`` (the summary prefix's leaf).
Inside a level: ``patch_emb`` -> ``inputs.patch_emb.proj``, ``patch_emb_ln`` and ``cond_emb``
-> ``inputs.patch_emb_ln`` and ``inputs.cond_emb`` (the level's input network),
``pix_proj`` -> ``summary.proj``, ``pos_embed_learned`` -> ``pos_embed``, ``blocks.N`` ->
``backbone.blocks.N``, ``norm`` -> ``backbone.norm``; AR blocks' ``attention.wqkv``,
``attention.wo``, ``attention_norm``, ``ffn_norm``, ``feed_forward.w1/w2/w3`` -> ``attn.qkv``,
``attn.proj``, ``norm1``, ``norm2``, ``w1/w2/w3``; MAR and leaf blocks' ``mlp.fc1/fc2`` ->
``fc1/fc2``. In a leaf: ``r/g/b_codebook`` -> ``codebooks.0/1/2``, and ``r/g/b_mlm.bias``
(``[1, V]`` each) are stacked into ``out_bias [3, V]``. ``fake_latent`` ->
``conditioner.null_embedding``, ``class_emb`` -> ``conditioner.class_embedding``.
"""

from __future__ import annotations

import argparse
import math
import re
import sys
import warnings
import zipfile
from collections import Counter
from collections.abc import Mapping, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from fractalkit.fractal import FORMAT, FORMAT_VERSION, Fractal
from fractalkit.imagenet.models import (
    GUIDE_HEADS,
    IMAGENET_MEAN,
    IMAGENET_STD,
    PAPER_MODELS,
    PaperModel,
)
from fractalkit.imagenet.models import RED_WEIGHT as R_WEIGHT
from fractalkit.leaves.base import Leaf
from fractalkit.leaves.rgb import RGBLeaf, RGBLeafConfig
from fractalkit.legacy import upgrade_key
from fractalkit.levels.ar import ARLevelConfig
from fractalkit.levels.mar import MARLevelConfig
from fractalkit.levels.summary import SummaryConfig
from fractalkit.partition import ImagePatches
from fractalkit.persistence import assign_state, parameters_on_meta
from fractalkit.protocol import LevelPlan, LogProb, SampleOptions, ScoreContext

__all__ = [
    "RELEASED",
    "FractalGenFormatError",
    "ReleasedModel",
    "config_from_state_dict",
    "convert_checkpoint",
    "convert_state_dict",
    "fractalkit_name",
    "identify",
    "load_fractalgen",
    "load_state_dict",
    "main",
    "name_table",
    "original_name",
    "published_options",
    "replay_plans",
    "teacher_forced",
    "teacher_forced_leaf_logits",
]

_CHANNELS = "rgb"


class FractalGenFormatError(ValueError):
    """A file or state dict is not a (complete, well-shaped) FractalGen checkpoint."""


# ---- the released models -------------------------------------------------------------------


#: The released checkpoints by fractalkit name: the paper models' records
#: (:data:`fractalkit.imagenet.models.PAPER_MODELS`), which give the architecture the weights
#: must have (kinds, widths, depths), the head counts (not stored in the weights), the parameter
#: count and the published sampling settings.
RELEASED: Mapping[str, PaperModel] = PAPER_MODELS
#: The record type of :data:`RELEASED` (kept under the converter's old name).
ReleasedModel = PaperModel


def published_options(name: str, **overrides: Any) -> SampleOptions:
    """The sampling settings published with a released model, translated to fractalkit.

    Each figure's source (and which are assumed, for FractalMAR-B-256) is in
    ``RELEASED[name].sampling.sources``.

    Args:
        name: a :data:`RELEASED` name, e.g. ``"fractalmar-in64"``.
        overrides: fields of :class:`fractalkit.SampleOptions` to replace (e.g. ``callback``).

    Returns:
        A :class:`fractalkit.SampleOptions` (temperature already inverted: 1.02 there is
        ``1/1.02`` here).

    Raises:
        KeyError: ``name`` is not a released model.
    """
    model = RELEASED.get(name)
    if model is None:
        raise KeyError(f"published_options: no published sampling settings for {name!r}; known: {sorted(RELEASED)}")
    return model.sampling.options(**overrides)


# ---- reading files -------------------------------------------------------------------------


def load_state_dict(
    path: str | Path, *, key: str = "model", trust_pickle: bool = False
) -> dict[str, Tensor]:
    """The original-named state dict stored in a FractalGen checkpoint file.

    ``.pth``/``.pt`` files are opened with ``torch.load(weights_only=True)``, allowing only the
    ``argparse.Namespace`` the original stores beside the weights: no code from the file runs.
    ``.safetensors`` files (e.g. the reference fixtures) are read directly.

    Args:
        path: the checkpoint.
        key: the entry holding the state dict (``"model"``; ``"model_ema"`` where present).
        trust_pickle: if the restricted loader refuses the file, fall back to a full unpickle.
            A pickle can run arbitrary code: only for files from a source you trust.

    Returns:
        ``{original name: tensor}`` on the CPU.

    Raises:
        FileNotFoundError: no such file.
        FractalGenFormatError: the file is not a FractalGen checkpoint, or holds objects the
            restricted loader refuses (and ``trust_pickle`` is False).
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"FractalGen checkpoint: no file at {path}")
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        try:
            return load_file(str(path))
        except Exception as err:
            raise FractalGenFormatError(f"{path} is not a readable safetensors file: {err}") from err
    obj = _torch_load(path, trust_pickle)
    what = "it holds"
    if isinstance(obj, Mapping) and key in obj:
        obj, what = obj[key], f"its {key!r} entry is"
    elif isinstance(obj, Mapping) and obj and not all(isinstance(v, Tensor) for v in obj.values()):
        keys = sorted(str(k) for k in obj)[:10]
        raise FractalGenFormatError(
            f"{path} is not a FractalGen checkpoint: it has no {key!r} entry (top-level keys: {keys})"
        )
    if not isinstance(obj, Mapping) or not all(isinstance(v, Tensor) for v in obj.values()):
        raise FractalGenFormatError(
            f"{path} is not a FractalGen checkpoint: {what} a {type(obj).__name__}, not a state "
            "dict of tensors"
        )
    return dict(obj)


def _torch_load(path: Path, trust_pickle: bool) -> Any:
    with open(path, "rb") as f:
        head = f.read(64)
    # torch.save writes a zip archive (new) or a pickle (legacy, protocol >= 2 starts with 0x80);
    # anything else (a web page served instead of the file, a truncated download) is refused
    # here, before the restricted unpickler reports it as "objects besides tensors".
    if not head.startswith((b"PK\x03\x04", b"\x80")):
        shown = head[:40].decode("latin-1").encode("unicode_escape").decode()
        raise FractalGenFormatError(
            f"{path} is not a PyTorch checkpoint (it starts with {shown!r}"
            f"{': a web page, not the file' if head.lstrip()[:1] == b'<' else ''})"
        )
    # A zip archive keeps its directory at the end: without it the file was cut short (an
    # interrupted download or copy), which torch reports as an "internal miniz error" or EINVAL.
    if head.startswith(b"PK\x03\x04") and not zipfile.is_zipfile(path):
        raise FractalGenFormatError(
            f"{path} is truncated or corrupt: it starts as a PyTorch checkpoint (a zip archive) "
            f"but its {path.stat().st_size:,} bytes end without the archive's directory, as an "
            "interrupted download or copy leaves it. Delete it and download or copy it again"
        )
    try:
        with torch.serialization.safe_globals([argparse.Namespace]):
            try:
                return torch.load(path, map_location="cpu", weights_only=True, mmap=True)
            except RuntimeError as err:  # mmap needs the zip format; older files are legacy
                if "mmap" not in str(err):
                    raise
                return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:
        first = _reason(err)
        refused = "weights only load failed" in str(err).lower()
        if not refused and re.search(r"unexpected EOF|truncated|ran out of input", str(err), re.I):
            raise FractalGenFormatError(
                f"{path} is truncated or corrupt ({type(err).__name__}: {first}), as an "
                "interrupted download or copy leaves it. Delete it and download or copy it again"
            ) from err
        if not refused:  # not a pickle the restricted loader refused: not a checkpoint at all
            raise FractalGenFormatError(
                f"{path} is not a PyTorch checkpoint ({type(err).__name__}: {first})"
            ) from err
        if not trust_pickle:
            raise FractalGenFormatError(
                f"{path} holds objects besides tensors and an argparse.Namespace, so it was not "
                f"opened ({first}). If it is a FractalGen checkpoint from a source you trust, pass "
                "trust_pickle=True (--trust-pickle): a pickle can run arbitrary code"
            ) from err
    warnings.warn(
        f"loading {path} with a full unpickle (trust_pickle=True): a pickle can run arbitrary "
        "code; do this only for files from a source you trust",
        UserWarning,
        stacklevel=3,
    )
    return torch.load(path, map_location="cpu", weights_only=False)


def _reason(err: BaseException, limit: int = 300) -> str:
    """The informative part of torch.load's error, in whole sentences (never cut mid-sentence).

    torch's messages run to a dozen lines of advice with terminal escape codes; the line naming
    what the restricted unpickler refused (``WeightsUnpickler error: ...``) is the one that says
    what is in the file. Whole sentences are kept up to ``limit`` characters (the first one
    always, however long), and "..." marks what was left out.
    """
    text = re.sub(r"\x1b\[[0-9;]*m", "", str(err)).strip()  # terminal colours
    lines = [ln.strip() for ln in text.splitlines() if ln.strip()]
    if not lines:
        return type(err).__name__
    refused = [ln for ln in lines if ln.startswith("WeightsUnpickler error:")]
    text = refused[0] if refused else " ".join(lines)
    sentences = re.split(r"(?<=[.!?])\s+(?=[A-Z(])", text)
    kept = sentences[0]
    for sentence in sentences[1:]:
        if len(kept) + 1 + len(sentence) > limit:
            return kept + " ..."
        kept += " " + sentence
    return kept


# ---- names ---------------------------------------------------------------------------------

_AR_BLOCK = {  # original (LLaMA-style) -> fractalkit LlamaBlock
    "attention.wqkv.weight": "attn.qkv.weight",
    "attention.wo.weight": "attn.proj.weight",
    "attention_norm.weight": "norm1.weight",
    "ffn_norm.weight": "norm2.weight",
    "feed_forward.w1.weight": "w1.weight",
    "feed_forward.w2.weight": "w2.weight",
    "feed_forward.w3.weight": "w3.weight",
}
_VIT_BLOCK = {  # original (timm-style) -> fractalkit ViTBlock
    f"{a}.{p}": f"{b}.{p}"
    for a, b in [
        ("norm1", "norm1"), ("attn.qkv", "attn.qkv"), ("attn.proj", "attn.proj"),
        ("norm2", "norm2"), ("mlp.fc1", "fc1"), ("mlp.fc2", "fc2"),
    ]
    for p in ("weight", "bias")
}
_BLOCK = {**_AR_BLOCK, **_VIT_BLOCK}
_WB = ("weight", "bias")
_LEVEL_PARTS = {  # original -> fractalkit: the level's input network and summary prefix parts
    **{f"{m}.{p}": f"inputs.{m}.{p}" for m in ("patch_emb_ln", "cond_emb") for p in _WB},
    **{f"patch_emb.{p}": f"inputs.patch_emb.proj.{p}" for p in _WB},
    **{f"pix_proj.{p}": f"summary.proj.{p}" for p in _WB},
}
_LEVEL_PARTS_INVERSE = {v: k for k, v in _LEVEL_PARTS.items()}
_SUMMARY_LEAF = "summary.leaf."  # where the original's guiding_pixel_loss sits
_LEAF_SAME = {f"{m}.{p}" for m in ("cond_proj", "ln") for p in _WB}
_BLOCK_RE = re.compile(r"blocks\.(\d+)\.(.+)")


def _split_prefix(name: str) -> tuple[int, str]:
    depth = 0
    while name.startswith("next_fractal."):
        name = name[len("next_fractal.") :]
        depth += 1
    return depth, name


def _map_common(rest: str) -> str | None:
    m = _BLOCK_RE.fullmatch(rest)
    if m and m.group(2) in _BLOCK:
        return f"backbone.blocks.{m.group(1)}.{_BLOCK[m.group(2)]}"
    if rest in ("norm.weight", "norm.bias"):
        return f"backbone.{rest}"
    return None


def _map_leaf(rest: str) -> str | None:
    if rest in _LEAF_SAME:
        return rest
    m = re.fullmatch(r"([rgb])_codebook\.weight", rest)
    if m:
        return f"codebooks.{_CHANNELS.index(m.group(1))}.weight"
    if re.fullmatch(r"[rgb]_mlm\.bias", rest):
        return "out_bias"
    return _map_common(rest)


def _map_level(rest: str) -> str | None:
    if rest == "mask_token":
        return rest
    if rest in _LEVEL_PARTS:
        return _LEVEL_PARTS[rest]
    if rest == "pos_embed_learned":
        return "pos_embed"
    return _map_common(rest)


def fractalkit_name(name: str) -> str:
    """The fractalkit parameter an original FractalGen tensor maps to.

    The three ``r/g/b_mlm.bias`` of a leaf all map to its ``out_bias`` (rows 0, 1, 2).

    Args:
        name: an original state-dict name, e.g. ``"next_fractal.generator.blocks.3.attention.wo.weight"``.

    Returns:
        e.g. ``"root.child.backbone.blocks.3.attn.proj.weight"``.

    Raises:
        FractalGenFormatError: ``name`` is not a FractalGen tensor name.
    """
    if name == "fake_latent":
        return "conditioner.null_embedding"
    if name == "class_emb.weight":
        return "conditioner.class_embedding.weight"
    depth, rest = _split_prefix(name)
    prefix = "root." + "child." * depth
    mapped = None
    if rest.startswith("generator.guiding_pixel_loss."):
        mapped = _map_leaf(rest[len("generator.guiding_pixel_loss.") :])
        prefix += _SUMMARY_LEAF
    elif rest.startswith("generator."):
        mapped = _map_level(rest[len("generator.") :])
    elif depth > 0:
        mapped = _map_leaf(rest)
    if mapped is None:
        raise FractalGenFormatError(f"{name!r} is not a FractalGen tensor name")
    return prefix + mapped


def _inverse_common(rest: str, style: str) -> str | None:
    table = _AR_BLOCK if style == "llama" else _VIT_BLOCK
    inverse = {v: k for k, v in table.items()}
    m = re.fullmatch(r"backbone\.blocks\.(\d+)\.(.+)", rest)
    if m and m.group(2) in inverse:
        return f"blocks.{m.group(1)}.{inverse[m.group(2)]}"
    if rest in ("backbone.norm.weight", "backbone.norm.bias"):
        return rest[len("backbone.") :]
    return None


def _inverse_leaf(rest: str, leaf) -> list[tuple[str, int | None]] | None:
    if not isinstance(leaf, RGBLeaf) or len(leaf.codebooks) != 3:
        raise FractalGenFormatError(
            f"a {type(leaf).__name__} with event shape {list(leaf.event_shape)} has no FractalGen "
            "counterpart (the original's leaf is a 3-channel RGB PixelLoss)"
        )
    if rest in _LEAF_SAME:
        return [(rest, None)]
    m = re.fullmatch(r"codebooks\.(\d)\.weight", rest)
    if m:
        return [(f"{_CHANNELS[int(m.group(1))]}_codebook.weight", None)]
    if rest == "out_bias":
        return [(f"{c}_mlm.bias", i) for i, c in enumerate(_CHANNELS)]
    name = _inverse_common(rest, "vit")
    return None if name is None else [(name, None)]


def _inverse_level(rest: str, level) -> list[tuple[str, int | None]] | None:
    if rest == "mask_token":
        return [(rest, None)]
    if rest in _LEVEL_PARTS_INVERSE:
        return [(_LEVEL_PARTS_INVERSE[rest], None)]
    if rest == "pos_embed":
        return [("pos_embed_learned", None)]
    name = _inverse_common(rest, level.config.block)
    return None if name is None else [(name, None)]


def original_name(name: str, model: Fractal) -> list[tuple[str, int | None]]:
    """The original FractalGen tensor(s) a fractalkit parameter of ``model`` comes from.

    Args:
        name: a parameter name of ``model``, e.g. ``"root.child.child.out_bias"``.
        model: the fractalkit model (its structure tells AR blocks from ViT blocks).

    Returns:
        ``[(original name, row)]``: one entry with row None, or for ``out_bias`` the three
        ``r/g/b_mlm.bias`` with the row of ``out_bias`` each fills.

    Raises:
        FractalGenFormatError: the parameter has no FractalGen counterpart (e.g. a plug-in level).
    """
    name = upgrade_key(name)  # older fractalkit names, through the one key map
    if name == "conditioner.null_embedding":
        return [("fake_latent", None)]
    if name == "conditioner.class_embedding.weight":
        return [("class_emb.weight", None)]
    if not name.startswith("root."):
        raise FractalGenFormatError(f"{name!r} has no FractalGen counterpart")
    rest = name[len("root.") :]
    depth = 0
    while rest.startswith("child."):
        rest = rest[len("child.") :]
        depth += 1
    levels = model.levels
    if depth >= len(levels):
        raise FractalGenFormatError(f"{name!r} has no FractalGen counterpart")
    gen = levels[depth]
    prefix = "next_fractal." * depth
    if isinstance(gen, Leaf):
        found = _inverse_leaf(rest, gen)
    elif rest.startswith(_SUMMARY_LEAF) and getattr(gen, "summary", None) is not None:
        prefix += "generator.guiding_pixel_loss."
        found = _inverse_leaf(rest[len(_SUMMARY_LEAF) :], gen.summary.leaf)
    elif getattr(gen, "config", None) is not None and isinstance(
        gen.config, ARLevelConfig | MARLevelConfig
    ):
        prefix += "generator."
        found = _inverse_level(rest, gen)
    else:
        found = None
    if found is None:
        raise FractalGenFormatError(f"{name!r} has no FractalGen counterpart")
    return [(prefix + n, row) for n, row in found]


def name_table(model: Fractal) -> dict[str, tuple[str, int | None]]:
    """Every original tensor name ``model`` expects: ``{original: (fractalkit name, row)}``.

    ``row`` is None for a one-to-one tensor, or the row of ``out_bias`` an ``*_mlm.bias`` fills.
    """
    table: dict[str, tuple[str, int | None]] = {}
    for name in model.state_dict():
        for orig, row in original_name(name, model):
            table[orig] = (name, row)
    return table


# ---- the model from the shapes ----------------------------------------------------------------


def _need(
    shapes: Mapping[str, tuple[int, ...]], name: str, why: str, ndim: int | None = None
) -> tuple[int, ...]:
    if name not in shapes:
        raise FractalGenFormatError(f"missing tensor {name!r} (needed to read {why})")
    if ndim is not None and len(shapes[name]) != ndim:
        raise FractalGenFormatError(
            f"{name!r} has shape {list(shapes[name])}; expected {ndim} dimensions"
        )
    return shapes[name]


def _width(shapes: Mapping[str, tuple[int, ...]], sources: dict[str, int], why: str) -> int:
    """The value most of ``{tensor name: axis}`` agree on (a lone mis-shaped tensor is then
    reported by name when the tensors are checked against the model)."""
    votes = Counter(shapes[n][axis] for n, axis in sources.items() if n in shapes and len(shapes[n]) > axis)
    if not votes:
        _need(shapes, next(iter(sources)), why)
    return votes.most_common(1)[0][0]


def _block_count(shapes: Mapping[str, Any], prefix: str) -> int:
    found = {int(m.group(1)) for k in shapes if (m := re.match(re.escape(prefix) + r"blocks\.(\d+)\.", k))}
    return max(found) + 1 if found else 0


def _leaf_width_sources(prefix: str) -> dict[str, int]:
    names = [("cond_proj.weight", 0), ("cond_proj.bias", 0), ("ln.weight", 0), ("norm.weight", 0)]
    names += [(f"{c}_codebook.weight", 1) for c in _CHANNELS]
    return {prefix + n: axis for n, axis in names}


def _is_square(n: int) -> bool:
    return n > 0 and math.isqrt(n) ** 2 == n


def _check_fractalgen(state_dict: Mapping[str, Any]) -> None:
    if not isinstance(state_dict, Mapping):
        raise FractalGenFormatError(f"expected a state dict (a mapping of tensors), got {type(state_dict).__name__}")
    if "fake_latent" not in state_dict and not any(str(k).startswith("generator.") for k in state_dict):
        first = sorted(str(k) for k in state_dict)[:5]
        hint = ""
        if "null_embedding" in state_dict or "conditioner.null_embedding" in state_dict:
            hint = "; it looks converted already: open it with fractalkit.Fractal.load"
        raise FractalGenFormatError(
            "not a FractalGen state dict: it has neither 'fake_latent' nor any 'generator.*' "
            f"tensor (first names: {first}){hint}"
        )


def _structure(state_dict: Mapping[str, Any]) -> dict[str, Any]:
    """Levels, widths and depths read from the shapes (everything but the head counts)."""
    _check_fractalgen(state_dict)
    shapes = {k: tuple(v.shape) for k, v in state_dict.items()}
    _need(shapes, "fake_latent", "the null condition")
    num_classes = _need(shapes, "class_emb.weight", "the number of classes", ndim=2)[0]
    levels = []
    while f"{'next_fractal.' * len(levels)}generator.patch_emb.weight" in shapes:
        pre = "next_fractal." * len(levels) + "generator."
        p_in = _need(shapes, pre + "patch_emb.weight", "the child size", ndim=2)[1]
        width = _width(
            shapes,
            {pre + n: axis for n, axis in [
                ("patch_emb.weight", 0), ("patch_emb.bias", 0), ("patch_emb_ln.weight", 0),
                ("cond_emb.weight", 0), ("norm.weight", 0), ("pos_embed_learned", 2),
            ]},
            "the width",
        )
        if p_in % 3 or not _is_square(p_in // 3):
            raise FractalGenFormatError(
                f"{pre}patch_emb.weight has {p_in} inputs; expected 3 * p^2 (an RGB p x p patch)"
            )
        kind = "mar" if pre + "mask_token" in shapes else "ar"
        guide = None
        if pre + "pix_proj.weight" in shapes:
            gpre = pre + "guiding_pixel_loss."
            guide = {
                "width": _width(shapes, _leaf_width_sources(gpre), "the guiding pixel's width"),
                "depth": _block_count(shapes, gpre),
            }
        levels.append({
            "kind": kind,
            "width": width,
            "depth": _block_count(shapes, pre),
            "child": math.isqrt(p_in // 3),
            "pos": _need(shapes, pre + "pos_embed_learned", "the sequence length", ndim=3)[1],
            "guide": guide,
        })
    if not levels:
        _need(shapes, "generator.patch_emb.weight", "the top level")
    leaf = "next_fractal." * len(levels)
    leaf_width = _width(shapes, _leaf_width_sources(leaf), "the leaf's width")
    values = _need(shapes, leaf + "r_codebook.weight", "the leaf's values", ndim=2)[0]

    # Conditions: MAR levels read num_conds tokens (plus the guiding pixel), AR levels one.
    # Below the top, a level's block is its parent's child size, so its length L is known.
    num_conds = None
    for i, lv in enumerate(levels[1:], start=1):
        if lv["kind"] == "mar":
            length = (levels[i - 1]["child"] // lv["child"]) ** 2
            num_conds = lv["pos"] - length - (lv["guide"] is not None)
            break
    top_level = levels[0]
    if top_level["kind"] == "ar":
        top_len = top_level["pos"] - 1
    else:
        options = [num_conds] if num_conds is not None else [5, 1]
        fits = [c for c in options if _is_square(top_level["pos"] - c)]
        if not fits:
            raise FractalGenFormatError(
                f"generator.pos_embed_learned has {top_level['pos']} positions: no square number "
                f"of children after {options} condition token(s)"
            )
        num_conds = fits[0]
        top_len = top_level["pos"] - num_conds
    if not _is_square(top_len):
        raise FractalGenFormatError(
            f"generator.pos_embed_learned implies {top_len} children, not a square grid"
        )
    if num_conds is not None and num_conds not in (1, 5):
        raise FractalGenFormatError(
            f"the MAR levels read {num_conds} condition tokens; fractalkit supports 1 or 5"
        )
    size = math.isqrt(top_len) * top_level["child"]
    block = size
    for lv in levels:
        lv["block"], block = block, lv["child"]
    if block != 1:
        raise FractalGenFormatError(f"the last level's children are {block}x{block}, not single pixels")
    return {
        "levels": levels,
        "num_conds": num_conds or 1,
        "num_classes": num_classes,
        "leaf": {"width": leaf_width, "depth": _block_count(shapes, leaf), "values": values},
    }


def _signature(structure: dict[str, Any]) -> tuple:
    levels = structure["levels"]
    return (
        tuple(lv["kind"] for lv in levels),
        (*(lv["width"] for lv in levels), structure["leaf"]["width"]),
        (*(lv["depth"] for lv in levels), structure["leaf"]["depth"]),
    )


def identify(state_dict: Mapping[str, Any]) -> str | None:
    """The :data:`RELEASED` name whose architecture ``state_dict`` has, or None."""
    sig = _signature(_structure(state_dict))
    for name, model in RELEASED.items():
        if (model.kinds, model.widths, model.depths) == sig:
            return name
    return None


def config_from_state_dict(
    state_dict: Mapping[str, Any],
    *,
    heads: Sequence[int] | None = None,
    guide_heads: int = GUIDE_HEADS,
) -> dict[str, Any]:
    """The :meth:`fractalkit.Fractal.from_config` config of the model an original state dict holds.

    Widths, depths, the number of levels, patch and image sizes, AR or MAR, neighbour conditions
    and guiding pixels are read from the shapes (values are never touched, so tensors on the meta
    device work). Head counts are not in the shapes: they come from ``heads``, or from
    :data:`RELEASED` when the architecture is a released one.

    Args:
        state_dict: ``{original name: tensor}`` (anything with ``.shape``).
        heads: attention heads per level, top first, then the leaf's.
        guide_heads: the guiding-pixel leaves' heads (the original: 4).

    Returns:
        A JSON-serialisable config dict.

    Raises:
        FractalGenFormatError: not a FractalGen state dict, a tensor the structure is read from
            is missing, or ``heads`` is needed and not given.
    """
    s = _structure(state_dict)
    levels = s["levels"]
    if heads is None:
        sig = _signature(s)
        released = [m for m in RELEASED.values() if (m.kinds, m.widths, m.depths) == sig]
        if not released:
            raise FractalGenFormatError(
                f"not a released architecture (kinds {sig[0]}, widths {sig[1]}, depths {sig[2]}); "
                f"head counts are not stored in the weights: pass heads=(one per level, then the leaf's), --heads on the command line"
            )
        heads = released[0].heads
    heads = tuple(int(h) for h in heads)
    if len(heads) != len(levels) + 1:
        raise FractalGenFormatError(
            f"heads must have {len(levels) + 1} entries (one per level, then the leaf's), got {heads}"
        )
    try:
        return _config(s, heads, guide_heads)
    except ValueError as err:  # e.g. a width the head count does not divide
        raise FractalGenFormatError(
            f"the architecture read from the tensor shapes cannot be built with heads {heads}: {err}"
        ) from err


def _config(s: dict[str, Any], heads: tuple[int, ...], guide_heads: int) -> dict[str, Any]:
    pairs = []
    for lv, h in zip(s["levels"], heads, strict=False):
        part = ImagePatches(lv["block"], lv["child"])
        if lv["kind"] == "ar":
            cfg = ARLevelConfig(width=lv["width"], depth=lv["depth"], heads=h, block="llama", rope=True)
        else:
            guide = lv["guide"]
            summary = None
            if guide is not None:
                leaf = RGBLeafConfig(
                    width=guide["width"], depth=guide["depth"], heads=guide_heads,
                    num_values=s["leaf"]["values"], channel_weights=R_WEIGHT,
                )
                # The original feeds pix_proj the continuous block mean when scoring.
                summary = SummaryConfig(leaf, input="continuous")
            cfg = MARLevelConfig(
                width=lv["width"],
                depth=lv["depth"],
                heads=h,
                block="vit",
                neighbours=s["num_conds"] == 5,
                summary=summary,
            )
        pairs.append({"partitioner": part.config(), "level": cfg.to_dict()})
    leaf = RGBLeafConfig(
        width=s["leaf"]["width"], depth=s["leaf"]["depth"], heads=heads[-1],
        num_values=s["leaf"]["values"], channel_weights=R_WEIGHT,
    )
    return {
        "format": FORMAT,
        "version": FORMAT_VERSION,
        "levels": pairs,
        "leaf": leaf.to_dict(),
        "num_classes": s["num_classes"],
        "label_drop": 0.1,
        "value_mean": list(IMAGENET_MEAN),
        "value_std": list(IMAGENET_STD),
    }


# ---- conversion ------------------------------------------------------------------------------


def _show(names: list[str], limit: int = 8) -> str:
    more = f" and {len(names) - limit} more" if len(names) > limit else ""
    return ", ".join(names[:limit]) + more


def convert_state_dict(state_dict: Mapping[str, Tensor], model: Fractal) -> dict[str, Tensor]:
    """Rename an original state dict to ``model``'s parameter names, checking every tensor.

    Works on any device, the meta device included (no values are read).

    Args:
        state_dict: ``{original name: tensor}``.
        model: the fractalkit model the tensors are for.

    Returns:
        ``{fractalkit name: tensor}`` covering every entry of ``model.state_dict()``.

    Raises:
        FractalGenFormatError: naming each missing, unexpected or mis-shaped tensor.
    """
    _check_fractalgen(state_dict)
    table = name_table(model)
    targets = model.state_dict()
    unexpected = sorted(k for k in state_dict if k not in table)
    missing = sorted(k for k in table if k not in state_dict)
    problems = []
    if missing:
        problems.append(
            "missing: " + _show([f"{k!r} (fractalkit {table[k][0]!r})" for k in missing])
        )
    if unexpected:
        problems.append("unexpected (no fractalkit counterpart): " + _show([repr(k) for k in unexpected]))
    mis = []
    for orig, (name, row) in table.items():
        if orig not in state_dict:
            continue
        want = tuple(targets[name].shape)
        if row is not None:
            want = (1, *want[1:])
        got = tuple(state_dict[orig].shape)
        if got != want:
            mis.append(f"{orig!r} has shape {list(got)}, expected {list(want)} for {name!r}")
    if mis:
        problems.append("mis-shaped: " + _show(mis))
    if problems:
        raise FractalGenFormatError("FractalGen state dict does not fit the model; " + "; ".join(problems))
    out: dict[str, Tensor] = {}
    stacked: dict[str, dict[int, Tensor]] = {}
    for orig, (name, row) in table.items():
        if row is None:
            out[name] = state_dict[orig]
        else:
            stacked.setdefault(name, {})[row] = state_dict[orig]
    for name, rows in stacked.items():
        out[name] = torch.cat([rows[i] for i in sorted(rows)], dim=0)
    return out


def _build(
    state_dict: Mapping[str, Tensor], preset: str | None, heads: Sequence[int] | None
) -> Fractal:
    if preset is not None:
        if preset not in RELEASED:
            raise ValueError(f"unknown preset {preset!r}; released models: {sorted(RELEASED)}")
        found = identify(state_dict)
        if found != preset:
            raise FractalGenFormatError(
                f"the checkpoint is {'the ' + found if found else 'not a released'} architecture, "
                f"not {preset!r}"
            )
        config = RELEASED[preset].config()
        config["num_classes"] = int(state_dict["class_emb.weight"].shape[0])
    else:
        config = config_from_state_dict(state_dict, heads=heads)
    try:
        with parameters_on_meta():  # the weights come from the file: none are allocated here
            return Fractal.from_config(config)
    except ValueError as err:
        raise FractalGenFormatError(
            f"the architecture read from the tensor shapes cannot be built: {err}"
        ) from err


def load_fractalgen(
    source: str | Path | Mapping[str, Tensor],
    *,
    preset: str | None = None,
    heads: Sequence[int] | None = None,
    key: str = "model",
    trust_pickle: bool = False,
) -> Fractal:
    """A fractalkit :class:`~fractalkit.Fractal` holding an original FractalGen model's weights.

    Args:
        source: a checkpoint file (see :func:`load_state_dict`) or an original-named state dict.
        preset: a :data:`RELEASED` name to insist on (the file must have that architecture).
        heads: attention heads per level then the leaf's, for architectures not in
            :data:`RELEASED` (head counts are not stored in the weights).
        key, trust_pickle: as in :func:`load_state_dict`.

    Returns:
        The model in eval mode, on the CPU, in float32. Its parameters *are* the file's
        tensors (renamed; float32 ones are not copied, the three leaf biases are stacked): for a
        ``.pth`` file in PyTorch's zip format they are the file's pages, mapped copy-on-write
        and read on first use, so a released checkpoint converts in about its own size of
        memory. Do not overwrite the file in place while the model is in use (deleting or
        replacing it is fine); ``copy.deepcopy(model)`` makes an independent copy.

    Raises:
        FractalGenFormatError: the source is not a FractalGen checkpoint, or a tensor is missing,
            unexpected or mis-shaped (the error names it).
    """
    if isinstance(source, Mapping):
        state_dict = dict(source)
    else:
        state_dict = load_state_dict(source, key=key, trust_pickle=trust_pickle)
    model = _build(state_dict, preset, heads)  # parameters on the meta device
    converted = convert_state_dict(state_dict, model)
    if isinstance(source, Mapping):  # the caller's tensors stay the caller's
        converted = {k: v.clone() for k, v in converted.items()}
    missing, unexpected = assign_state(model, converted)
    if missing or unexpected:  # convert_state_dict covers the model exactly; a guard
        raise FractalGenFormatError(f"conversion left {missing[:5]} unset and {unexpected[:5]} unused")
    return model.eval()


def convert_checkpoint(
    src: str | Path,
    dst: str | Path,
    *,
    preset: str | None = None,
    heads: Sequence[int] | None = None,
    key: str = "model",
    trust_pickle: bool = False,
) -> Fractal:
    """Convert an original checkpoint file to fractalkit's format (:meth:`Fractal.save`) once.

    Args:
        src: the original ``.pth`` (or original-named ``.safetensors``).
        dst: the file to write, conventionally ``*.safetensors``; :meth:`Fractal.load` reads it.
        preset, heads, key, trust_pickle: as in :func:`load_fractalgen`.

    Returns:
        The converted model (its weights mapped from ``src``, see :func:`load_fractalgen`).

    Memory: tensor by tensor, about the size of ``src`` above what the process used before
    (nothing is initialised, copied or serialised whole; :func:`fractalkit.persistence.save`).
    """
    model = load_fractalgen(src, preset=preset, heads=heads, key=key, trust_pickle=trust_pickle)
    model.save(dst)
    return model


# ---- compat-only scoring: replaying given MAR masks (moved here from the core) --------------
# The core scores in three modes (train / exact / estimate); this path replays one draw of
# another implementation's masks by handing each MAR level a plan with its mask.


def replay_plans(model: Fractal, masks: Sequence[Tensor | None]) -> tuple[LevelPlan, ...]:
    """One :class:`fractalkit.protocol.LevelPlan` per level that fixes its scored children.

    Args:
        model: the model.
        masks: per level, bool ``[n_level, L]`` (True = masked = scored and passed down) for an
            order-dependent (MAR) level, None for an AR level; the rows of level i+1 are the
            masked children of level i in (instance, child index) order.

    Raises:
        ValueError: more masks than levels, or no mask tensor for a MAR level.
    """
    levels = model.levels[:-1]
    masks = list(masks)
    if len(masks) > len(levels):
        raise ValueError(f"masks: expected at most one entry per level ({len(levels)}), got {len(masks)}")
    masks += [None] * (len(levels) - len(masks))
    for i, (mask, level) in enumerate(zip(masks, levels, strict=True)):
        if level.uses_orders and not isinstance(mask, Tensor):
            raise ValueError(
                f"MARLevel (level {i}): masks[{i}] must be a bool tensor of shape [n, L], got "
                f"{type(mask).__name__}"
            )
    return tuple(LevelPlan(mask=m) for m in masks)


def teacher_forced(
    model: Fractal, x: Tensor, y: Tensor | None, masks: Sequence[Tensor | None]
) -> LogProb:
    """Score with explicit MAR masks, reproducing one given computation exactly.

    E.g. one draw of the original's (or fractalkit's) estimate: each MAR level scores exactly
    its masked children, unweighted; AR levels score every child.

    Args:
        model: the model (call ``model.eval()`` first).
        x: integer ``[N, *event_shape]``.
        y: int64 ``[N]`` labels, or None for the null condition.
        masks: as in :func:`replay_plans`.

    Returns:
        :class:`fractalkit.LogProb` with ``value [N]`` in nats, labelled an estimate.
    """
    model.root.check_x(x)
    n = x.shape[0]
    if y is not None:
        model.conditioner.check(y, n)
    cond = model.top_condition(y, n)
    # "estimate" scores MAR levels by masks (the plans fix them) and the guiding pixel as part
    # of the likelihood, as the original's evaluation does; the drawn weights do not apply.
    ctx = ScoreContext("estimate", plans=replay_plans(model, masks), canvas=model._canvas(x))
    score = model.root.score(x.long(), cond, ctx)
    return LogProb(score.logp, "estimate")


# ---- reproducing a computation -------------------------------------------------------------


@contextmanager
def _capture_leaf(model: Fractal):
    leaf = model.leaf
    captured: list[Tensor] = []
    inner = leaf.element_logits

    def element_logits(x: Tensor, cond: Tensor) -> Tensor:
        out = inner(x, cond)
        captured.append(out)
        return out

    leaf.element_logits = element_logits  # an instance attribute shadows the method
    try:
        yield captured
    finally:
        del leaf.element_logits


@torch.no_grad()
def teacher_forced_leaf_logits(
    model: Fractal, x: Tensor, y: Tensor | None, masks: Sequence[Tensor | None]
) -> tuple[LogProb, Tensor]:
    """:func:`teacher_forced` plus the leaf's logits, to compare with the original.

    The leaf rows come in the original's order: lexicographic in (image, level-0 child, level-1
    child, ...), keeping only the masked children of MAR levels.

    Args:
        model: the model (call ``model.eval()`` first).
        x: integer ``[N, *event_shape]`` images (uint8 RGB works).
        y: int64 ``[N]`` labels, or None for the null (unconditional) embedding, which is what
            the original's evaluation forward uses whatever the labels.
        masks: per level, bool ``[n_level, L]`` (True = masked = scored and passed down) for a MAR
            level, None for an AR level.

    Returns:
        ``(log_prob, logits)``: per-image log-probabilities summed over the scored leaves
        (``[N]``), and the leaf logits ``[M, E, V]`` (no temperature, no guidance). The original's
        loss is ``-log_prob.value.sum() / (M * E)``.
    """
    if not isinstance(model.leaf, Leaf):
        raise TypeError(f"teacher_forced_leaf_logits: {type(model.leaf).__name__} is not a Leaf")
    with _capture_leaf(model) as captured:
        lp = teacher_forced(model, x, y, masks)
    if not captured:
        raise RuntimeError("teacher_forced_leaf_logits: the leaf was never called")
    return lp, torch.cat(captured)


# ---- command line ----------------------------------------------------------------------------


def main(argv: Sequence[str] | None = None) -> int:
    """``fractalkit-convert-fractalgen convert IN OUT [--preset NAME]`` (also
    ``python -m fractalkit.imagenet.convert ...`` and the old ``python -m fractalkit.compat.fractalgen ...``)."""
    parser = argparse.ArgumentParser(
        prog="fractalkit-convert-fractalgen",
        description="Convert an official FractalGen checkpoint to fractalkit's safetensors format.",
    )
    sub = parser.add_subparsers(dest="command", required=True)
    conv = sub.add_parser("convert", help="convert IN (.pth) to OUT (.safetensors)")
    conv.add_argument("src", help="the original checkpoint (.pth)")
    conv.add_argument("dst", help="the fractalkit file to write (.safetensors)")
    conv.add_argument("--preset", choices=sorted(RELEASED), help="insist on this architecture")
    conv.add_argument(
        "--heads", help="heads per level then the leaf's, comma-separated (non-released models)"
    )
    conv.add_argument("--key", default="model", help="checkpoint entry with the weights (model)")
    conv.add_argument(
        "--trust-pickle",
        action="store_true",
        help="allow a full unpickle if needed (a pickle can run arbitrary code)",
    )
    args = parser.parse_args(argv)
    heads = None
    if args.heads:
        try:
            heads = tuple(int(h) for h in args.heads.split(","))
        except ValueError:
            parser.error(f"--heads: expected comma-separated integers, got {args.heads!r}")
    try:
        model = convert_checkpoint(
            args.src, args.dst, preset=args.preset, heads=heads, key=args.key,
            trust_pickle=args.trust_pickle,
        )
    except (FractalGenFormatError, FileNotFoundError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    count = sum(p.numel() for p in model.parameters())
    print(f"wrote {args.dst}: {count:,} parameters; load it with fractalkit.Fractal.load")
    return 0


if __name__ == "__main__":
    sys.exit(main())
