"""Does ``Fractal.compile()`` (inductor) give the eager model's likelihoods?

Builds the two small test models of ``tests/test_compile.py`` (AR and MAR levels, 8x8 RGB, an RGB
leaf) twice from one seed, compiles one, and prints the largest difference of ``log_prob`` and of
the step-by-step decoding path (``stepwise_log_prob``) between them, beside the size of the
log-likelihoods (float32 totals of ~1,000 nats: one rounding step of such a sum is 1.2e-4).

Run: ``python benchmarks/compile_check.py`` (writes benchmarks/results/compile_check.json).
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
from test_compile import _model  # the models the tests use

RESULTS = Path(__file__).resolve().parent / "results"


def main() -> dict:
    rows = {}
    for kind in ("ar", "mar"):
        eager, compiled = _model(kind), _model(kind).compile()
        x = torch.randint(0, 256, (4, 3, 8, 8), generator=torch.Generator().manual_seed(5))
        y = torch.tensor([0, 1, 2, 3])
        orders = "identity" if kind == "mar" else None
        with torch.no_grad():
            lp_e = eager.log_prob(x, y, orders=orders).value
            lp_c = compiled.log_prob(x, y, orders=orders).value
            step_e = eager.stepwise_log_prob(x, y, orders=orders)
            step_c = compiled.stepwise_log_prob(x, y, orders=orders)
        rows[kind] = {
            "max_abs_diff_log_prob": float((lp_c - lp_e).abs().max()),
            "max_abs_diff_stepwise": float((step_c - step_e).abs().max()),
            "max_abs_log_prob": float(lp_e.abs().max()),
        }
        print(kind, json.dumps(rows[kind]))
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "compile_check.json").write_text(json.dumps({"torch": torch.__version__, **rows}, indent=2))
    return rows


if __name__ == "__main__":
    main()
