"""The graph-benchmark example: data loading, the split, each model's loss, and a smoke run."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest
import torch

from fractalkit.graphs import GraphEncoding

ROOT = Path(__file__).resolve().parents[2]
DATA = ROOT / "tests" / "data" / "graphs"  # the two benchmarks' files, copied whole (README there)
pytest.importorskip("pynauty", reason="pynauty is missing: pip install -e '.[dev]' (the graphs extra)")


def load_example():
    spec = importlib.util.spec_from_file_location("graphs_example", ROOT / "examples" / "graphs" / "train.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


G = load_example()


@pytest.mark.parametrize("name, count, test", [("ego_small", 200, 40), ("community_small", 100, 20)])
def test_load_and_split(name, count, test):
    graphs = G.load_graphs(name, data=DATA)
    assert len(graphs) == count
    assert torch.equal(graphs.adjacency, graphs.adjacency.transpose(1, 2))
    train, held = G.split(graphs)
    assert (len(train), len(held)) == (count - test, test)
    n = G.LAYOUT[name][0]
    enc = GraphEncoding(n, 1, 1)
    back, valid = enc.decode(enc.encode(graphs))
    assert bool(valid.all()) and torch.equal(back.adjacency, graphs.adjacency)


@pytest.mark.parametrize("kind", ["ar-canonical", "mar-graph"])
def test_models_score_training_batches(kind):
    enc = GraphEncoding(18, 1, 1)
    model = G.build_model(kind, enc, (3, 6))
    x = enc.encode(G.load_graphs("ego_small", data=DATA))[:2]
    loss = model.loss(x, generator=torch.Generator().manual_seed(0))
    assert torch.isfinite(loss.total)


def test_missing_data_is_named(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"ego_small_edges\.npz"):
        G.load_graphs("ego_small", data=tmp_path)


@pytest.mark.slow
def test_smoke_run(tmp_path, monkeypatch):
    G.main(["--dataset", "ego_small", "--data", str(DATA), "--max-steps", "2", "--batch", "4", "--num-orders", "2",
            "--models", "ar-randbfs", "--out", str(tmp_path)])
    r = json.loads((tmp_path / "ego_small.json").read_text())["models"]["ar-randbfs"]
    assert r["steps"] == 2 and set(r["mmd"]) == {"degree", "clustering", "orbit"}
