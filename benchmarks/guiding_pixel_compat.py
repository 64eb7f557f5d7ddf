"""How far fractalkit's guiding-pixel scoring is from the original FractalGen's, and the switch.

When *scoring* (teacher forcing), the original feeds its guiding-pixel projection ``pix_proj``
the exact mean of the normalised block (``imgs.mean(-1).mean(-1)`` of ImageNet-normalised
float32 images); fractalkit feeds, by default, the mean rounded to an 8-bit value (the value its
summary leaf scores), normalised. ``SummaryConfig(leaf, input="continuous")`` (a MAR level's
``summary``; ``MARLevelConfig.guide_input`` before issue 20), which the FractalGen converter
sets, feeds the continuous mean.

This script builds a 4-level guiding-pixel model the converter's way (three MAR levels on
16x16 RGB images, the guiding pixel below the top, an RGB leaf; ImageNet normalisation; random
weights: no guiding-pixel fixture of the original exists) and computes its teacher-forced leaf
logits under random masks (:func:`fractalkit.imagenet.convert.teacher_forced_leaf_logits`):

- ``reference``: the original's computation, emulated by replacing the guiding-pixel token with
  ``pix_proj`` of the continuous normalised block mean computed as the original does
  (normalise every pixel in float32, then average);
- ``default``: fractalkit as configured (``guide_input`` absent before issue 11: rounded);
- ``switch``: the same weights with the summary's ``input="continuous"`` (after issue 11 only).

It prints the largest absolute logit difference of ``default`` and ``switch`` from
``reference``. Run: ``PYTHONPATH=. python benchmarks/guiding_pixel_compat.py`` (also writes
``benchmarks/results/guiding_pixel_compat.json``).
"""

from __future__ import annotations

import json
from pathlib import Path

import torch

from fractalkit import Fractal, ImagePatches, MARLevelConfig, RGBLeafConfig, SummaryConfig
from fractalkit.imagenet import convert as fg
from fractalkit.imagenet.models import IMAGENET_MEAN as MEAN
from fractalkit.imagenet.models import IMAGENET_STD as STD


def build(**summary_kw) -> Fractal:
    """The 4-level model (three MAR levels and the leaf), weights from seed 0, roughened."""
    torch.manual_seed(0)

    def mar(width, guide):
        leaf = RGBLeafConfig(width=16, depth=1, heads=2, channel_weights=(5.0, 1.0, 1.0))
        summary = SummaryConfig(leaf, **summary_kw) if guide else None
        return MARLevelConfig(width=width, depth=1, heads=4, summary=summary)

    model = Fractal(
        [
            (ImagePatches(16, 4), mar(64, False)),
            (ImagePatches(4, 2), mar(32, True)),
            (ImagePatches(2, 1), mar(32, True)),
        ],
        RGBLeafConfig(width=16, depth=1, heads=2, channel_weights=(5.0, 1.0, 1.0)),
        num_classes=10,
        value_mean=MEAN,
        value_std=STD,
    )
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.3 * torch.randn(p.shape, generator=g))
    return model.eval()


def masks(model: Fractal, n: int) -> list[torch.Tensor]:
    """Random masks (about half the children), rows of each level = masked children above."""
    g = torch.Generator().manual_seed(2)
    out, rows = [], n
    for level in model.levels[:-1]:
        m = torch.rand(rows, level.num_children, generator=g) < 0.5
        m[:, 0] = True
        out.append(m)
        rows = int(m.sum())
    return out


def original_logits(model: Fractal, x, m) -> torch.Tensor:
    """Leaf logits with every guiding-pixel token from the continuous normalised block mean."""
    patched = []
    for level in model.levels[:-1]:
        if getattr(level, "summary", None) is None:
            continue
        seen = {}

        def score(x, cond, ctx, level=level, seen=seen, inner=level.score):
            seen["x"] = x
            return inner(x, cond, ctx)

        def prefix(cond, guide, level=level, seen=seen, inner=level.prefix):
            tokens = inner(cond, guide)
            x = seen["x"].float() / 255  # [N, C, h, w]
            mean = torch.tensor(MEAN)[None, :, None, None]
            std = torch.tensor(STD)[None, :, None, None]
            g = ((x - mean) / std).mean(-1).mean(-1)  # the original: mean of normalised pixels
            tokens[:, 0] = level.summary.proj(g).to(tokens.dtype)
            return tokens

        level.score, level.prefix = score, prefix
        patched.append(level)
    try:
        return fg.teacher_forced_leaf_logits(model, x, None, m)[1]
    finally:
        for level in patched:
            del level.score, level.prefix


def main() -> dict:
    model = build()
    x = torch.randint(0, 256, (2, 3, 16, 16), generator=torch.Generator().manual_seed(3))
    m = masks(model, x.shape[0])
    reference = original_logits(model, x, m)
    default = fg.teacher_forced_leaf_logits(model, x, None, m)[1]
    out = {"default_vs_original": (default - reference).abs().max().item()}
    if True:  # the switch exists since issue 11 (then MARLevelConfig.guide_input)
        switched = build(input="continuous")
        switched.load_state_dict(model.state_dict())
        logits = fg.teacher_forced_leaf_logits(switched, x, None, m)[1]
        out["switch_vs_original"] = (logits - reference).abs().max().item()
    print(json.dumps(out))
    return out


if __name__ == "__main__":
    figures = main()
    results = Path(__file__).resolve().parent / "results" / "guiding_pixel_compat.json"
    results.write_text(json.dumps(figures, indent=1) + "\n")
