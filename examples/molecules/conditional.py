"""Property-conditioned molecules: the QM9 graph fractal conditioned on logP and ring count.

Shape letters: N molecules, P = 2 properties.

The graph fractal of ``train.py`` gets a :class:`fractalkit.Vector` conditioner over two RDKit
properties of each training molecule (computed from its canonical SMILES):

- **Crippen logP** (``Crippen.MolLogP``): continuous, spread over about -4..3 in QM9 and set
  mostly by the atom types (C against N, O, F), which the model's atom tokens control directly.
- **ring count** (``rdMolDescriptors.CalcNumRings``, 0..6): a structural property, set by the
  bonds (ring closures), so it tests that the condition reaches the bond levels too.

Heavy-atom count was rejected (almost every QM9 molecule has 9 heavy atoms) and QED (a
composite that is nearly flat over QM9's small molecules). Properties are normalised with the
training set's mean and std (``Vector.fitted``); training drops a whole condition with
probability 0.1 (for guidance) and each property with 0.3 (so one can be requested alone).

Evaluation: for each property, a grid of requested values across the training data's range
(5th to 95th percentile), the other property marked missing; ``--per-value`` samples per
requested value, from the conditional model at each guidance scale and, as the reference, from
the conditional network under its learned null condition (the unconditional model that
condition dropout trains, the one guidance uses); with ``--train-reference`` also from
``train.py``'s unconditional model trained on the same data for the same budget. Per set: validity (no valence
correction), uniqueness, novelty, and among the valid samples the mean absolute error between
requested and achieved property and their Spearman correlation. For the references each sample
is paired with the request it would have served, so their MAE and correlation are what chance
gives.

Usage (from the repository root)::

    PYTHONPATH=. python examples/molecules/conditional.py --limit 40000 --budget-s 180 \\
        --out examples/molecules/results_conditional
"""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import torch

from fractalkit import Vector, cli
from fractalkit.training import budget

HERE = Path(__file__).resolve().parent
_spec = importlib.util.spec_from_file_location("molecules_train", HERE / "train.py")
base = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(base)

PROPERTIES = ("logP", "rings")


def properties(smiles: list[str | None]) -> torch.Tensor:
    """float64 ``[N, 2]``: Crippen logP and ring count of each SMILES (NaN rows for None)."""
    from rdkit import Chem, RDLogger
    from rdkit.Chem import Crippen, rdMolDescriptors

    RDLogger.DisableLog("rdApp.*")
    out = []
    for s in smiles:
        mol = Chem.MolFromSmiles(s) if s is not None else None
        if mol is None:
            out.append([float("nan")] * 2)
        else:
            out.append([Crippen.MolLogP(mol), float(rdMolDescriptors.CalcNumRings(mol))])
    return torch.tensor(out, dtype=torch.float64)


def spearman(a: torch.Tensor, b: torch.Tensor) -> float:
    """Spearman's rank correlation of two 1-D tensors (average ranks for ties)."""
    from scipy.stats import spearmanr

    if a.numel() < 3:
        return float("nan")
    return float(spearmanr(a.numpy(), b.numpy()).statistic)


def request_grid(train_props: torch.Tensor, points: int) -> list[tuple[int, list[float]]]:
    """``[(property index, requested values)]``: ``points`` values from the 5th to the 95th
    percentile of each property (ring counts rounded to integers, duplicates dropped)."""
    grid = []
    for j, name in enumerate(PROPERTIES):
        qs = torch.quantile(train_props[:, j], torch.linspace(0.05, 0.95, points, dtype=torch.float64))
        values = qs.tolist() if name == "logP" else sorted({float(round(v)) for v in qs.tolist()})
        grid.append((j, values))
    return grid


def conditions(j: int, values: list[float], per_value: int) -> tuple[torch.Tensor, torch.Tensor]:
    """``(c, requested)``: a Vector condition ``(values [M, 2], missing [M, 2])`` asking for
    property ``j`` only, and the requested values ``[M]`` (M = per_value * len(values))."""
    requested = torch.tensor(values, dtype=torch.float32).repeat_interleave(per_value)
    v = torch.zeros(requested.shape[0], len(PROPERTIES))
    v[:, j] = requested
    missing = torch.ones_like(v, dtype=torch.bool)
    missing[:, j] = False
    return (v, missing), requested


def evaluate(samples: torch.Tensor, j: int, requested: torch.Tensor, training: set[str]) -> dict[str, float]:
    """Sample metrics and, over the valid samples, MAE and Spearman against the request."""
    smiles, _ = base.encodings_to_smiles(samples)
    out = base.sample_metrics(smiles, training)
    achieved = properties(smiles)[:, j]
    ok = torch.isfinite(achieved)
    out["mae"] = float((achieved[ok] - requested[ok].double()).abs().mean()) if ok.any() else float("nan")
    out["spearman"] = spearman(requested[ok].double(), achieved[ok])
    return out


def table(results: dict) -> str:
    """The Markdown results table."""
    lines = [
        "| property | samples from | guidance | valid | unique | novel | MAE | Spearman |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for name, rows in results["by_property"].items():
        for row in rows:
            lines.append(
                f"| {name} | {row['model']} | {row['guidance']} | {100 * row['validity']:.1f}% | "
                f"{100 * row['uniqueness']:.1f}% | {100 * row['novelty']:.1f}% | {row['mae']:.3f} | "
                f"{row['spearman']:.3f} |"
            )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    """Train the conditional fractal, sample on the request grid, print and write the table."""
    ap = cli.ArgumentParser(description=__doc__.split("\n")[0])
    # runs write under the ignored runs/; the committed figures pass --out examples/molecules/results_conditional
    budget.add_budget_arguments(ap, batch=64, out=Path("runs/molecules-conditional-results"), budget_s=180.0,
                                models="fractal", device_help="torch device")
    ap.add_argument("--data", default=base.DATA, help=base.DATA_HELP)
    ap.add_argument("--limit", type=cli.positive_int, default=40_000, help="QM9 rows read (the first ones)")
    ap.add_argument("--points", type=cli.positive_int, default=6, help="requested values per property")
    ap.add_argument("--per-value", type=cli.positive_int, default=100, help="samples per requested value")
    ap.add_argument("--guidance", type=cli.non_negative_float, nargs=2, default=(1.0, 3.0), help="two guidance scales")
    ap.add_argument("--max-steps", type=cli.positive_int, default=None,
                    help="stop training after this many steps as well (a step count that does not "
                         "depend on how loaded the machine is)")
    ap.add_argument("--train-reference", action="store_true",
                    help="also train train.py's unconditional model (same data, budget, seed) as a "
                         "second reference")
    ap.add_argument("--cache", type=Path, default=None,
                    help="a .pt file caching the preprocessed QM9 slice (none by default)")
    cli.add_debug_argument(ap)
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    device = cli.check_device(ap, args.device)
    args.data = base.check_data_argument(ap, args.data)

    x, smiles = base.prepare(args.data, limit=args.limit, cache=args.cache)
    props = properties(smiles).float()
    keep = torch.isfinite(props).all(1)
    x, props, smiles = x[keep], props[keep], [s for s, k in zip(smiles, keep.tolist(), strict=True) if k]
    perm = torch.randperm(x.shape[0], generator=torch.Generator().manual_seed(0))
    cut = int(0.9 * x.shape[0])
    train_x, train_p = x[perm[:cut]], props[perm[:cut]]
    training = {smiles[i] for i in perm[:cut].tolist()}
    print(f"{x.shape[0]} molecules ({train_x.shape[0]} train) from the first {args.limit} QM9 rows", flush=True)

    torch.manual_seed(0)
    conditioner = Vector.fitted(train_p, drop=0.1, feature_drop=0.3)
    model = base.build_model("fractal", conditioner=conditioner).to(device)

    def next_batch(g: torch.Generator):
        i = torch.randint(0, train_x.shape[0], (args.batch,), generator=g)
        return train_x[i].to(device), train_p[i].to(device)

    log = budget.train_for_budget(model, next_batch, budget_s=args.budget_s, lr=1e-3,
                                  max_steps=args.max_steps, generator=torch.Generator().manual_seed(0))
    print("trained the conditional model", json.dumps(log), flush=True)
    model.eval()
    references = [("unconditional (null condition)", model)]
    ref_log = None
    if args.train_reference:  # train.py's unconditional model, same data, budget and seed
        torch.manual_seed(0)
        reference = base.build_model("fractal").to(device)
        ref_log = budget.train_for_budget(reference, lambda g: next_batch(g)[0], budget_s=args.budget_s,
                                          lr=1e-3, max_steps=args.max_steps,
                                          generator=torch.Generator().manual_seed(0))
        print("trained the unconditional model", json.dumps(ref_log), flush=True)
        references.insert(0, ("unconditional model", reference.eval()))
    results = {
        "command": "PYTHONPATH=. python examples/molecules/conditional.py " + " ".join(
            f"--{k.replace('_', '-')} {v}" for k, v in [("limit", args.limit), ("budget_s", args.budget_s),
                                                        ("points", args.points), ("per_value", args.per_value),
                                                        ("threads", args.threads)])
            + (f" --max-steps {args.max_steps}" if args.max_steps is not None else "")
            + (" --train-reference" if args.train_reference else ""),
        "training": {**log, "batch": args.batch, "device": budget.device_description(device, args.threads),
                     "note": "CPU shared with three other jobs: timings are contended"},
        **({"training_unconditional": ref_log} if ref_log is not None else {}),
        "properties": list(PROPERTIES),
        "conditioner": conditioner.to_dict(),
        "by_property": {},
    }
    g = torch.Generator().manual_seed(1)
    for j, values in request_grid(train_p.double(), args.points):
        name = PROPERTIES[j]
        c, requested = conditions(j, values, args.per_value)
        rows = []
        for label, sampler in references:
            with budget.Stopwatch(device) as clock:
                ref = sampler.sample(requested.shape[0], generator=g)
            rows.append({"model": label, "guidance": "-", "seconds": clock.seconds,
                         **evaluate(ref.cpu(), j, requested, training)})
        for w in args.guidance:
            with budget.Stopwatch(device) as clock:
                out = model.sample(c=(c[0].to(device), c[1].to(device)), guidance=w, generator=g)
            rows.append({"model": "conditional", "guidance": w, "seconds": clock.seconds,
                         **evaluate(out.cpu(), j, requested, training)})
        results["by_property"][name] = rows
        results.setdefault("requested", {})[name] = values
        print(name, json.dumps(rows), flush=True)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "results.json").write_text(json.dumps(results, indent=2) + "\n")
    print(table(results))


if __name__ == "__main__":
    cli.run(main)
