"""The paper's cost tables (Tables 1 and 2): parameters and forward GFLOPs per level.

Counted with ``torch.utils.flop_counter`` on the meta device (no memory, no compute), batch 1,
under the paper's convention: FLOPs = 2 x multiply-adds; data tokens only (condition and
guiding-pixel tokens left out); attention included; the 256-way output logits left out; every
child at every level counted as if unmasked. Each level is charged for its child embedding and
blocks over its data tokens; the leaf for its condition projection and blocks over its 3 channel
tokens.

A second table counts what one *training step really executes*: condition tokens included, the
MAR levels at the mean of the paper's mask-ratio distribution (E[r] ~ 0.80 of the children
scored and passed down), the output logits included, backward = 2 x forward.

Run: ``python benchmarks/cost_table.py`` (prints tables; writes benchmarks/results/cost_table.json).
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import torch
from torch.utils.flop_counter import FlopCounterMode

from fractalkit import Fractal, ImagePatches, MARLevelConfig, RGBLeafConfig
from fractalkit.imagenet.presets import PRESETS, build_preset, transformer_block_parameters
from fractalkit.levels.base import Level

# The paper's Table 1/2 figures and the original architecture's counts under the same
# convention (from the issue that commissioned this table), GFLOPs per level.
PAPER_GFLOPS = {
    "fractalmar-in64": [215, 208, 15],
    "fractalmar-large-in256": [215, 208, 419, 22],
}
PAPER_TOTAL = {"fractalmar-in64": 438, "mar-2level-in64": 5516}
ORIGINAL_GFLOPS = {
    "fractalmar-in64": [214.8, 207.5, 15.1],
    "fractalmar-large-in256": [215.2, 207.7, 417.8, 21.6],
}
ORIGINAL_TOTAL = {"mar-2level-in64": 5513.0}
RESULTS = Path(__file__).resolve().parent / "results"


def mean_mask_ratio() -> float:
    """E[r] of the paper's mask ratio: a normal(1, 0.25) truncated to [0, 1]."""
    a, b = -4.0, 0.0  # standardised bounds
    phi = lambda z: math.exp(-z * z / 2) / math.sqrt(2 * math.pi)  # noqa: E731
    cdf = lambda z: 0.5 * (1 + math.erf(z / math.sqrt(2)))  # noqa: E731
    return 1.0 + 0.25 * (phi(a) - phi(b)) / (cdf(b) - cdf(a))


def _count(fn, *args, **kwargs) -> int:
    with FlopCounterMode(display=False) as counter:
        fn(*args, **kwargs)
    return counter.get_total_flops()


def level_flops(model: Fractal, *, executed: bool, ratio: float = 1.0) -> list[float]:
    """Forward FLOPs per generator (top first, leaf last) at batch 1.

    Args:
        model: a Fractal built on the meta device.
        executed: False = the paper's convention; True = what a training forward runs
            (condition tokens, mask ratio ``ratio`` at MAR levels, output logits).
        ratio: fraction of a MAR level's children scored and passed down when ``executed``.
    """
    out = []
    instances = 1.0
    dev = torch.device("meta")
    for gen in model.levels:
        if isinstance(gen, Level):
            k, width = gen.num_children, gen.width
            p = gen.partitioner.child_numel
            n = max(1, round(instances))
            tokens = k + (gen.num_prefix if executed and hasattr(gen, "num_prefix") else 0)
            x = torch.empty(n, tokens, width, device=dev)
            children = torch.empty(n, k, p, device=dev)
            causal = not getattr(gen, "uses_orders", False)
            flops = _count(gen.backbone, x, causal=causal)
            flops += _count(gen.inputs.patch_emb.proj, children)
            if executed:
                cond = torch.empty(n, gen.cond_tokens, gen.cond_dim, device=dev)
                flops += _count(gen.inputs.cond_emb, cond)
            out.append(flops * instances / n)
            passed = ratio if (executed and getattr(gen, "uses_orders", False)) else 1.0
            instances *= k * passed
        elif not hasattr(gen, "backbone"):  # a leaf that is only an output head (categorical)
            n = max(1, round(instances))
            flops = 0
            if executed:
                x = torch.zeros(n, gen.num_elements, dtype=torch.long, device=dev)
                cond = torch.empty(n, gen.cond_tokens, gen.cond_dim, device=dev)
                flops = _count(gen.element_logits, x, cond)
            out.append(flops * instances / n)
        else:  # the leaf: 3 tokens (condition, R, G) through its blocks, plus the projection
            n = max(1, round(instances))
            e, width = gen.num_elements, gen.cond_proj.out_features
            x = torch.empty(n, e, width, device=dev)
            cond = torch.empty(n, gen.cond_dim, device=dev)
            flops = _count(gen.backbone, x, causal=True)
            flops += _count(gen.cond_proj, cond)
            if executed:  # the V-way output logits, tied to the codebooks
                flops += 2 * n * e * width * gen.num_values
            out.append(flops * instances / n)
    return out


def two_level_mar_64() -> Fractal:
    """The paper's 2-level 64x64 variant (Table 2): one MAR level over all 4096 pixels + leaf."""
    return Fractal(
        [(ImagePatches(64, 1), MARLevelConfig(width=1024, depth=32, heads=16))],
        leaf=RGBLeafConfig(width=128, depth=3, heads=4),
        num_classes=1000,
    )


def main() -> dict:
    ratio = mean_mask_ratio()
    rows = {}
    builders = {name: (lambda name=name: build_preset(name)) for name in PRESETS}
    builders["mar-2level-in64"] = two_level_mar_64
    for name, build in builders.items():
        with torch.device("meta"):
            model = build()
        if not name.startswith(("fractal", "mar-")):  # small CPU presets: not in the paper
            continue
        params = transformer_block_parameters(model)
        paper = level_flops(model, executed=False)
        executed = level_flops(model, executed=True, ratio=ratio)
        rows[name] = {
            "block_params_M": [p / 1e6 for p in params],
            "total_params_M": sum(p.numel() for p in model.parameters()) / 1e6,
            "gflops_paper_convention": [f / 1e9 for f in paper],
            "gflops_total": sum(paper) / 1e9,
            "paper_gflops": PAPER_GFLOPS.get(name),
            "original_code_gflops": ORIGINAL_GFLOPS.get(name),
            "paper_total_gflops": PAPER_TOTAL.get(name),
            "original_code_total_gflops": ORIGINAL_TOTAL.get(name),
            "train_step_executed_gflops": 3 * sum(executed) / 1e9,
            "train_forward_executed_gflops_per_level": [f / 1e9 for f in executed],
        }
    print(f"mean MAR mask ratio E[r] = {ratio:.4f}\n")
    header = f"{'preset':26s} {'level':>5s} {'params(M)':>10s} {'GFLOPs':>9s} {'paper':>7s} {'orig':>7s} {'diff':>7s}"
    print(header)
    print("-" * len(header))
    for name, row in rows.items():
        for i, (p, g) in enumerate(zip(row["block_params_M"], row["gflops_paper_convention"], strict=True)):
            paper = row["paper_gflops"][i] if row["paper_gflops"] else None
            orig = row["original_code_gflops"][i] if row["original_code_gflops"] else None
            diff = f"{100 * (g - orig) / orig:+.2f}%" if orig else ""
            print(
                f"{name:26s} {'g' + str(i + 1):>5s} {p:10.2f} {g:9.1f} "
                f"{paper if paper is not None else '-':>7} {orig if orig is not None else '-':>7} {diff:>7s}"
            )
        total, orig = row["gflops_total"], row["original_code_total_gflops"]
        diff = f"{100 * (total - orig) / orig:+.2f}%" if orig else ""
        print(
            f"{name:26s} {'all':>5s} {row['total_params_M']:10.1f} {total:9.1f} "
            f"{row['paper_total_gflops'] or '-':>7} {orig or '-':>7} {diff:>7s}"
            f"   one training step executes {row['train_step_executed_gflops']:.0f} GFLOPs (fwd+bwd)"
        )
    RESULTS.mkdir(exist_ok=True)
    out = {"convention": __doc__.strip().splitlines()[2:8], "mean_mask_ratio": ratio, "rows": rows}
    (RESULTS / "cost_table.json").write_text(json.dumps(out, indent=2))
    return out


if __name__ == "__main__":
    main()
