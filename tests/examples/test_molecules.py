"""The molecules example: SMILES -> canonical graphs -> encodings and back, validity without
correction, and a smoke training step of both models on a slice of QM9."""

from __future__ import annotations

import importlib.util
import math
from pathlib import Path

import pytest
import torch

Chem = pytest.importorskip(
    "rdkit.Chem", reason="rdkit is missing: install the set-up extras, pip install -e '.[dev]'"
)

from fractalkit.graphs import Graph  # noqa: E402

ROOT = Path(__file__).resolve().parents[2]
QM9 = ROOT / "tests" / "data" / "qm9" / "qm9.csv"  # the first 400 SMILES of QM9 (tests/data/README.md)


def load_example():
    spec = importlib.util.spec_from_file_location("molecules_example", ROOT / "examples" / "molecules" / "train.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


M = load_example()


def canonical(smiles: str) -> str:
    mol = Chem.MolFromSmiles(smiles)
    Chem.RemoveStereochemistry(mol)
    return Chem.MolToSmiles(mol)


def test_molecules_round_trip_through_the_encoding():
    smiles = ["CCO", "C#N", "Oc1ccccc1", "CC(=O)N", "FC(F)F", "O=C1CC1", "C/C=C/C"]
    dropped = ["[NH3+]CC(=O)[O-]", "[CH2]C", "CCCCCCCCCC", "CCS"]  # charged, radical, 10 atoms, S
    graphs = M.molecules_to_graphs(smiles + dropped)
    assert len(graphs) == len(smiles)
    x = M.ENCODING.encode(graphs)
    assert x.shape == (len(smiles), 81) and int(x.max()) < M.ENCODING.num_values
    back, valid = M.ENCODING.decode(x)
    assert bool(valid.all())
    assert M.graph_to_smiles(back, valid) == [canonical(s) for s in smiles]
    # canonical BFS order: every atom after the first has a bond to an earlier atom
    rows = x.view(-1, 9, 9)
    for g, n in enumerate(graphs.num_nodes.tolist()):
        assert all(bool(rows[g, i, 1:].any()) for i in range(1, n))


def test_invalid_molecules_are_flagged_not_repaired():
    # a carbon with five single bonds to fluorines: a valid graph but not a molecule
    adj = torch.zeros(1, 9, 9, dtype=torch.int64)
    adj[0, 0, 1:6] = adj[0, 1:6, 0] = 1
    types = torch.tensor([[0, 3, 3, 3, 3, 3, 0, 0, 0]])
    mask = torch.arange(9)[None] < 6
    graph = Graph(types, adj, mask)
    assert M.graph_to_smiles(graph, torch.tensor([True])) == [None]
    assert M.graph_to_smiles(graph, torch.tensor([False])) == [None]  # invalid encoding
    metrics = M.sample_metrics(["CCO", "CCO", None, "C.C"], training={"CCO"})
    assert metrics["validity"] == 0.75 and math.isclose(metrics["uniqueness"], 2 / 3)
    assert metrics["novelty"] == 0.5 and math.isclose(metrics["connected"], 2 / 3)


@pytest.fixture(scope="module")
def qm9_slice():
    x, smiles = M.prepare(QM9, limit=300)
    train_x, test_x, training = M.split(x, smiles)
    assert train_x.shape[0] + test_x.shape[0] == x.shape[0] and len(training) <= train_x.shape[0]
    return x, smiles


@pytest.mark.parametrize("kind", ["fractal", "flat"])
def test_one_training_step_nll_and_samples(qm9_slice, kind):
    x, smiles = qm9_slice
    assert x.shape[1] == 81 and len(smiles) == x.shape[0] > 200
    torch.manual_seed(0)
    model = M.build_model(kind, small=True)
    log = M.train(model, x[:200], budget_s=60, batch=8, max_steps=1)
    assert log["steps"] == 1 and math.isfinite(log["last_loss_nats_per_element"])
    nll = M.nll_per_molecule(model, x[200:])
    assert math.isfinite(nll) and nll > 0  # nats per molecule, untrained
    x_new, seconds = M.sample_encodings(model, 8, batch=8)
    assert x_new.shape == (8, 81) and seconds > 0
    samples, enc_valid = M.encodings_to_smiles(x_new)
    assert len(samples) == 8 and 0 <= enc_valid <= 1
    for s in samples:  # each sample is a molecule or a clear invalid marker
        assert s is None or Chem.MolFromSmiles(s) is not None
    metrics = M.sample_metrics(samples, set(smiles))
    assert 0 <= metrics["validity"] <= 1
    assert M.flops_per_example(model, x) > 0


def load_conditional():
    spec = importlib.util.spec_from_file_location(
        "molecules_conditional", ROOT / "examples" / "molecules" / "conditional.py"
    )
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_conditional_properties_grid_and_metrics():
    C = load_conditional()
    props = C.properties(["CCO", "c1ccccc1", None])
    assert props.shape == (3, 2) and props[1, 1] == 1 and props[0, 1] == 0
    assert props[0, 0] < props[1, 0]  # ethanol is less lipophilic than benzene
    assert bool(props[2].isnan().all())
    grid = C.request_grid(torch.tensor([[float(i), float(i % 3)] for i in range(100)], dtype=torch.float64), 4)
    (j0, logp), (j1, rings) = grid
    assert (j0, j1) == (0, 1) and len(logp) == 4 and logp == sorted(logp) and rings == [0.0, 1.0, 2.0]
    (_, missing), requested = C.conditions(1, rings, 2)
    assert requested.tolist() == [0.0, 0.0, 1.0, 1.0, 2.0, 2.0]
    assert bool(missing[:, 0].all()) and not bool(missing[:, 1].any())
    assert math.isclose(C.spearman(torch.arange(5.0), torch.arange(5.0) ** 3), 1.0)


def test_conditional_model_trains_and_samples_on_requests(qm9_slice):
    C = load_conditional()
    x, smiles = qm9_slice
    props = C.properties(smiles).float()
    torch.manual_seed(0)
    model = M.build_model("fractal", small=True, conditioner=C.Vector.fitted(props, feature_drop=0.3))
    log = C.budget.train_for_budget(model, lambda g: (x[:16], props[:16]), budget_s=60, max_steps=1,
                                    generator=torch.Generator().manual_seed(0))
    assert log["steps"] == 1
    model.eval()
    c, requested = C.conditions(0, [0.0, 1.0], 3)
    out = model.sample(c=c, guidance=2.0, generator=torch.Generator().manual_seed(0))
    metrics = C.evaluate(out, 0, requested, set(smiles))
    assert out.shape == (6, 81) and 0 <= metrics["validity"] <= 1 and "mae" in metrics


def test_charged_molecules_round_trip_and_drop_reasons():
    smiles = ["[NH3+]CC(=O)[O-]", "C[N+](C)(C)C", "CCO", "[O-][N+](=O)C", "C#[N+][C-]1CC1"]
    dropped = ["[CH2]C", "CCCCCCCCCC", "CCS"]  # radical, 10 atoms, S
    reasons = M.Counter()
    graphs = M.molecules_to_graphs(smiles + dropped, M.CHARGED_ATOMS, reasons)
    assert len(graphs) == len(smiles)
    assert reasons == {"a radical": 1, "more than 9 heavy atoms": 1, "an atom outside the vocabulary": 1}
    x = M.CHARGED_ENCODING.encode(graphs)
    back, valid = M.CHARGED_ENCODING.decode(x)
    assert bool(valid.all())
    assert M.graph_to_smiles(back, valid, M.CHARGED_ATOMS) == [canonical(s) for s in smiles]
    neutral = M.Counter()
    assert len(M.molecules_to_graphs(smiles, dropped=neutral)) == 1 and neutral == {"a formal charge": 4}


def test_max_valences_follow_rdkit():
    assert M.max_valences(M.CHARGED_ATOMS) == [4, 3, 2, 1, 4, 2, 3, 3, 1, 3]


@pytest.mark.parametrize("atoms", ["neutral", "charged"])
def test_valence_constraint_allows_every_real_molecule(atoms):
    """Teacher-forced along the encoding's order, each observed value is allowed."""
    vocab = M.CHARGED_ATOMS if atoms == "charged" else M.NEUTRAL_ATOMS
    smiles = ["CCO", "C#N", "Oc1ccccc1", "CC(=O)N", "FC(F)F", "O=C1CC1", "[NH3+]CC(=O)[O-]",
              "[O-][N+](=O)C", "C#[N+][C-]1CC1", "C1CC2CC2C1", "N#CC1=CNC=C1"]
    graphs = M.molecules_to_graphs(smiles, vocab)
    x = M.encoding_for(vocab).encode(graphs)  # [N, 81]
    constraint = M.valence_constraint(vocab)
    for p in range(81):
        decided = (torch.arange(81) < p)[None].expand_as(x)
        allowed = constraint(x, decided, torch.full((x.shape[0], 1), p))  # [N, 1, V]
        assert bool(allowed[torch.arange(x.shape[0]), 0, x[:, p]].all()), p


@pytest.mark.parametrize("model", ["fractal+slots+charges", "flat+slots", "fractal"])
def test_valence_aware_samples_are_molecules(model):
    kind, slots, charges, _ = M.parse_model(model)
    atoms = M.CHARGED_ATOMS if charges else M.NEUTRAL_ATOMS
    torch.manual_seed(0)
    net = M.build_model(kind, small=True, atoms=atoms, slots=slots)
    x, _ = M.sample_encodings(net, 30, batch=30, constraint=M.valence_constraint(atoms))
    smiles, enc_valid = M.encodings_to_smiles(x, atoms)
    assert enc_valid == 1.0 and all(s is not None for s in smiles)  # untrained, yet all molecules


@pytest.mark.parametrize("name", ["fractal+bonds", "graph", "flat+slots+slots+x"])
def test_unknown_models_are_refused(name):
    with pytest.raises(ValueError, match="expected fractal or flat"):
        M.parse_model(name)


def test_random_bfs_option_parses():
    assert M.parse_model("fractal+randbfs") == ("fractal", False, False, True)
    assert M.parse_model("fractal+slots+charges+randbfs") == ("fractal", True, True, True)
    assert M.parse_model("fractal+slots") == ("fractal", True, False, False)


def test_random_bfs_training_and_graph_likelihood(qm9_slice):
    """A step on random-BFS encodings, then the importance-sampled log p(molecule): finite, and
    never below the canonical-encoding bound, which is the canonical NLL of the same molecules."""
    x, _ = qm9_slice
    train_x, test_x = x[:200], x[200:]
    torch.manual_seed(0)
    model = M.build_model("fractal", small=True)
    log = M.train(model, train_x, budget_s=60, batch=8, max_steps=1, random_bfs=M.ENCODING)
    assert log["steps"] == 1 and math.isfinite(log["last_loss_nats_per_element"])
    g = M.graph_likelihood(model, test_x, M.ENCODING, num_orders=4, num_molecules=1000)
    assert g["num_molecules"] == test_x.shape[0] and g["num_orders"] == 4
    for key in ("canonical_bound_mean", "log_p_mean", "log_p_sem", "stderr_mean", "ess_mean",
                "log_automorphisms_mean"):
        assert math.isfinite(g[key]), key
    assert g["log_p_mean"] >= g["canonical_bound_mean"]
    assert math.isclose(-g["canonical_bound_mean"], M.nll_per_molecule(model, test_x), rel_tol=1e-5)
    assert "lower bound" in g["estimates"]
    small = M.graph_likelihood(model, test_x, M.ENCODING, num_orders=2, num_molecules=5)
    assert small["num_molecules"] == 5


def test_graph_likelihood_refuses_non_graph_encodings():
    model = M.build_model("fractal", small=True)
    x = torch.zeros(2, 81, dtype=torch.int64)
    x[:, 1] = 1  # a bond slot filled in an empty molecule: not a graph
    with pytest.raises(ValueError, match="not graphs"):
        M.graph_likelihood(model, x, M.ENCODING, num_orders=2, num_molecules=2)


def test_table_shows_the_graph_likelihood_beside_the_bound():
    g = {"canonical_bound_mean": -15.2, "log_p_mean": -14.2, "log_p_sem": 0.09, "stderr_mean": 0.27,
         "ess_mean": 3.5, "log_automorphisms_mean": 0.18, "num_orders": 32, "num_molecules": 500,
         "estimates": "a lower bound"}
    m = {"sample_s_per_example": 0.001, "validity": 0.7}
    r = {"atoms": "neutral", "test_nll_nats_per_molecule": 15.2, "params": 1e6, "train_steps": 500,
         "train_s_per_step": 0.2, "samples": {"plain": m}}
    text = M.table({"fractal": {**r, "graph_likelihood": g}, "flat": r})
    assert "| fractal | neutral | 15.20 | 14.20 ± 0.09 |" in text and "| flat | neutral | 15.20 | - |" in text
    assert "| fractal | canonical | 32 | 500 | 15.20 | 14.20 ± 0.09 | 1.00 |" in text
