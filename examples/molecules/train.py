"""A graph fractal over QM9 molecules vs a flat AR model, trained on CPU for equal wall-clock.

Shape letters: N molecules, n = 9 heavy atoms at most, W = 9 entries per atom row,
V = 5 values (atom types C, N, O, F plus "no atom"; bond types single, double, triple plus
"no bond").

Data: QM9's SMILES, dropping the ones with a formal charge (about 28k carry charge artefacts)
and any that RDKit cannot parse; molecules are kekulised (no aromatic bond type), hydrogens are
implicit. Atoms are put in a canonical order: RDKit's canonical ranking, then breadth-first from
the atom ranked first (:func:`fractalkit.partition.bfs_order`). A molecule becomes a
:class:`fractalkit.partition.GraphEncoding` of ``9 x 9 = 81`` integers, 45 of which carry
information (9 atom slots with an end value, 36 bond slots to earlier atoms). Split: a seeded
random 90% / 10% train / test.

The fractal: ``GraphSubsets(9 atoms -> 3 subsets of 3)`` -> ``GraphSubsets(3 -> single atoms)``
-> ``SequenceChunks(9, 1)`` (an atom's type and bonds) -> a categorical leaf over V = 5; all AR
levels with table (one-hot) embeddings. The flat baseline: one AR level over the 81 integers.

Metrics: exact NLL per molecule on the test set (nats; also per information-carrying element:
/ 45); on sampled molecules, validity *without any valence correction* (the encoding decodes to
a graph and ``Chem.SanitizeMol`` accepts it), uniqueness (distinct canonical SMILES among the
valid ones) and novelty (unique valid ones absent from the training set).

Usage (from the repository root)::

    python examples/molecules/train.py --budget-s 240 --num-samples 10000 --out examples/molecules/results
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
from torch.utils.flop_counter import FlopCounterMode

from fractalkit import ARLevelConfig, CategoricalLeafConfig, ConditionerConfig, Fractal, cli
from fractalkit.partition import Graph, GraphEncoding, SequenceChunks, bfs_order
from fractalkit.training import budget

DATA = Path(__file__).resolve().parents[2].parent / "shared" / "data" / "qm9" / "qm9.csv"
ATOMS = ("C", "N", "O", "F")
MAX_ATOMS = 9
#: bond value in the adjacency: 1 single, 2 double, 3 triple (0: no bond)
BOND_ORDERS = {1.0: 1, 2.0: 2, 3.0: 3}
ENCODING = GraphEncoding(MAX_ATOMS, num_node_types=len(ATOMS), num_edge_types=len(BOND_ORDERS))


def read_smiles(path: Path = DATA, limit: int | None = None) -> list[str]:
    """The SMILES column of ``qm9.csv`` (the first ``limit`` rows if given)."""
    lines = Path(path).read_text().splitlines()
    if lines[0].strip() != "smiles":
        raise ValueError(f"read_smiles: expected a 'smiles' header in {path}, got {lines[0]!r}")
    rows = [s.strip() for s in lines[1:] if s.strip()]
    return rows if limit is None else rows[:limit]


def molecules_to_graphs(smiles: list[str]) -> Graph:
    """Neutral closed-shell molecules as canonically ordered graphs.

    Molecules with a formal charge or a radical (a graph with implicit hydrogens cannot hold
    either), an atom outside C/N/O/F, more than 9 heavy atoms, or that RDKit cannot parse or
    kekulise are dropped. Stereochemistry is not represented.

    Args:
        smiles: SMILES strings.

    Returns:
        A :class:`Graph` (node types index ``ATOMS``, adjacency values 1/2/3 for
        single/double/triple bonds) in BFS order from RDKit's first-ranked atom.
    """
    from rdkit import Chem, RDLogger

    RDLogger.DisableLog("rdApp.*")
    types, adjs, sizes = [], [], []
    for s in smiles:
        mol = Chem.MolFromSmiles(s)
        if mol is None or mol.GetNumAtoms() > MAX_ATOMS:
            continue
        if any(a.GetFormalCharge() != 0 or a.GetNumRadicalElectrons() != 0
               or a.GetSymbol() not in ATOMS for a in mol.GetAtoms()):
            continue
        ranks = list(Chem.CanonicalRankAtoms(mol))
        mol = Chem.RenumberAtoms(mol, sorted(range(len(ranks)), key=ranks.__getitem__))
        try:
            Chem.Kekulize(mol, clearAromaticFlags=True)
        except Exception:  # RDKit raises its own KekulizeException
            continue
        t = [0] * MAX_ATOMS
        a = [[0] * MAX_ATOMS for _ in range(MAX_ATOMS)]
        for atom in mol.GetAtoms():
            t[atom.GetIdx()] = ATOMS.index(atom.GetSymbol())
        bad = False
        for bond in mol.GetBonds():
            order = BOND_ORDERS.get(bond.GetBondTypeAsDouble())
            if order is None:
                bad = True
                break
            i, j = bond.GetBeginAtomIdx(), bond.GetEndAtomIdx()
            a[i][j] = a[j][i] = order
        if bad:
            continue
        types.append(t)
        adjs.append(a)
        sizes.append(mol.GetNumAtoms())
    t = torch.tensor(types, dtype=torch.int64).view(-1, MAX_ATOMS)
    a = torch.tensor(adjs, dtype=torch.int64).view(-1, MAX_ATOMS, MAX_ATOMS)
    mask = torch.arange(MAX_ATOMS)[None] < torch.tensor(sizes, dtype=torch.int64)[:, None]
    graphs = Graph(t, a, mask)
    return graphs.permute(bfs_order(graphs, root=0))


def prepare(path: Path = DATA, *, limit: int | None = None, cache: Path | None = None):
    """Encoded molecules and their canonical SMILES (as rebuilt from the graphs), cached.

    Args:
        path: ``qm9.csv``.
        limit: use the first ``limit`` rows only.
        cache: a ``.pt`` file to read the result from, or to write it to (preprocessing QM9
            takes a few minutes); None: no cache.

    Returns:
        ``(x, smiles)``: int64 ``[N, 81]`` encodings and N canonical SMILES.
    """
    if cache is not None and Path(cache).exists():
        saved = torch.load(cache)
        return saved["x"].long(), saved["smiles"]
    graphs = molecules_to_graphs(read_smiles(path, limit))
    x = ENCODING.encode(graphs)
    smiles = graph_to_smiles(graphs, torch.ones(len(graphs), dtype=torch.bool))
    keep = [i for i, s in enumerate(smiles) if s is not None]  # all of them, in practice
    x, smiles = x[keep], [smiles[i] for i in keep]
    if cache is not None:
        Path(cache).parent.mkdir(parents=True, exist_ok=True)
        torch.save({"x": x.to(torch.uint8), "smiles": smiles}, cache)
    return x, smiles


def graph_to_smiles(graph: Graph, valid: torch.Tensor) -> list[str | None]:
    """Canonical SMILES of each decoded graph, or None where it is not a molecule.

    No valence correction: a graph is a molecule when its encoding was valid, it has at least
    one atom, and ``Chem.SanitizeMol`` accepts it as built (neutral atoms, implicit hydrogens).
    """
    from rdkit import Chem, RDLogger

    RDLogger.DisableLog("rdApp.*")
    bond_types = {1: Chem.BondType.SINGLE, 2: Chem.BondType.DOUBLE, 3: Chem.BondType.TRIPLE}
    out: list[str | None] = []
    types, adj, mask = graph.node_types.tolist(), graph.adjacency.tolist(), graph.node_mask.tolist()
    for g, ok in enumerate(valid.tolist()):
        n = sum(mask[g])
        if not ok or n == 0:
            out.append(None)
            continue
        mol = Chem.RWMol()
        for i in range(n):
            mol.AddAtom(Chem.Atom(ATOMS[types[g][i]]))
        for i in range(n):
            for j in range(i):
                if adj[g][i][j]:
                    mol.AddBond(i, j, bond_types[adj[g][i][j]])
        try:
            Chem.SanitizeMol(mol)
        except Exception:  # valence errors and the like: invalid, not repaired
            out.append(None)
            continue
        out.append(Chem.MolToSmiles(mol))
    return out


def sample_metrics(smiles: list[str | None], training: set[str]) -> dict[str, float]:
    """Validity, uniqueness (of the valid) and novelty (of the unique valid), as fractions."""
    valid = [s for s in smiles if s is not None]
    unique = set(valid)
    return {
        "num_samples": len(smiles),
        "validity": len(valid) / max(len(smiles), 1),
        "uniqueness": len(unique) / max(len(valid), 1),
        "novelty": len(unique - training) / max(len(unique), 1),
        "connected": sum("." not in s for s in valid) / max(len(valid), 1),
    }


def build_model(kind: str, *, small: bool = False, conditioner: ConditionerConfig | None = None) -> Fractal:
    """The graph fractal (``"fractal"``) or the flat baseline (``"flat"``), unconditional
    unless a ``conditioner`` is given (``conditional.py`` gives a :class:`fractalkit.Vector`).

    Raises:
        ValueError: for an unknown ``kind``.
    """
    leaf = CategoricalLeafConfig(num_values=ENCODING.num_values)

    def level(width: int, depth: int) -> ARLevelConfig:
        return ARLevelConfig(width=16 if small else width, depth=1 if small else depth,
                             heads=2 if small else 4, embed="table")

    if kind == "fractal":
        parts = ENCODING.partitioners((3, 3))  # 9 atoms -> 3 x 3 atoms -> atoms -> elements
        levels = list(zip(parts, [level(128, 2), level(96, 2), level(64, 1)], strict=True))
    elif kind == "flat":
        levels = [(SequenceChunks(ENCODING.event_shape[0], 1), level(128, 4))]
    else:
        raise ValueError(f"build_model: kind must be 'fractal' or 'flat', got {kind!r}")
    return Fractal(levels, leaf=leaf, conditioner=conditioner)


def train(model: Fractal, x: torch.Tensor, *, budget_s: float, batch: int = 64, lr: float = 1e-3,
          max_steps: int | None = None, seed: int = 0) -> dict[str, float]:
    """AdamW for ``budget_s`` seconds of wall-clock (or ``max_steps``): 20 warm-up steps, then a
    cosine in elapsed time / budget (:func:`fractalkit.training.train_for_budget`); batches
    drawn uniformly from the encodings.

    Returns:
        ``{"steps", "seconds", "s_per_step", "last_loss_nats_per_element"}``.
    """

    def next_batch(g: torch.Generator) -> torch.Tensor:
        return x[torch.randint(0, x.shape[0], (batch,), generator=g)]

    log = budget.train_for_budget(model, next_batch, budget_s=budget_s, lr=lr, max_steps=max_steps,
                                  generator=torch.Generator().manual_seed(seed))
    log["last_loss_nats_per_element"] = log.pop("last_loss_nats")
    return log


@torch.no_grad()
def nll_per_molecule(model: Fractal, x: torch.Tensor, *, batch: int = 1024) -> float:
    """Exact mean negative log-likelihood per molecule, in nats."""
    model.eval()
    device = next(model.parameters()).device
    total = 0.0
    for i in range(0, x.shape[0], batch):
        lp = model.log_prob(x[i : i + batch].to(device))
        assert lp.kind == "exact"
        total += float(lp.value.sum())
    return -total / x.shape[0]


def flops_per_example(model: Fractal, x: torch.Tensor) -> int:
    """FLOPs of one teacher-forced ``log_prob`` on one molecule (FlopCounterMode; autograd on,
    because its module tracker fails under ``torch.no_grad``)."""
    model.eval()
    counter = FlopCounterMode(display=False)
    with counter:
        model.log_prob(x[:1].to(next(model.parameters()).device))
    return int(counter.get_total_flops())


@torch.no_grad()
def sample_encodings(model: Fractal, n: int, *, batch: int = 1000, seed: int = 0) -> tuple[torch.Tensor, float]:
    """``(encodings [n, 81] on the CPU, seconds per sample)``: temperature 1, KV cache."""
    model.eval()
    device = next(model.parameters()).device
    g = torch.Generator().manual_seed(seed)
    out, seconds = [], 0.0
    for i in range(0, n, batch):
        with budget.Stopwatch(device) as clock:
            x = model.sample(num_samples=min(batch, n - i), generator=g)
        seconds += clock.seconds
        out.append(x.cpu())
    return torch.cat(out), seconds / max(n, 1)


def encodings_to_smiles(x: torch.Tensor) -> tuple[list[str | None], float]:
    """``(SMILES or None per encoding, fraction of encodings that are graphs)``."""
    graphs, valid = ENCODING.decode(x)
    return graph_to_smiles(graphs, valid), float(valid.float().mean()) if x.shape[0] else 0.0


def split(x: torch.Tensor, smiles: list[str]) -> tuple[torch.Tensor, torch.Tensor, set[str]]:
    """``(train_x, test_x, training SMILES)``: a seeded random 90% / 10% split."""
    perm = torch.randperm(x.shape[0], generator=torch.Generator().manual_seed(0))
    cut = int(0.9 * x.shape[0])
    return x[perm[:cut]], x[perm[cut:]], {smiles[i] for i in perm[:cut].tolist()}


def table(results: dict[str, dict], batch: int) -> str:
    """The Markdown results table."""
    lines = [
        "| model | test NLL nats / molecule | nats / element (45) | params | MFLOPs / molecule | "
        f"train s / step (batch {batch}) | steps | sample ms / molecule | samples | "
        "valid (no correction) | unique | novel |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for kind, r in results.items():
        lines.append(
            f"| {kind} | {r['test_nll_nats_per_molecule']:.2f} | "
            f"{r['test_nll_nats_per_free_element']:.3f} | {r['params'] / 1e6:.2f}M | "
            f"{r['flops_per_example'] / 1e6:.1f} | {r['train_s_per_step']:.3f} | {r['train_steps']} | "
            f"{1e3 * r['sample_s_per_example']:.2f} | {r.get('num_samples', '-')} | "
            f"{100 * r.get('validity', float('nan')):.1f}% | {100 * r.get('uniqueness', float('nan')):.1f}% | "
            f"{100 * r.get('novelty', float('nan')):.1f}% |"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    """Train both models for the same wall-clock budget, evaluate, sample and print the table.

    With ``--metrics-only``, read ``results.json`` and ``samples_<kind>.pt`` from ``--out``
    (e.g. written on a machine without RDKit) and add the sample metrics.
    """
    ap = cli.ArgumentParser(description=__doc__.split("\n")[0])
    budget.add_budget_arguments(ap, batch=64, out=Path(__file__).parent / "results",
                                device_help="torch device (the issue asks for cpu)")
    ap.add_argument("--num-samples", type=cli.positive_int, default=10_000)
    ap.add_argument("--cache", type=Path, default=Path.home() / ".cache" / "fractalkit" / "qm9_graphs.pt",
                    help="preprocessed QM9 (computed from the CSV on the first run)")
    ap.add_argument("--metrics-only", action="store_true",
                    help="only compute sample metrics from results.json and samples_*.pt in --out")
    cli.add_debug_argument(ap)
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    x, smiles = prepare(cache=args.cache)
    train_x, test_x, training = split(x, smiles)
    print(f"{x.shape[0]} neutral molecules: {train_x.shape[0]} train, {test_x.shape[0]} test", flush=True)
    args.out.mkdir(parents=True, exist_ok=True)
    try:
        import rdkit  # noqa: F401

        have_rdkit = True
    except ImportError:
        have_rdkit = False
    if args.metrics_only:
        results = json.loads((args.out / "results.json").read_text())
        kinds = list(results)
    else:
        results, kinds = {}, args.models.split(",")
    for kind in kinds:
        if not args.metrics_only:
            torch.manual_seed(0)
            model = build_model(kind).to(device)
            log = train(model, train_x, budget_s=args.budget_s, batch=args.batch)
            nll = nll_per_molecule(model, test_x)
            samples, s_per_sample = sample_encodings(model, args.num_samples)
            torch.save(samples.to(torch.uint8), args.out / f"samples_{kind}.pt")
            results[kind] = {
                "test_nll_nats_per_molecule": nll,
                "test_nll_nats_per_free_element": nll / ENCODING.num_free_elements,
                "params": sum(p.numel() for p in model.parameters()),
                "flops_per_example": flops_per_example(model, test_x),
                "train_s_per_step": log["s_per_step"],
                "train_steps": log["steps"],
                "train_seconds": log["seconds"],
                "sample_s_per_example": s_per_sample,
                "batch": args.batch,
                "device": budget.device_description(device, args.threads),
            }
        if have_rdkit:
            samples = torch.load(args.out / f"samples_{kind}.pt").long()
            mols, enc_valid = encodings_to_smiles(samples)
            results[kind].update(encoding_valid=enc_valid, **sample_metrics(mols, training))
            (args.out / f"samples_{kind}.txt").write_text(
                "\n".join(m if m is not None else "<invalid>" for m in mols[:1000]) + "\n"
            )
        (args.out / "results.json").write_text(json.dumps(results, indent=2))
        print(kind, json.dumps(results[kind]), flush=True)
    print(table(results, results[kinds[0]]["batch"]))


if __name__ == "__main__":
    cli.run(main)
