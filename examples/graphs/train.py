"""Graph fractals on the generic graph benchmarks (ego-small, community-small) with the field's MMDs.

Shape letters: N graphs, n node slots (18 for ego-small, 20 for community-small), W = n entries
per node row, K importance-sampled orders.

Data: ``{ego_small,community_small}_edges.npz`` in the ``--data`` folder (default
``examples/graphs/data``; unlabelled, undirected graphs; keys ``num_nodes[G]``, ``edges[E, 2]``
with node ids local to each graph, ``edge_offsets[G + 1]``). These benchmarks are not on the
Hugging Face Hub: get them from the GDSS repository (see the README). ``--data`` also takes a Hub
dataset name in the ``graphs-datasets`` layout (columns ``num_nodes``, ``edge_index``). Split: a seeded shuffle (``torch.randperm`` with seed 42), the first 80% train and the
last 20% test (160 / 40 graphs for ego-small, 80 / 20 for community-small).

A graph becomes a :class:`fractalkit.graphs.GraphEncoding` (one node type, one edge type:
V = 2) in a node order; three models (a small ablation):

- ``ar-canonical``: AR levels ``GraphSubsets(n -> k1 subsets) -> GraphSubsets(-> single nodes)
  -> SequenceChunks(W, 1) -> leaf``, trained on one canonical BFS encoding per graph
  (:func:`fractalkit.graphs.bfs_order` from node 0 of the file's order);
- ``ar-randbfs``: the same network, trained on a fresh random-BFS encoding of every graph at
  every step (:func:`fractalkit.graphs.random_bfs_encodings`);
- ``mar-graph``: the top level a MAR level with graph-neighbour conditions
  (``MARLevelConfig(linked_neighbours=True)``: links from ``GraphSubsets.links``), random-BFS training; scored under the identity
  MAR order (exact for that order).

Metrics: on the test graphs, the canonical-encoding log-likelihood (a lower bound on log p(G))
and the importance-sampled estimate over K random-BFS orders with its standard error
(:func:`fractalkit.graphs.graph_log_likelihood`); on as many samples as test graphs, the
degree, clustering and orbit MMDs of GraphRNN / GDSS (:func:`fractalkit.graphs.graph_mmd`).
Isolated nodes are dropped from samples before the MMDs, as GDSS does.

Usage (from the repository root)::

    python examples/graphs/train.py --dataset ego_small --max-steps 600 --out examples/graphs/results
"""

from __future__ import annotations

import json
import math
import time
from pathlib import Path

import numpy as np
import torch

from fractalkit import ARLevelConfig, CategoricalLeafConfig, Fractal, MARLevelConfig, cli
from fractalkit.data import hub_datasets
from fractalkit.graphs import (
    Graph,
    GraphEncoding,
    bfs_order,
    graph_log_likelihood,
    graph_mmd,
    graphs_to_adjacency,
    random_bfs_encodings,
)
from fractalkit.training import budget

HERE = Path(__file__).resolve().parent
#: the default data folder: ego-small and community-small have no public copy on the Hugging Face
#: Hub, so the default is this local folder (``--data`` overrides it, e.g. ``../shared/data/graphs``)
DATA = HERE / "data"
#: where the two benchmarks come from (GraphRNN's splits, as GDSS distributes them)
SOURCE = "https://github.com/harryjo97/GDSS (data/ego_small.pkl, data/community_small.pkl)"
#: node slots and the node subsets of the two graph levels per dataset
LAYOUT = {"ego_small": (18, (3, 6)), "community_small": (20, (4, 5))}
MODELS = ("ar-canonical", "ar-randbfs", "mar-graph")


def missing_message(path: Path) -> str:
    """What to download and where to put it, for a missing benchmark file."""
    return (f"load_graphs: {path} is missing. The ego-small and community-small benchmarks are not on "
            f"the Hugging Face Hub; get them from {SOURCE}, write each as {path.name} (keys num_nodes, "
            f"edges, edge_offsets; see examples/graphs/README.md) into {path.parent}, or pass the folder "
            "that holds them with --data FOLDER (e.g. --data ../shared/data/graphs)")


def read_hub_graphs(name: str) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``(num_nodes[G], edges[E, 2], edge_offsets[G + 1])`` of a Hub dataset with ``num_nodes``
    and ``edge_index`` (``[2, E_g]`` per graph) columns."""
    ds = hub_datasets.load_hub_dataset(name, kind="graphs")
    if not {"num_nodes", "edge_index"} <= set(ds.column_names):
        raise ValueError(f"--data {name}: expected num_nodes and edge_index columns, got {ds.column_names}")
    sizes = np.asarray(ds["num_nodes"], dtype=np.int64)
    per_graph = [np.asarray(e, dtype=np.int64).reshape(2, -1).T for e in ds["edge_index"]]
    offsets = np.concatenate([[0], np.cumsum([len(e) for e in per_graph])]).astype(np.int64)
    edges = np.concatenate(per_graph) if per_graph else np.zeros((0, 2), np.int64)
    return sizes, edges, offsets


def load_graphs(name: str, *, data: str | Path = DATA) -> Graph:
    """The dataset as a padded :class:`Graph` (node type 0, edge type 1), in the file's order.

    Args:
        name: ``ego_small`` or ``community_small`` (the node-slot layout).
        data: the folder holding ``<name>_edges.npz``, or a Hub dataset name (see module docs).

    Raises:
        FileNotFoundError: if the npz is missing (the message says where to get it).
        ValueError: if a graph has more nodes than the layout's slots.
    """
    if hub_datasets.is_hub_name(data):
        sizes, edges, offsets = read_hub_graphs(str(data))
    else:
        path = Path(data) / f"{name}_edges.npz"
        if not path.exists():
            raise FileNotFoundError(missing_message(path))
        try:
            d = np.load(path)
            sizes, edges, offsets = d["num_nodes"], d["edges"], d["edge_offsets"]
        except (OSError, ValueError, KeyError) as err:
            raise ValueError(f"load_graphs: {path} is not an npz with num_nodes, edges and edge_offsets "
                             f"({type(err).__name__}: {err})") from None
    if len(sizes) == 0:
        raise ValueError(f"load_graphs: {data} holds no graphs")
    n = LAYOUT[name][0]
    if int(sizes.max()) > n:
        raise ValueError(f"load_graphs: {name} has a graph with {int(sizes.max())} nodes > {n} slots")
    adj = torch.zeros(len(sizes), n, n, dtype=torch.int64)
    for g in range(len(sizes)):
        e = torch.from_numpy(edges[offsets[g] : offsets[g + 1]].astype(np.int64))
        adj[g, e[:, 0], e[:, 1]] = 1
        adj[g, e[:, 1], e[:, 0]] = 1
    adj.diagonal(dim1=1, dim2=2).zero_()
    mask = torch.arange(n)[None] < torch.from_numpy(sizes.astype(np.int64))[:, None]
    return Graph(torch.zeros(len(sizes), n, dtype=torch.int64), adj, mask)


def subset(graph: Graph, idx: torch.Tensor) -> Graph:
    """Graphs ``idx`` of the batch."""
    return Graph(graph.node_types[idx], graph.adjacency[idx], graph.node_mask[idx])


def split(graph: Graph, seed: int = 42) -> tuple[Graph, Graph]:
    """``(train, test)``: a seeded shuffle, first 80% train, last 20% test."""
    perm = torch.randperm(len(graph), generator=torch.Generator().manual_seed(seed))
    cut = round(0.8 * len(graph))
    return subset(graph, perm[:cut]), subset(graph, perm[cut:])


def build_model(kind: str, encoding: GraphEncoding, subsets: tuple[int, ...]) -> Fractal:
    """One of :data:`MODELS` (the two AR models share the architecture).

    Raises:
        ValueError: for an unknown kind.
    """
    if kind not in MODELS:
        raise ValueError(f"build_model: kind must be one of {MODELS}, got {kind!r}")
    parts = encoding.partitioners(subsets)
    top = (MARLevelConfig(width=64, depth=2, heads=4, neighbours=False, linked_neighbours=True, embed="table")
           if kind == "mar-graph" else ARLevelConfig(width=64, depth=2, heads=4, embed="table"))
    levels = [top, ARLevelConfig(width=48, depth=1, heads=4, embed="table"),
              ARLevelConfig(width=32, depth=1, heads=4, embed="table")]
    return Fractal(list(zip(parts, levels, strict=True)), leaf=CategoricalLeafConfig(num_values=encoding.num_values))


def train(model: Fractal, kind: str, encoding: GraphEncoding, train_graphs: Graph, *, steps: int,
          batch: int, lr: float, seed: int) -> dict[str, float]:
    """AdamW for a fixed number of steps (20 warm-up, cosine); canonical or random-BFS batches."""
    canonical = encoding.encode(train_graphs.permute(bfs_order(train_graphs, root=0)))

    def next_batch(g: torch.Generator) -> torch.Tensor:
        idx = torch.randint(0, len(train_graphs), (batch,), generator=g)
        if kind == "ar-canonical":
            return canonical[idx]
        return random_bfs_encodings(encoding, subset(train_graphs, idx), generator=g)

    return budget.train_for_budget(model, next_batch, budget_s=math.inf, lr=lr, max_steps=steps,
                                   generator=torch.Generator().manual_seed(seed))


@torch.no_grad()
def sample_graphs(model: Fractal, encoding: GraphEncoding, num: int, seed: int) -> tuple[Graph, float]:
    """``(decoded graphs, fraction of samples that are valid encodings)`` at temperature 1."""
    model.eval()
    x = model.sample(num_samples=num, generator=torch.Generator().manual_seed(seed))
    graphs, valid = encoding.decode(x.cpu())
    return graphs, float(valid.float().mean())


def draw(graphs: list[np.ndarray], path: Path, title: str) -> None:
    """A grid of graphs on circular layouts (matplotlib, Agg)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    cols = min(len(graphs), 8)
    rows = math.ceil(len(graphs) / cols)
    fig, axes = plt.subplots(rows, cols, figsize=(1.6 * cols, 1.6 * rows))
    for ax, a in zip(np.atleast_1d(axes).flat, graphs, strict=False):
        n = a.shape[0]
        t = 2 * np.pi * np.arange(n) / max(n, 1)
        xy = np.stack([np.cos(t), np.sin(t)], 1)
        for u, v in zip(*np.nonzero(np.triu(a, 1)), strict=True):
            ax.plot(xy[[u, v], 0], xy[[u, v], 1], lw=0.6, color="0.4")
        ax.scatter(xy[:, 0], xy[:, 1], s=8, color="tab:blue", zorder=3)
    for ax in np.atleast_1d(axes).flat:
        ax.set_axis_off()
    fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)
    from PIL import Image

    Image.open(path).convert("RGB").quantize(colors=16).save(path, optimize=True)  # ~30 KB, not ~150


def table(results: dict) -> str:
    """The Markdown table of one dataset's results."""
    lines = ["| model | steps | train s | test log p bound (canonical) | test log p IS (K orders) ± se | "
             "valid samples | degree | clustering | orbit |", "|---|---|---|---|---|---|---|---|---|"]
    for kind, r in results["models"].items():
        lines.append(
            f"| {kind} | {r['steps']} | {r['train_seconds']:.0f} | {r['test_log_p_canonical']:.2f} | "
            f"{r['test_log_p_is']:.2f} ± {r['test_log_p_is_se']:.2f} | {100 * r['valid']:.0f}% | "
            f"{r['mmd']['degree']:.3f} | {r['mmd']['clustering']:.3f} | {r['mmd']['orbit']:.3f} |"
        )
    ref = results["train_vs_test_mmd"]
    lines.append(f"| (training graphs vs test) | - | - | - | - | - | {ref['degree']:.3f} | "
                 f"{ref['clustering']:.3f} | {ref['orbit']:.3f} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    """Train the ablation's models on one dataset, score the test graphs, sample, report MMDs."""
    ap = cli.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--dataset", choices=sorted(LAYOUT), default="ego_small")
    ap.add_argument("--data", default=DATA, help="folder holding <dataset>_edges.npz (default "
                    "examples/graphs/data), or a Hub dataset name with num_nodes and edge_index columns")
    ap.add_argument("--models", default=",".join(MODELS))
    ap.add_argument("--max-steps", type=cli.positive_int, default=600)
    ap.add_argument("--batch", type=cli.positive_int, default=32)
    ap.add_argument("--lr", type=cli.positive_float, default=1e-3)
    ap.add_argument("--num-orders", type=cli.positive_int, default=64, help="K orders per test graph")
    ap.add_argument("--threads", type=cli.positive_int, default=1, help="1: fastest on a shared CPU")
    ap.add_argument("--seed", type=cli.non_negative_int, default=0)
    ap.add_argument("--out", type=cli.output_folder, default=Path("runs/graphs-results"),
                    help="results folder (default runs/graphs-results; the committed figures: --out examples/graphs/results)")
    cli.add_debug_argument(ap)
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    if Path(args.data) == DATA and not (DATA / f"{args.dataset}_edges.npz").exists():
        raise FileNotFoundError(missing_message(DATA / f"{args.dataset}_edges.npz"))  # what to download
    args.data = cli.check_data(ap, "--data", args.data, expect="folder",
                               what="a folder holding <dataset>_edges.npz, or a Hub dataset name")
    n, subsets = LAYOUT[args.dataset]
    encoding = GraphEncoding(n, num_node_types=1, num_edge_types=1)
    train_graphs, test_graphs = split(load_graphs(args.dataset, data=args.data))
    canonical_test = test_graphs.permute(bfs_order(test_graphs, root=0))
    test_adj = graphs_to_adjacency(test_graphs)
    print(f"{args.dataset}: {len(train_graphs)} train, {len(test_graphs)} test graphs", flush=True)
    args.out.mkdir(parents=True, exist_ok=True)
    results: dict = {
        "dataset": args.dataset, "split": "torch.randperm seed 42; first 80% train, last 20% test",
        "max_nodes": n, "subsets": list(subsets), "num_orders": args.num_orders,
        "mmd_settings": "GDSS/GraphRNN: degree gaussian_emd sigma 1; clustering gaussian_emd sigma 0.1, "
                        "100 bins, distance/100; orbit gaussian sigma 30 on mean 15-orbit counts; squared MMD",
        "train_vs_test_mmd": graph_mmd(test_adj, graphs_to_adjacency(train_graphs)),
        "machine": budget.device_description("cpu", args.threads),
        "models": {},
    }
    for kind in args.models.split(","):
        torch.manual_seed(args.seed)
        model = build_model(kind, encoding, subsets)
        start = time.perf_counter()
        log = train(model, kind, encoding, train_graphs, steps=args.max_steps, batch=args.batch, lr=args.lr,
                    seed=args.seed)
        seconds = time.perf_counter() - start
        model.eval()
        kwargs = {"orders": "identity"} if kind == "mar-graph" else {}
        ll = graph_log_likelihood(model, encoding, canonical_test, num_orders=args.num_orders,
                                  generator=torch.Generator().manual_seed(args.seed + 1), log_prob_kwargs=kwargs)
        samples, valid = sample_graphs(model, encoding, len(test_graphs), seed=args.seed + 2)
        sample_adj = graphs_to_adjacency(samples, drop_isolated=True)
        r = {
            "steps": log["steps"], "train_seconds": seconds, "last_loss_nats": log["last_loss_nats"],
            "params": sum(p.numel() for p in model.parameters()),
            "test_log_p_canonical": float(ll.canonical_bound.mean()),
            "test_log_p_is": float(ll.log_p.mean()),
            "test_log_p_is_se": float(ll.stderr.pow(2).sum().sqrt() / len(test_graphs)),
            "test_is_ess_mean": float(ll.ess.mean()),
            "is_estimates": ll.estimates, "likelihood_kind": ll.model_kind,
            "valid": valid,
            "mean_nodes_sampled": float(np.mean([a.shape[0] for a in sample_adj])),
            "mmd": graph_mmd(test_adj, sample_adj),
        }
        results["models"][kind] = r
        draw(sample_adj[:16], args.out / f"{args.dataset}_{kind}_samples.png", f"{args.dataset}: {kind} samples")
        print(kind, json.dumps(r), flush=True)
        (args.out / f"{args.dataset}.json").write_text(json.dumps(results, indent=2))
    draw(test_adj[:16], args.out / f"{args.dataset}_test.png", f"{args.dataset}: test graphs")
    print(table(results))


if __name__ == "__main__":
    cli.run(main)
