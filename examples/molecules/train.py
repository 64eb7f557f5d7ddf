"""Graph fractals over QM9 molecules vs a flat AR model, with the field's sample metrics.

Shape letters: N molecules, n = 9 heavy atoms at most, W = 9 entries per atom row, A atom
types, V = A + 1 values (atom types plus "no atom"; bond types single, double, triple plus
"no bond" fit below).

Data: QM9's SMILES. Two atom vocabularies:

- ``neutral`` (the original example): atom types C, N, O, F; molecules with a formal charge
  (about 28k) are dropped.
- ``charged``: atom types are the (element, formal charge) pairs found in QM9 (C, N, O, F,
  N+, N-, C+, C-, O-, O+); charged molecules are kept and decoding writes the charge back.

Both drop radicals (a graph with implicit hydrogens cannot hold one), SMILES RDKit cannot
parse, and molecules that cannot be kekulised. Molecules are kekulised (no aromatic bond type),
hydrogens are implicit. Atoms are put in a canonical order: RDKit's canonical ranking, then
breadth-first from the atom ranked first (:func:`fractalkit.graphs.bfs_order`). A molecule
becomes a :class:`fractalkit.graphs.GraphEncoding` of ``9 x 9 = 81`` integers, 45 of which
carry information (9 atom slots with an end value, 36 bond slots to earlier atoms). Split: a
seeded random 90% / 10% train / test.

Models (``--models``, comma-separated; ``+`` adds options to a base model):

- ``fractal``: ``GraphSubsets(9 atoms -> 3 subsets of 3)`` -> ``GraphSubsets(3 -> single atoms)``
  -> ``SequenceChunks(9, 1)`` (an atom's type and bonds) -> a categorical leaf over V values;
  AR levels with table (one-hot) embeddings.
- ``flat``: one AR level over the 81 integers, the same leaf.
- ``+slots``: the leaf is a :class:`fractalkit.leaves.SlotCategoricalLeafConfig` built from
  ``GraphEncoding.slot_kinds_config()``: it sees whether it fills an atom slot, a bond slot or
  a structural zero, puts no probability on structural zeros (their log-probability is 0) nor
  on values above the slot's range.
- ``+charges``: the ``charged`` vocabulary (otherwise ``neutral``).
- ``+randbfs``: train on a fresh random-BFS encoding of every molecule at every step
  (:func:`fractalkit.graphs.random_bfs_encodings`, seeded) instead of its one canonical
  encoding; evaluation and sampling are unchanged.

Metrics: the exact NLL of each test molecule's *canonical encoding* (nats; also per
information-carrying element: / 45): a bound, since p(molecule) >= p(one encoding); on
``--orderings-molecules`` seeded test molecules, the importance-sampled estimate of log p(molecule)
over ``--orderings`` random BFS orders (:func:`fractalkit.graphs.graph_log_likelihood`: the
model's mass on the molecule's BFS encodings plus its canonical one, in expectation a lower
bound on log p(molecule) by Jensen) with its standard errors; on sampled molecules, validity *without correction* (the encoding decodes to a graph
and ``Chem.SanitizeMol`` accepts it as built), uniqueness (distinct canonical SMILES among the
valid ones), novelty against the training split and against the full QM9 (every parseable
SMILES of the CSV, canonical, stereochemistry dropped), and FCD (the ``fcd`` package's ChemNet,
valid samples against 10,000 QM9 molecules). Every model is sampled twice: plainly, and with
valence-aware decoding (``SampleOptions.constraint``: each bond slot may only take bond orders
both atoms still have valence for; see :func:`valence_constraint`).

Usage (from the repository root)::

    python examples/molecules/train.py --max-steps 1500 --num-samples 10000 --out examples/molecules/results
"""

from __future__ import annotations

import itertools
import json
import time
from collections import Counter
from pathlib import Path

import torch
from torch.utils.flop_counter import FlopCounterMode
from tqdm import tqdm

from fractalkit import ARLevelConfig, CategoricalLeafConfig, ConditionerConfig, Fractal, cli
from fractalkit.data import hub_datasets
from fractalkit.graphs import (
    Graph,
    GraphEncoding,
    bfs_order,
    graph_log_likelihood,
    random_bfs_encodings,
)
from fractalkit.leaves import SlotCategoricalLeafConfig
from fractalkit.partition import SequenceChunks
from fractalkit.training import budget
from fractalkit.validation import read_json_file

#: the default data: QM9 on the Hugging Face Hub (180 MB, downloaded once and cached); ``--data``
#: also takes a local .csv with a smiles column (or one SMILES per line, no header) or a .parquet
#: file, such as ``../shared/data/qm9/qm9.csv``
DATA = "yairschiff/qm9"
#: atom types (element, formal charge): the original neutral vocabulary
NEUTRAL_ATOMS: tuple[tuple[str, int], ...] = (("C", 0), ("N", 0), ("O", 0), ("F", 0))
#: every (element, formal charge) pair in QM9's closed-shell molecules, most frequent first
CHARGED_ATOMS: tuple[tuple[str, int], ...] = (
    *NEUTRAL_ATOMS, ("N", 1), ("N", -1), ("C", 1), ("C", -1), ("O", -1), ("O", 1))
#: element symbols of the neutral vocabulary (what ``conditional.py`` and older code read)
ATOMS = tuple(symbol for symbol, _ in NEUTRAL_ATOMS)
MAX_ATOMS = 9
#: bond value in the adjacency: 1 single, 2 double, 3 triple (0: no bond)
BOND_ORDERS = {1.0: 1, 2.0: 2, 3.0: 3}
ENCODING = GraphEncoding(MAX_ATOMS, num_node_types=len(NEUTRAL_ATOMS), num_edge_types=len(BOND_ORDERS))
CHARGED_ENCODING = GraphEncoding(MAX_ATOMS, num_node_types=len(CHARGED_ATOMS), num_edge_types=len(BOND_ORDERS))


def encoding_for(atoms: tuple[tuple[str, int], ...]) -> GraphEncoding:
    """The graph encoding of a vocabulary (A = its size, 3 bond types)."""
    return GraphEncoding(MAX_ATOMS, num_node_types=len(atoms), num_edge_types=len(BOND_ORDERS))


def read_smiles(path: str | Path = DATA, limit: int | None = None) -> list[str]:
    """The SMILES column of QM9 (the first ``limit`` rows if given).

    Args:
        path: a Hub dataset name with a SMILES column (mapped by
            :mod:`fractalkit.data.hub_datasets`), a ``.parquet`` file with a ``smiles`` column,
            or a text/CSV file whose first line is the header ``smiles`` (one SMILES per line).
        limit: the first ``limit`` rows only.

    Raises:
        ValueError: no smiles column or header, or no rows.
    """
    if hub_datasets.is_hub_name(path) or str(path).lower().endswith(".parquet"):
        if hub_datasets.is_hub_name(path):
            ds = hub_datasets.load_hub_dataset(str(path), kind="smiles")
        else:
            import datasets

            ds = datasets.load_dataset("parquet", data_files=str(path), split="train")
            ds = ds.rename_columns({c: "smiles" for c in ds.column_names if c.lower() == "smiles" and c != "smiles"})
        if "smiles" not in ds.column_names:
            raise ValueError(f"read_smiles: {path} has no smiles column (columns: {ds.column_names})")
        if limit is not None:
            ds = ds.select(range(min(limit, len(ds))))
        rows = [s.strip() for s in ds["smiles"] if s and s.strip()]
    else:
        lines = Path(path).read_text(encoding="utf-8").splitlines()
        if not lines or lines[0].strip().lower() != "smiles":
            raise ValueError(f"read_smiles: expected a 'smiles' header in {path}, got {lines[0] if lines else ''!r}")
        rows = [s.strip() for s in lines[1:] if s.strip()]
        rows = rows if limit is None else rows[:limit]
    if not rows:
        raise ValueError(f"read_smiles: {path} holds no SMILES")
    return rows


DATA_HELP = (f"QM9's SMILES: a Hugging Face Hub dataset name (default {DATA}, downloaded once and cached), "
             "a .csv with a smiles header or a .parquet file with a smiles column")


def check_data_argument(parser, value):
    """``--data`` checked after parsing: a Hub name, or a non-empty .csv/.txt/.parquet file
    (text where text is expected); one-line errors, exit code 2."""
    path = cli.check_data(parser, "--data", value, expect="file", suffixes=(".csv", ".txt", ".smi", ".parquet"),
                          what="a .csv/.txt file with a smiles header, a .parquet file or a Hub dataset name")
    if path is not None and not isinstance(path, str) and path.suffix.lower() != ".parquet":
        cli.check_data(parser, "--data", path, expect="file", text=True,
                       what="a .csv/.txt file with a smiles header (UTF-8 text)")
    return path


def max_valences(atoms: tuple[tuple[str, int], ...]) -> list[int]:
    """The largest valence RDKit accepts for each atom type (bond orders summed; implicit
    hydrogens fill the rest): a charged atom counts as its isoelectronic element (N+ as C: 4,
    O- as F: 1, C- as N: 3, C+ as B: 3, N- as O: 2, O+ as N: 3), as RDKit does."""
    from rdkit import Chem

    table = Chem.GetPeriodicTable()
    return [max(table.GetValenceList(table.GetAtomicNumber(s) - q)) for s, q in atoms]


def molecules_to_graphs(
    smiles: list[str],
    atoms: tuple[tuple[str, int], ...] = NEUTRAL_ATOMS,
    dropped: Counter | None = None,
) -> Graph:
    """Closed-shell molecules as canonically ordered graphs.

    Molecules with a radical, an atom whose (element, formal charge) is not in ``atoms`` (with
    the neutral vocabulary: any formal charge), more than 9 heavy atoms, or that RDKit cannot
    parse or kekulise are dropped. Stereochemistry is not represented.

    Args:
        smiles: SMILES strings.
        atoms: the vocabulary of (element, formal charge) atom types.
        dropped: if given, counts why molecules were dropped (updated in place).

    Returns:
        A :class:`Graph` (node types index ``atoms``, adjacency values 1/2/3 for
        single/double/triple bonds) in BFS order from RDKit's first-ranked atom.
    """
    from rdkit import Chem, RDLogger

    RDLogger.DisableLog("rdApp.*")
    dropped = Counter() if dropped is None else dropped
    index = {a: i for i, a in enumerate(atoms)}
    types, adjs, sizes = [], [], []
    for s in smiles:
        mol = Chem.MolFromSmiles(s)
        if mol is None:
            dropped["RDKit cannot parse it"] += 1
            continue
        if mol.GetNumAtoms() > MAX_ATOMS:
            dropped[f"more than {MAX_ATOMS} heavy atoms"] += 1
            continue
        if any(a.GetNumRadicalElectrons() != 0 for a in mol.GetAtoms()):
            dropped["a radical"] += 1
            continue
        if any((a.GetSymbol(), a.GetFormalCharge()) not in index for a in mol.GetAtoms()):
            charged = any(a.GetFormalCharge() for a in mol.GetAtoms())
            dropped["a formal charge" if charged else "an atom outside the vocabulary"] += 1
            continue
        ranks = list(Chem.CanonicalRankAtoms(mol))
        mol = Chem.RenumberAtoms(mol, sorted(range(len(ranks)), key=ranks.__getitem__))
        try:
            Chem.Kekulize(mol, clearAromaticFlags=True)
        except Exception:  # RDKit raises its own KekulizeException
            dropped["cannot be kekulised"] += 1
            continue
        t = [0] * MAX_ATOMS
        a = [[0] * MAX_ATOMS for _ in range(MAX_ATOMS)]
        for atom in mol.GetAtoms():
            t[atom.GetIdx()] = index[(atom.GetSymbol(), atom.GetFormalCharge())]
        bad = False
        for bond in mol.GetBonds():
            order = BOND_ORDERS.get(bond.GetBondTypeAsDouble())
            if order is None:
                bad = True
                break
            i, j = bond.GetBeginAtomIdx(), bond.GetEndAtomIdx()
            a[i][j] = a[j][i] = order
        if bad:
            dropped["a bond that is not single, double or triple"] += 1
            continue
        types.append(t)
        adjs.append(a)
        sizes.append(mol.GetNumAtoms())
    t = torch.tensor(types, dtype=torch.int64).view(-1, MAX_ATOMS)
    a = torch.tensor(adjs, dtype=torch.int64).view(-1, MAX_ATOMS, MAX_ATOMS)
    mask = torch.arange(MAX_ATOMS)[None] < torch.tensor(sizes, dtype=torch.int64)[:, None]
    graphs = Graph(t, a, mask)
    return graphs.permute(bfs_order(graphs, root=0))


def prepare(
    path: str | Path = DATA,
    *,
    limit: int | None = None,
    cache: Path | None = None,
    atoms: tuple[tuple[str, int], ...] = NEUTRAL_ATOMS,
    stats: dict | None = None,
):
    """Encoded molecules and their canonical SMILES (as rebuilt from the graphs), cached.

    Args:
        path: QM9's SMILES (see :func:`read_smiles`).
        limit: use the first ``limit`` rows only.
        cache: a ``.pt`` file to read the result from, or to write it to (preprocessing QM9
            takes a few minutes); None: no cache.
        atoms: the atom vocabulary.
        stats: if given, filled with ``{"rows", "kept", "dropped": {reason: count}}``.

    Returns:
        ``(x, smiles)``: int64 ``[N, 81]`` encodings and N canonical SMILES.
    """
    if cache is not None and Path(cache).exists():
        # weights_only: a cache file is data; never run code from it (torch < 2.6 defaults to a full unpickle)
        saved = torch.load(cache, weights_only=True)
        if stats is not None:
            stats.update(saved.get("stats", {}))
        return saved["x"].long(), saved["smiles"]
    rows = read_smiles(path, limit)
    dropped: Counter = Counter()
    graphs = molecules_to_graphs(rows, atoms, dropped)
    x = encoding_for(atoms).encode(graphs)
    smiles = graph_to_smiles(graphs, torch.ones(len(graphs), dtype=torch.bool), atoms)
    keep = [i for i, s in enumerate(smiles) if s is not None]  # all of them, in practice
    dropped["rebuilt graph rejected by RDKit"] += len(smiles) - len(keep)
    x, smiles = x[keep], [smiles[i] for i in keep]
    info = {"rows": len(rows), "kept": len(keep), "dropped": dict(dropped)}
    if stats is not None:
        stats.update(info)
    if cache is not None:
        Path(cache).parent.mkdir(parents=True, exist_ok=True)
        torch.save({"x": x.to(torch.uint8), "smiles": smiles, "stats": info}, cache)
    return x, smiles


def graph_to_smiles(
    graph: Graph, valid: torch.Tensor, atoms: tuple[tuple[str, int], ...] = NEUTRAL_ATOMS
) -> list[str | None]:
    """Canonical SMILES of each decoded graph, or None where it is not a molecule.

    No valence correction: a graph is a molecule when its encoding was valid, it has at least
    one atom, and ``Chem.SanitizeMol`` accepts it as built (each atom with its type's formal
    charge, implicit hydrogens).
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
            symbol, charge = atoms[types[g][i]]
            atom = Chem.Atom(symbol)
            atom.SetFormalCharge(charge)
            mol.AddAtom(atom)
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


def canonical_qm9(path: str | Path = DATA, cache: Path | None = None) -> set[str]:
    """Canonical SMILES (stereochemistry dropped) of every QM9 row RDKit parses: the full-QM9
    reference for novelty, whatever the filters of the training data. Cached like
    :func:`prepare`."""
    if cache is not None and Path(cache).exists():
        return set(read_json_file(cache, owner="molecules", error=SystemExit,
                                  fix="delete the cache file; the next run rebuilds it"))
    from rdkit import Chem, RDLogger

    RDLogger.DisableLog("rdApp.*")
    out = set()
    for s in read_smiles(path):
        mol = Chem.MolFromSmiles(s)
        if mol is not None:
            Chem.RemoveStereochemistry(mol)
            out.add(Chem.MolToSmiles(mol))
    if cache is not None:
        Path(cache).parent.mkdir(parents=True, exist_ok=True)
        Path(cache).write_text(json.dumps(sorted(out)))
    return out


def valence_constraint(atoms: tuple[tuple[str, int], ...], encoding: GraphEncoding | None = None):
    """A ``SampleOptions.constraint`` for valence-aware decoding of node-row encodings.

    Given the partial molecule decoded so far (elements are decided one at a time in the
    encoding's order, so the partial graph is exact), an atom slot may hold a type (or the end
    value 0, except in the first slot: a molecule has an atom) only while no earlier slot ended
    the molecule, and 0 after; a bond slot ``(i, j)``
    may hold bond order b only if atoms i and j exist and both still have b valence left
    (:func:`max_valences`, bonds decided so far summed), else 0; structural zeros hold 0.
    Values above the atom or bond range are never allowed.

    Args:
        atoms: the atom vocabulary.
        encoding: its encoding (default: :func:`encoding_for`).

    Returns:
        ``constraint(canvas [M, 81], decided [M, 81], positions [M, E]) -> bool [M, E, V]``.
    """
    enc = encoding or encoding_for(atoms)
    n, w, v = enc.max_nodes, enc.row_width, enc.num_values
    room_of = torch.tensor([0, *max_valences(atoms)])  # by type value (0: no atom)
    values = torch.arange(v)

    def constraint(canvas: torch.Tensor, decided: torch.Tensor, positions: torch.Tensor) -> torch.Tensor:
        m = canvas.shape[0]
        rows = (canvas * decided).view(m, n, w)  # undecided elements read as 0
        types = rows[:, :, 0]  # [M, n]: type + 1, 0 = no atom (or not yet decided)
        lower = torch.nn.functional.pad(rows[:, :, 1:], (0, 1)).tril(-1)  # [M, n, n], (i, j), j < i
        used = (lower + lower.transpose(1, 2)).sum(-1)  # [M, n] valence used so far
        room = room_of.to(canvas.device)[types] - used  # [M, n]
        vals = values.to(canvas.device)[None]
        out = torch.zeros(*positions.shape, v, dtype=torch.bool, device=canvas.device)
        for e in range(positions.shape[1]):
            p = positions[:, e]
            i, c = p // w, p % w
            j = (c - 1).clamp(min=0)
            previous = types.gather(1, (i - 1).clamp(min=0)[:, None]).squeeze(1)
            open_ = (i == 0) | (previous > 0)  # no end token before this atom slot
            node_ok = (vals <= enc.num_node_types) & (open_[:, None] | (vals == 0))
            node_ok &= (i > 0)[:, None] | (vals > 0)  # at least one atom
            ti, tj = types.gather(1, i[:, None]).squeeze(1), types.gather(1, j[:, None]).squeeze(1)
            left = torch.minimum(room.gather(1, i[:, None]), room.gather(1, j[:, None]))  # [M, 1]
            bond = (vals <= enc.num_edge_types) & (vals <= left) & ((ti > 0) & (tj > 0) & (j < i))[:, None]
            edge_ok = (vals == 0) | bond
            out[:, e] = torch.where((c == 0)[:, None], node_ok, edge_ok)
        return out

    return constraint


def sample_metrics(
    smiles: list[str | None], training: set[str], full: set[str] | None = None
) -> dict[str, float]:
    """Validity, uniqueness (of the valid) and novelty (of the unique valid, against the
    training set and, if given, the full QM9), as fractions."""
    valid = [s for s in smiles if s is not None]
    unique = set(valid)
    out = {
        "num_samples": len(smiles),
        "validity": len(valid) / max(len(smiles), 1),
        "uniqueness": len(unique) / max(len(valid), 1),
        "novelty": len(unique - training) / max(len(unique), 1),
        "connected": sum("." not in s for s in valid) / max(len(valid), 1),
    }
    if full is not None:
        out["novelty_full_qm9"] = len(unique - full) / max(len(unique), 1)
    return out


class FCD:
    """Fréchet ChemNet Distance (the ``fcd`` package; its ChemNet weights ship in its wheel,
    nothing is downloaded) of SMILES sets against a fixed reference set.

    Args:
        reference: the reference SMILES.
    """

    def __init__(self, reference: list[str]) -> None:
        import fcd
        import numpy as np

        self._fcd, self._np = fcd, np
        self.model = fcd.load_ref_model()
        self.mu, self.sigma = self._stats(reference)

    def _stats(self, smiles: list[str]):
        act = self._fcd.get_predictions(self.model, smiles, device="cpu")
        return self._np.mean(act, axis=0), self._np.cov(act.T)

    def __call__(self, smiles: list[str]) -> float:
        """FCD of ``smiles`` (e.g. the valid samples) against the reference."""
        mu, sigma = self._stats(smiles)
        return float(self._fcd.calculate_frechet_distance(mu1=mu, sigma1=sigma, mu2=self.mu, sigma2=self.sigma))


def parse_model(name: str) -> tuple[str, bool, bool, bool]:
    """``"fractal+slots+charges+randbfs"`` -> ``("fractal", slots, charges, random_bfs)``.

    Raises:
        ValueError: for an unknown base model or option.
    """
    kind, *options = name.split("+")
    unknown = sorted(set(options) - {"slots", "charges", "randbfs"})
    if kind not in ("fractal", "flat") or unknown:
        raise ValueError(
            f"model {name!r}: expected fractal or flat, optionally with +slots, +charges and/or "
            f"+randbfs (unknown: {unknown or kind!r})"
        )
    return kind, "slots" in options, "charges" in options, "randbfs" in options


def build_model(
    kind: str,
    *,
    small: bool = False,
    conditioner: ConditionerConfig | None = None,
    atoms: tuple[tuple[str, int], ...] = NEUTRAL_ATOMS,
    slots: bool = False,
) -> Fractal:
    """The graph fractal (``"fractal"``) or the flat baseline (``"flat"``), unconditional
    unless a ``conditioner`` is given (``conditional.py`` gives a :class:`fractalkit.Vector`).

    Args:
        kind: ``"fractal"`` or ``"flat"``.
        small: tiny widths (tests).
        conditioner: what the model is conditioned on, or None.
        atoms: the atom vocabulary (sets V).
        slots: a slot-kinds leaf (atom slot, bond slot, structural zero).

    Raises:
        ValueError: for an unknown ``kind``.
    """
    enc = encoding_for(atoms)
    leaf = SlotCategoricalLeafConfig(**enc.slot_kinds_config()) if slots else (
        CategoricalLeafConfig(num_values=enc.num_values))

    def level(width: int, depth: int) -> ARLevelConfig:
        return ARLevelConfig(width=16 if small else width, depth=1 if small else depth,
                             heads=2 if small else 4, embed="table")

    if kind == "fractal":
        parts = enc.partitioners((3, 3))  # 9 atoms -> 3 x 3 atoms -> atoms -> elements
        levels = list(zip(parts, [level(128, 2), level(96, 2), level(64, 1)], strict=True))
    elif kind == "flat":
        levels = [(SequenceChunks(enc.event_shape[0], 1), level(128, 4))]
    else:
        raise ValueError(f"build_model: kind must be 'fractal' or 'flat', got {kind!r}")
    return Fractal(levels, leaf=leaf, conditioner=conditioner)


def train(model: Fractal, x: torch.Tensor, *, budget_s: float, batch: int = 64, lr: float = 1e-3,
          max_steps: int | None = None, seed: int = 0,
          random_bfs: GraphEncoding | None = None) -> dict[str, float]:
    """AdamW, 20 warm-up steps then a cosine; batches drawn uniformly from the encodings.

    With ``random_bfs`` (the encoding of ``x``), every molecule of a batch is re-encoded in a
    fresh random BFS order (:func:`fractalkit.graphs.random_bfs_encodings`, from the same
    seeded stream) instead of its canonical encoding ``x``.

    With ``max_steps`` the cosine runs over the steps (the run is the same on any machine and
    load); otherwise over ``budget_s`` seconds of wall-clock
    (:func:`fractalkit.training.train_for_budget`).

    Returns:
        ``{"steps", "seconds", "s_per_step", "last_loss_nats_per_element"}`` (seconds of
        wall-clock in both cases).
    """

    graphs = random_bfs.decode(x)[0] if random_bfs is not None else None

    def next_batch(g: torch.Generator) -> torch.Tensor:
        idx = torch.randint(0, x.shape[0], (batch,), generator=g)
        if graphs is None:
            return x[idx]
        picked = Graph(graphs.node_types[idx], graphs.adjacency[idx], graphs.node_mask[idx])
        return random_bfs_encodings(random_bfs, picked, generator=g)

    g = torch.Generator().manual_seed(seed)
    start = time.perf_counter()
    if max_steps is not None:  # a step clock: the cosine ends with the last step
        log = budget.train_for_budget(model, next_batch, budget_s=max_steps + 1, lr=lr, max_steps=max_steps,
                                      generator=g, clock=itertools.count().__next__)
        log["seconds"] = time.perf_counter() - start
        log["s_per_step"] = log["seconds"] / max(log["steps"], 1)
    else:
        log = budget.train_for_budget(model, next_batch, budget_s=budget_s, lr=lr, generator=g)
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


@torch.no_grad()
def graph_likelihood(model: Fractal, x: torch.Tensor, encoding: GraphEncoding, *, num_orders: int = 32,
                     num_molecules: int = 500, seed: int = 0) -> dict:
    """Graph-level likelihood figures on a seeded subset of molecules, in nats per molecule.

    Args:
        model: a trained model of ``encoding``'s encodings.
        x: int64 ``[N, 81]`` canonical encodings (e.g. the test split).
        encoding: their :class:`GraphEncoding`.
        num_orders: K random BFS orders per molecule.
        num_molecules: M, the molecules scored (a seeded random subset; all if N <= M).
        seed: seeds the subset (``seed``) and the orders (``seed + 1``).

    Returns:
        ``{"canonical_bound_mean", "log_p_mean", "log_p_sem"`` (standard error of the mean over
        the M molecules), ``"stderr_mean"`` (mean per-molecule delta-method standard error),
        ``"ess_mean", "log_automorphisms_mean", "num_orders", "num_molecules", "estimates"}``:
        log-likelihoods (negate for NLL), see :func:`fractalkit.graphs.graph_log_likelihood`.
    """
    model.eval()
    pick = torch.randperm(x.shape[0], generator=torch.Generator().manual_seed(seed))[:num_molecules]
    graphs, valid = encoding.decode(x[pick])
    if not bool(valid.all()):
        raise ValueError("graph_likelihood: x holds encodings that are not graphs; pass canonical encodings")
    ll = graph_log_likelihood(model, encoding, graphs, num_orders=num_orders,
                              generator=torch.Generator().manual_seed(seed + 1))
    m = len(pick)
    return {
        "canonical_bound_mean": float(ll.canonical_bound.mean()),
        "log_p_mean": float(ll.log_p.mean()),
        "log_p_sem": float(ll.log_p.std() / m**0.5) if m > 1 else float("nan"),
        "stderr_mean": float(ll.stderr.mean()),
        "ess_mean": float(ll.ess.mean()),
        "log_automorphisms_mean": float(ll.log_automorphisms.mean()),
        "num_orders": num_orders,
        "num_molecules": m,
        "ordering": ll.ordering,
        "model_kind": ll.model_kind,
        "estimates": ll.estimates,
    }


def flops_per_example(model: Fractal, x: torch.Tensor) -> int:
    """FLOPs of one teacher-forced ``log_prob`` on one molecule (FlopCounterMode; autograd on,
    because its module tracker fails under ``torch.no_grad``)."""
    model.eval()
    counter = FlopCounterMode(display=False)
    with counter:
        model.log_prob(x[:1].to(next(model.parameters()).device))
    return int(counter.get_total_flops())


@torch.no_grad()
def sample_encodings(model: Fractal, n: int, *, batch: int = 1000, seed: int = 0,
                     constraint=None) -> tuple[torch.Tensor, float]:
    """``(encodings [n, 81] on the CPU, seconds per sample)``: temperature 1, KV cache, and
    ``constraint`` (e.g. :func:`valence_constraint`) if given."""
    model.eval()
    device = next(model.parameters()).device
    g = torch.Generator().manual_seed(seed)
    out, seconds = [], 0.0
    for i in tqdm(range(0, n, batch), desc="sampling", leave=False):
        with budget.Stopwatch(device) as clock:
            x = model.sample(num_samples=min(batch, n - i), generator=g, constraint=constraint)
        seconds += clock.seconds
        out.append(x.cpu())
    return torch.cat(out), seconds / max(n, 1)


def encodings_to_smiles(
    x: torch.Tensor, atoms: tuple[tuple[str, int], ...] = NEUTRAL_ATOMS
) -> tuple[list[str | None], float]:
    """``(SMILES or None per encoding, fraction of encodings that are graphs)``."""
    graphs, valid = encoding_for(atoms).decode(x)
    return graph_to_smiles(graphs, valid, atoms), float(valid.float().mean()) if x.shape[0] else 0.0


def split(x: torch.Tensor, smiles: list[str]) -> tuple[torch.Tensor, torch.Tensor, set[str]]:
    """``(train_x, test_x, training SMILES)``: a seeded random 90% / 10% split."""
    perm = torch.randperm(x.shape[0], generator=torch.Generator().manual_seed(0))
    cut = int(0.9 * x.shape[0])
    return x[perm[:cut]], x[perm[cut:]], {smiles[i] for i in perm[:cut].tolist()}


def pct(r: dict, key: str) -> str:
    return f"{100 * r[key]:.1f}%" if key in r else "-"


def table(results: dict[str, dict]) -> str:
    """The Markdown results tables: one row per model and decoding, then one row per model with
    the graph-level likelihood (models evaluated with ``--orderings``)."""
    lines = [
        "| model | atoms | canonical-encoding NLL (a bound: p(molecule) >= p(one encoding)), nats / molecule | "
        "IS -log p(molecule) ± s.e.m. | params | steps | train s / step | decoding | "
        "sample ms / molecule | valid w/o correction | unique | novel (train) | novel (full QM9) | FCD |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for name, r in results.items():
        g = r.get("graph_likelihood")
        is_ = f"{-g['log_p_mean']:.2f} ± {g['log_p_sem']:.2f}" if g else "-"
        for decoding, m in r.get("samples", {}).items():
            fcd = f"{m['fcd']:.2f}" if "fcd" in m else "-"
            lines.append(
                f"| {name} | {r['atoms']} | {r['test_nll_nats_per_molecule']:.2f} | {is_} | {r['params'] / 1e6:.2f}M | "
                f"{r['train_steps']} | {r['train_s_per_step']:.3f} | {decoding} | "
                f"{1e3 * m['sample_s_per_example']:.2f} | {pct(m, 'validity')} | {pct(m, 'uniqueness')} | "
                f"{pct(m, 'novelty')} | {pct(m, 'novelty_full_qm9')} | {fcd} |"
            )
    rows = [(name, r["graph_likelihood"]) for name, r in results.items() if "graph_likelihood" in r]
    if rows:
        lines += [
            "",
            "| model | training order | K orders | M molecules | canonical bound -log p(E_c) | "
            "IS -log p(molecule) ± s.e.m. | gap (nats) | mean per-molecule s.e. | mean ESS | mean log Aut |",
            "|---|---|---|---|---|---|---|---|---|---|",
        ]
        for name, g in rows:
            lines.append(
                f"| {name} | {results[name].get('training_order', 'canonical')} | {g['num_orders']} | "
                f"{g['num_molecules']} | {-g['canonical_bound_mean']:.2f} | {-g['log_p_mean']:.2f} ± "
                f"{g['log_p_sem']:.2f} | {g['log_p_mean'] - g['canonical_bound_mean']:.2f} | "
                f"{g['stderr_mean']:.2f} | {g['ess_mean']:.1f} | {g['log_automorphisms_mean']:.2f} |"
            )
        lines.append(f"\nIS estimates: {rows[0][1]['estimates']}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    """Train each model (fixed steps or equal wall-clock), evaluate, sample with and without
    valence-aware decoding and print the table.

    With ``--metrics-only``, read ``results.json`` and ``samples_<model>_<decoding>.pt`` from
    ``--out`` (e.g. written on a machine without RDKit) and add the sample metrics.
    """
    ap = cli.ArgumentParser(description=__doc__.split("\n")[0])
    # runs write under the ignored runs/; the committed figures pass --out examples/molecules/results
    budget.add_budget_arguments(ap, batch=64, out=Path("runs/molecules-results"),
                                models="fractal,flat,fractal+slots,fractal+slots+charges",
                                device_help="torch device (the issue asks for cpu)")
    ap.add_argument("--max-steps", type=cli.positive_int, default=None,
                    help="train each model for exactly this many steps (the cosine runs over them); "
                         "default: --budget-s seconds of wall-clock")
    ap.add_argument("--num-samples", type=cli.positive_int, default=10_000)
    ap.add_argument("--decodings", default="plain,valence",
                    help="comma-separated: plain (no constraint) and/or valence (valence-aware)")
    ap.add_argument("--orderings", type=cli.positive_int, default=32,
                    help="K random BFS orders per molecule for the importance-sampled log p(molecule)")
    ap.add_argument("--orderings-molecules", type=cli.positive_int, default=500,
                    help="M test molecules (a seeded subset) the importance-sampled log p(molecule) is computed on")
    ap.add_argument("--no-fcd", action="store_true", help="skip FCD (needs the fcd package)")
    ap.add_argument("--data", default=DATA, help=DATA_HELP)
    cache = Path.home() / ".cache" / "fractalkit"
    ap.add_argument("--cache", type=Path, default=cache / "qm9_graphs.pt",
                    help="preprocessed QM9, neutral atoms (computed from the CSV on the first run)")
    ap.add_argument("--cache-charged", type=Path, default=cache / "qm9_graphs_charged.pt",
                    help="preprocessed QM9 with charged atom types")
    ap.add_argument("--cache-full", type=Path, default=cache / "qm9_canonical.json",
                    help="canonical SMILES of the full QM9 (novelty reference)")
    ap.add_argument("--metrics-only", action="store_true",
                    help="only compute sample metrics from results.json and samples_*.pt in --out")
    ap.add_argument("--merge", action="store_true",
                    help="keep the other models' entries of an existing results.json in --out")
    cli.add_debug_argument(ap)
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    device = cli.check_device(ap, args.device)
    args.data = check_data_argument(ap, args.data)
    decodings = args.decodings.split(",")
    if set(decodings) - {"plain", "valence"}:
        ap.error(f"--decodings: expected plain and/or valence, got {args.decodings!r}")
    args.out.mkdir(parents=True, exist_ok=True)
    try:
        import rdkit  # noqa: F401

        have_rdkit = True
    except ImportError:
        have_rdkit = False
    if args.metrics_only:
        results = read_json_file(args.out / "results.json", owner="molecules", fix="delete it (or pass another --out) and run again", error=SystemExit)
        names = list(results)
    else:
        names = args.models.split(",")
        old = args.out / "results.json"
        results = (read_json_file(old, owner="molecules", fix="delete it (or pass another --out) and run again", error=SystemExit)
                   if args.merge and old.exists() else {})
    specs = {name: parse_model(name) for name in names}
    data = {}
    for charges in sorted({c for _, _, c, _ in specs.values()}):
        atoms = CHARGED_ATOMS if charges else NEUTRAL_ATOMS
        stats: dict = {}
        x, smiles = prepare(args.data, cache=args.cache_charged if charges else args.cache, atoms=atoms, stats=stats)
        data[charges] = (atoms, *split(x, smiles), stats)
        print(f"{'charged' if charges else 'neutral'} atoms: {x.shape[0]} molecules "
              f"({data[charges][1].shape[0]} train, {data[charges][2].shape[0]} test); {stats}", flush=True)
    full = canonical_qm9(args.data, cache=args.cache_full) if have_rdkit else None
    fcd = None
    if have_rdkit and not args.no_fcd:
        reference = sorted(full)
        pick = torch.randperm(len(reference), generator=torch.Generator().manual_seed(0))[:10_000]
        fcd = FCD([reference[i] for i in pick.tolist()])
    uptime = Path("/proc/loadavg").read_text().split()[:3] if Path("/proc/loadavg").exists() else []
    for name in tqdm(names, desc="models"):
        kind, slots, charges, random_bfs = specs[name]
        atoms, train_x, test_x, training, stats = data[charges]
        if not args.metrics_only:
            torch.manual_seed(0)
            model = build_model(kind, atoms=atoms, slots=slots).to(device)
            load_before = Path("/proc/loadavg").read_text().split()[:3] if uptime else []
            log = train(model, train_x, budget_s=args.budget_s, batch=args.batch, max_steps=args.max_steps,
                        random_bfs=encoding_for(atoms) if random_bfs else None)
            nll = nll_per_molecule(model, test_x)
            results[name] = {
                "atoms": "charged" if charges else "neutral",
                "slot_kinds": slots,
                "training_order": "random BFS per example per step" if random_bfs else "canonical",
                "data": stats,
                "test_nll_nats_per_molecule": nll,
                "test_nll_nats_per_free_element": nll / ENCODING.num_free_elements,
                "params": sum(p.numel() for p in model.parameters()),
                "flops_per_example": flops_per_example(model, test_x),
                "train_s_per_step": log["s_per_step"],
                "train_steps": log["steps"],
                "train_seconds": log["seconds"],
                "load_average_before_after": [load_before, Path("/proc/loadavg").read_text().split()[:3]
                                              if uptime else []],
                "batch": args.batch,
                "max_steps": args.max_steps,
                "num_samples": args.num_samples,
                "device": budget.device_description(device, args.threads),
                "samples": {},
            }
            start = time.perf_counter()
            results[name]["graph_likelihood"] = graph_likelihood(
                model, test_x, encoding_for(atoms), num_orders=args.orderings,
                num_molecules=args.orderings_molecules)
            results[name]["graph_likelihood"]["seconds"] = time.perf_counter() - start
            for decoding in decodings:
                constraint = valence_constraint(atoms) if decoding == "valence" else None
                samples, s_per_sample = sample_encodings(model, args.num_samples, constraint=constraint)
                torch.save(samples.to(torch.uint8), args.out / f"samples_{name}_{decoding}.pt")
                results[name]["samples"][decoding] = {"sample_s_per_example": s_per_sample}
        if have_rdkit:
            for decoding, entry in results[name]["samples"].items():
                samples = torch.load(args.out / f"samples_{name}_{decoding}.pt", weights_only=True).long()
                mols, enc_valid = encodings_to_smiles(samples, atoms)
                entry.update(encoding_valid=enc_valid, **sample_metrics(mols, training, full))
                valid = [m for m in mols if m is not None]
                if fcd is not None and len(valid) > 1:
                    entry["fcd"] = fcd(valid)
                (args.out / f"samples_{name}_{decoding}.txt").write_text(
                    "\n".join(m if m is not None else "<invalid>" for m in mols[:1000]) + "\n"
                )
        (args.out / "results.json").write_text(json.dumps(results, indent=2) + "\n")
        print(name, json.dumps(results[name]), flush=True)
    print(table(results))


if __name__ == "__main__":
    cli.run(main)
