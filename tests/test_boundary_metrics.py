"""Bad inputs to the metrics, graph likelihoods and the n-gram baseline (issue 21, class 5): every
count, size and split argument is checked, empty inputs are refused (or answered correctly), NaN
inputs are refused, and numpy/torch errors from files become one error naming the file.

Each case asserts the exception type and that the message names the argument (or the file).
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from fractalkit.baselines import NGramModel, choose_order
from fractalkit.graphs import Graph, GraphEncoding, bfs_order
from fractalkit.graphs import metrics as gm
from fractalkit.imagenet import metrics


def _probs(n: int = 6, k: int = 4) -> np.ndarray:
    p = np.random.default_rng(0).random((n, k)) + 0.1
    return p / p.sum(1, keepdims=True)


def _feats(n: int = 8, d: int = 3, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).normal(size=(n, d))


def _nan_feats() -> np.ndarray:
    f = _feats()
    f[2, 1] = np.nan
    return f


class StandIn:
    """A tiny feature network: mean colour as features, a softmax over 4 classes."""

    def __call__(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        f = images.double().mean((2, 3))
        return f, torch.softmax(f[:, :1].repeat(1, 4) * torch.arange(4.0, dtype=torch.float64), 1)


def _images(n: int = 4) -> torch.Tensor:
    return torch.randint(0, 256, (n, 3, 4, 4), generator=torch.Generator().manual_seed(0), dtype=torch.uint8)


IMAGE_METRIC_CASES = {  # id -> (call, exception, words the message must hold)
    "is_split_negative": (lambda: metrics.inception_score(_probs(), split_size=-5), ValueError, "split_size"),
    "is_split_zero": (lambda: metrics.inception_score(_probs(), split_size=0), ValueError, "split_size"),
    "is_split_float": (lambda: metrics.inception_score(_probs(), split_size=2.5), TypeError, "split_size"),
    "is_split_str": (lambda: metrics.inception_score(_probs(), split_size="5"), TypeError, "split_size"),
    "is_strings": (lambda: metrics.inception_score([["a", "b"]]), TypeError, "inception_score"),
    "frechet_strings": (lambda: metrics.frechet_distance(["a"], [[1.0]], [0.0], [[1.0]]), TypeError, "frechet_distance"),
    "is_empty": (lambda: metrics.inception_score(np.zeros((0, 4))), ValueError, "inception_score"),
    "is_nan": (lambda: metrics.inception_score(np.full((3, 4), np.nan)), ValueError, "inception_score"),
    "pr_k_zero": (lambda: metrics.precision_recall(_feats(), _feats(seed=1), k=0), ValueError, "k"),
    "pr_k_negative": (lambda: metrics.precision_recall(_feats(), _feats(seed=1), k=-2), ValueError, "k"),
    "pr_k_float": (lambda: metrics.precision_recall(_feats(), _feats(seed=1), k=1.5), TypeError, "k"),
    "pr_k_too_big": (lambda: metrics.precision_recall(_feats(), _feats(seed=1), k=8), ValueError, "k=8"),
    "pr_batch_zero": (lambda: metrics.precision_recall(_feats(), _feats(seed=1), batch=0), ValueError, "batch"),
    "pr_batch_negative": (lambda: metrics.precision_recall(_feats(), _feats(seed=1), batch=-1), ValueError, "batch"),
    "pr_nan_real": (lambda: metrics.precision_recall(_nan_feats(), _feats(seed=1)), ValueError, "real"),
    "pr_nan_fake": (lambda: metrics.precision_recall(_feats(), _nan_feats()), ValueError, "fake"),
    "pr_empty": (lambda: metrics.precision_recall(np.zeros((0, 3)), _feats()), ValueError, "precision_recall"),
    "pr_one_axis": (lambda: metrics.precision_recall(np.zeros(5), _feats()), ValueError, "real"),
    "fid_nan": (lambda: metrics.fid_from_features(_nan_feats(), _feats()), ValueError, "fid_from_features"),
    "fid_one_row": (lambda: metrics.fid_from_features(_feats(1), _feats()), ValueError, "fid_from_features"),
    "save_reference_nan": (lambda: metrics.save_reference("unused.npz", _nan_feats()), ValueError, "save_reference"),
    "evaluate_split": (lambda: metrics.evaluate(metrics.FeatureSet(_feats(), _probs(8)),
                                                metrics.Reference(np.zeros(3), np.eye(3)), split_size=0),
                       ValueError, "split_size"),
    "evaluate_k": (lambda: metrics.evaluate(metrics.FeatureSet(_feats(), _probs(8)),
                                            metrics.Reference(np.zeros(3), np.eye(3), _feats()), k=0),
                   ValueError, "k"),
    "extract_batch_zero": (lambda: metrics.extract_features(StandIn(), _images(), batch=0), ValueError, "batch"),
    "extract_batch_negative": (lambda: metrics.extract_features(StandIn(), _images(), batch=-3), ValueError, "batch"),
    "extract_bad_extractor_rows": (lambda: metrics.extract_features(lambda x: (x[:1].double().mean((2, 3)), x[:1].double()),
                                                                    _images()), ValueError, "extractor"),
    "extract_bad_extractor_type": (lambda: metrics.extract_features(lambda x: x.double(), _images()),
                                   ValueError, "extractor"),
    "extract_empty": (lambda: metrics.extract_features(StandIn(), torch.zeros(0, 3, 4, 4, dtype=torch.uint8)),
                      ValueError, "no images"),
}


@pytest.mark.parametrize("case", sorted(IMAGE_METRIC_CASES))
def test_image_metrics_refuse_bad_arguments(case: str, tmp_path, monkeypatch) -> None:
    monkeypatch.chdir(tmp_path)
    call, exc, words = IMAGE_METRIC_CASES[case]
    with pytest.raises(exc, match=rf"\b{words}\b" if words.isidentifier() else None) as info:
        call()
    assert words in str(info.value), str(info.value)


def test_empty_batches_among_images_are_skipped() -> None:
    batches = [_images(2), torch.zeros(0, 3, 4, 4, dtype=torch.uint8), _images(1)]
    assert metrics.extract_features(StandIn(), batches).features.shape == (3, 3)


# ---- sample_images resuming, npz readers -------------------------------------------------------


def _tiny_rgb_model():
    from fractalkit import ARLevelConfig, Fractal, ImagePatches, RGBLeafConfig

    torch.manual_seed(0)
    return Fractal([(ImagePatches(4, 2), ARLevelConfig(width=16, depth=1, heads=2)),
                    (ImagePatches(2, 1), ARLevelConfig(width=16, depth=1, heads=2))],
                   leaf=RGBLeafConfig(width=8, depth=1, heads=2), num_classes=3).eval()


BATCH_FILES = {  # id -> (what the batch file for 2 images of 4x4 holds, words)
    "five_images": (lambda p: np.savez(p, arr_0=np.zeros((5, 4, 4, 3), np.uint8)), "holds uint8 [5, 4, 4, 3]"),
    "other_size": (lambda p: np.savez(p, arr_0=np.zeros((2, 8, 8, 3), np.uint8)), "[2, 8, 8, 3]"),
    "float_images": (lambda p: np.savez(p, arr_0=np.zeros((2, 4, 4, 3), np.float32)), "float32"),
    "no_arr_0": (lambda p: np.savez(p, images=np.zeros((2, 4, 4, 3), np.uint8)), "no arr_0"),
    "truncated": (lambda p: (np.savez(p, arr_0=np.zeros((2, 4, 4, 3), np.uint8)),
                             p.write_bytes(p.read_bytes()[:40])), "not a readable .npz"),
    "not_a_zip": (lambda p: p.write_bytes(b"hello, not a zip file"), "not a readable .npz"),
    "object_array": (lambda p: np.savez(p, arr_0=np.array([{"a": 1}, None], dtype=object)), "not a readable .npz"),
}


@pytest.mark.parametrize("case", sorted(BATCH_FILES))
def test_sample_images_refuses_a_batch_file_that_does_not_hold_what_was_asked(case: str, tmp_path) -> None:
    write, words = BATCH_FILES[case]
    folder = tmp_path / "s"
    folder.mkdir()
    path = folder / "samples_000000_2.npz"
    write(path)
    with pytest.raises(ValueError) as info:
        metrics.sample_images(_tiny_rgb_model(), 2, batch=2, folder=folder, progress=False)
    message = str(info.value)
    assert str(path) in message and words in message and "delete" in message, message


@pytest.mark.parametrize(("kwargs", "exc", "name"), [
    ({"batch": 0}, ValueError, "batch"), ({"batch": -2}, ValueError, "batch"),
    ({"batch": 2.0}, TypeError, "batch"), ({"seed": -1}, ValueError, "seed"), ({"seed": "0"}, TypeError, "seed"),
], ids=["batch_zero", "batch_negative", "batch_float", "seed_negative", "seed_str"])
def test_sample_images_refuses_bad_counts(kwargs, exc, name) -> None:
    with pytest.raises(exc, match=rf"\b{name}\b"):
        metrics.sample_images(_tiny_rgb_model(), 2, progress=False, **kwargs)


REFERENCE_FILES = {  # id -> (writer, words)
    "truncated": (lambda p: (np.savez(p, mu=np.zeros(3), sigma=np.eye(3)), p.write_bytes(p.read_bytes()[:50])),
                  "not a readable .npz"),
    "not_a_zip": (lambda p: p.write_bytes(b"\x00" * 64), "not a readable .npz"),
    "object_mu": (lambda p: np.savez(p, mu=np.array([None, 1], dtype=object), sigma=np.eye(2)), "not a readable .npz"),
    "string_mu": (lambda p: np.savez(p, mu=np.array(["a", "b"]), sigma=np.eye(2)), "mu and sigma"),
    "nan_sigma": (lambda p: np.savez(p, mu=np.zeros(2), sigma=np.full((2, 2), np.nan)), "NaN"),
    "float_images": (lambda p: np.savez(p, arr_0=np.zeros((2, 4, 4, 3), np.float32)), "uint8"),
}


@pytest.mark.parametrize("case", sorted(REFERENCE_FILES))
def test_load_reference_turns_numpy_errors_into_one_error_naming_the_file(case: str, tmp_path) -> None:
    write, words = REFERENCE_FILES[case]
    path = tmp_path / "ref.npz"
    write(path)
    with pytest.raises(ValueError) as info:
        metrics.load_reference(path, StandIn())
    assert str(path) in str(info.value) and words in str(info.value), str(info.value)


# ---- graphs ------------------------------------------------------------------------------------


def _adj(n: int = 4) -> np.ndarray:
    a = np.zeros((n, n), bool)
    for i in range(n - 1):
        a[i, i + 1] = a[i + 1, i] = True
    return a


def _graph(n_graphs: int = 2) -> Graph:
    adj = torch.zeros(n_graphs, 3, 3, dtype=torch.long)
    adj[:, 0, 1] = adj[:, 1, 0] = 1
    return Graph(torch.zeros(n_graphs, 3, dtype=torch.long), adj, torch.ones(n_graphs, 3, dtype=torch.bool))


GRAPH_CASES = {
    "clustering_bins_zero": (lambda: gm.clustering_histogram(_adj(), bins=0), ValueError, "bins"),
    "clustering_bins_float": (lambda: gm.clustering_histogram(_adj(), bins=2.5), TypeError, "bins"),
    "emd_sigma_zero": (lambda: gm.gaussian_emd(np.ones(3), np.ones(3), sigma=0.0), ValueError, "sigma"),
    "emd_scaling_negative": (lambda: gm.gaussian_emd(np.ones(3), np.ones(3), distance_scaling=-1.0),
                             ValueError, "distance_scaling"),
    "gaussian_sigma_nan": (lambda: gm.gaussian(np.ones(3), np.ones(3), sigma=float("nan")), ValueError, "sigma"),
    "mmd_sigma_str": (lambda: gm.mmd([np.ones(3)], [np.ones(3)], gm.gaussian, sigma="1"), TypeError, "sigma"),
    "mmd_nan_vector": (lambda: gm.mmd([np.array([1.0, np.nan])], [np.ones(2)], gm.gaussian_emd), ValueError, "samples1"),
    "mmd_negative_hist": (lambda: gm.mmd([np.ones(2)], [np.array([1.0, -1.0])], gm.gaussian_emd), ValueError, "samples2"),
    "mmd_2d_vector": (lambda: gm.mmd([np.ones((2, 2))], [np.ones(2)], gm.gaussian_emd), ValueError, "samples1"),
    "mmd_kernel_not_callable": (lambda: gm.mmd([np.ones(2)], [np.ones(2)], "gaussian"), TypeError, "kernel"),
    "mmd_empty": (lambda: gm.mmd([], [np.ones(2)], gm.gaussian), ValueError, "non-empty"),
    "graph_mmd_empty": (lambda: gm.graph_mmd([], [_adj()]), ValueError, "non-empty"),
    "bfs_root_float": (lambda: bfs_order(_graph(), root=1.5), TypeError, "root"),
    "bfs_root_bool": (lambda: bfs_order(_graph(), root=True), TypeError, "root"),
    "bfs_root_float_tensor": (lambda: bfs_order(_graph(), root=torch.tensor([0.5, 1.0])), TypeError, "root"),
    "bfs_root_wrong_length": (lambda: bfs_order(_graph(), root=torch.tensor([0, 1, 2])), ValueError, "root"),
    "bfs_root_outside": (lambda: bfs_order(_graph(), root=7), ValueError, "root"),
}


@pytest.mark.parametrize("case", sorted(GRAPH_CASES))
def test_graph_metrics_and_orders_refuse_bad_arguments(case: str) -> None:
    call, exc, words = GRAPH_CASES[case]
    with pytest.raises(exc) as info:
        call()
    assert words in str(info.value), str(info.value)


def _graph_model():
    from fractalkit import ARLevelConfig, CategoricalLeafConfig, Fractal, SequenceChunks

    enc = GraphEncoding(3, 1, 1)
    torch.manual_seed(0)
    model = Fractal([(SequenceChunks(9, 3), ARLevelConfig(width=8, depth=1, heads=2))],
                    leaf=CategoricalLeafConfig(num_values=enc.num_values)).eval()
    return model, enc


def _likelihood_call(fn: str, graph: Graph | None = None, **kwargs):
    pytest.importorskip("pynauty")
    from fractalkit.graphs import graph_log_likelihood, graph_log_likelihood_exact

    model, enc = _graph_model()
    f = graph_log_likelihood if fn == "is" else graph_log_likelihood_exact
    extra = {"num_orders": 2} if fn == "is" else {}
    return f(model, enc, _graph() if graph is None else graph, **extra, **kwargs)


def _no_graphs() -> Graph:
    return Graph(torch.zeros(0, 3, dtype=torch.long), torch.zeros(0, 3, 3, dtype=torch.long),
                 torch.zeros(0, 3, dtype=torch.bool))


LIKELIHOOD_CASES = {
    "is_batch_size_zero": (lambda: _likelihood_call("is", batch_size=0), ValueError, "batch_size"),
    "is_batch_size_negative": (lambda: _likelihood_call("is", batch_size=-4), ValueError, "batch_size"),
    "is_batch_size_float": (lambda: _likelihood_call("is", batch_size=8.0), TypeError, "batch_size"),
    "is_graph_batch_zero": (lambda: _likelihood_call("is", graph_batch=0), ValueError, "graph_batch"),
    "exact_batch_size_none": (lambda: _likelihood_call("exact", batch_size=None), TypeError, "batch_size"),
    "is_kwargs_list": (lambda: _likelihood_call("is", log_prob_kwargs=["orders"]), TypeError, "log_prob_kwargs"),
    "is_no_graphs": (lambda: _likelihood_call("is", graph=_no_graphs()), ValueError, "no graphs"),
    "exact_batch_size_zero": (lambda: _likelihood_call("exact", batch_size=0), ValueError, "batch_size"),
    "exact_max_nodes_str": (lambda: _likelihood_call("exact", max_nodes="8"), TypeError, "max_nodes"),
    "exact_max_nodes_negative": (lambda: _likelihood_call("exact", max_nodes=-1), ValueError, "max_nodes"),
}


@pytest.mark.parametrize("case", sorted(LIKELIHOOD_CASES))
def test_graph_likelihoods_refuse_bad_arguments(case: str) -> None:
    call, exc, words = LIKELIHOOD_CASES[case]
    with pytest.raises(exc) as info:
        call()
    assert words in str(info.value), str(info.value)


def test_exact_graph_likelihood_of_no_graphs_is_empty() -> None:
    out = _likelihood_call("exact", graph=_no_graphs())
    assert out.shape == (0,) and out.dtype == torch.float64


# ---- the n-gram baseline -----------------------------------------------------------------------

TRAIN = [np.array([0, 1, 2, 3] * 20)]
EMPTY = np.zeros(0, dtype=np.int64)


def _fitted() -> NGramModel:
    return NGramModel(2, 4).fit(TRAIN)


NGRAM_CASES = {
    "bits_empty_sequence": (lambda: _fitted().bits([EMPTY]), ValueError, "no symbols"),
    "bits_empty_array": (lambda: _fitted().bits(EMPTY), ValueError, "no symbols"),
    "bits_no_sequences": (lambda: _fitted().bits([]), ValueError, "no sequences"),
    "fit_empty_sequences": (lambda: NGramModel(2, 4).fit([EMPTY, EMPTY]), ValueError, "no symbols"),
    "order_float": (lambda: NGramModel(2.0, 4), TypeError, "order"),
    "order_bool": (lambda: NGramModel(True, 4), TypeError, "order"),
    "values_str": (lambda: NGramModel(2, "4"), TypeError, "num_values"),
    "choose_valid_empty": (lambda: choose_order(TRAIN, [EMPTY], 4), ValueError, "no symbols"),
    "choose_train_empty": (lambda: choose_order([EMPTY], TRAIN, 4), ValueError, "no symbols"),
    "choose_no_orders": (lambda: choose_order(TRAIN, TRAIN, 4, orders=()), ValueError, "orders"),
    "choose_orders_int": (lambda: choose_order(TRAIN, TRAIN, 4, orders=3), ValueError, "orders"),
    "choose_order_zero": (lambda: choose_order(TRAIN, TRAIN, 4, orders=(0, 2)), ValueError, "orders[0]"),
    "choose_order_str": (lambda: choose_order(TRAIN, TRAIN, 4, orders=("3",)), TypeError, "orders[0]"),
    "choose_values_one": (lambda: choose_order(TRAIN, TRAIN, 1), ValueError, "num_values"),
    "choose_values_float": (lambda: choose_order(TRAIN, TRAIN, 4.0), TypeError, "num_values"),
}


@pytest.mark.parametrize("case", sorted(NGRAM_CASES))
def test_ngram_baseline_refuses_bad_or_empty_inputs(case: str) -> None:
    call, exc, words = NGRAM_CASES[case]
    with pytest.raises(exc) as info:
        call()
    assert words in str(info.value), str(info.value)


def test_ngram_scores_of_empty_sequences_are_an_empty_array() -> None:
    """log_probs answers an empty sequence correctly (no symbols, no numbers)."""
    out = _fitted().log_probs([EMPTY, np.array([0, 1])])
    assert out.shape == (2,) and np.isfinite(out).all() and math.isclose(float(np.exp(out[1])), 1.0, abs_tol=0.2)


# ---- the Inception file: SHA-256 checked before torch.jit.load ---------------------------------


class _FakeInception(torch.nn.Module):
    """Stands in for the TorchScript Inception file: the same call signature, tiny outputs."""

    def __init__(self, scale: float = 1.0) -> None:
        super().__init__()
        self.scale = scale

    def forward(self, x: torch.Tensor, return_features: bool = False, no_output_bias: bool = False) -> torch.Tensor:
        f = x.float().mean((2, 3)) * self.scale
        if return_features:
            return f
        return torch.softmax(f, 1)


def _fake_inception(path, scale: float = 1.0):
    import warnings

    with warnings.catch_warnings():  # torch 2.13 deprecates scripting; the real file is TorchScript
        warnings.simplefilter("ignore", DeprecationWarning)
        torch.jit.save(torch.jit.script(_FakeInception(scale)), str(path))
    return path


@pytest.fixture
def cache(tmp_path, monkeypatch):
    """A private cache root (where the first-use hash is recorded), no pinned hash in the env."""
    monkeypatch.setenv("FRACTALKIT_CACHE", str(tmp_path / "cache"))
    monkeypatch.delenv(metrics.INCEPTION_SHA256_ENV, raising=False)
    return tmp_path / "cache"


def _sha(path) -> str:
    import hashlib

    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_inception_first_use_records_the_hash_and_later_loads_check_it(tmp_path, cache) -> None:
    path = _fake_inception(tmp_path / "inception.pt")
    net = metrics.InceptionV3(path)
    features, probs = net(_images(2))
    assert features.shape == (2, 3) and probs.shape == (2, 3)
    record = cache / metrics.INCEPTION_RECORD
    assert record.is_file() and _sha(path) in record.read_text()
    metrics.InceptionV3(path)  # the same file loads again
    _fake_inception(path, scale=2.0)  # replaced by other code
    with pytest.raises(ValueError) as info:
        metrics.InceptionV3(path)
    message = str(info.value)
    assert str(path) in message and str(record) in message and "download" in message, message


INCEPTION_CASES = {  # id -> (how the file is pinned/made, words)
    "pinned_argument_differs": (lambda p, mp: metrics.InceptionV3(_fake_inception(p), sha256="0" * 64), "pinned"),
    "pinned_env_differs": (lambda p, mp: (mp.setenv(metrics.INCEPTION_SHA256_ENV, "a" * 64),
                                          metrics.InceptionV3(_fake_inception(p))), "pinned"),
    "pinned_constant_differs": (lambda p, mp: (mp.setattr(metrics, "INCEPTION_SHA256", "b" * 64),
                                               metrics.InceptionV3(_fake_inception(p))), "pinned"),
    "pin_not_hex": (lambda p, mp: metrics.InceptionV3(_fake_inception(p), sha256="xyz"), "sha256"),
    "not_torchscript": (lambda p, mp: (p.write_bytes(b"PK\x03\x04 not torchscript"),
                                       metrics.InceptionV3(p, sha256=_sha(p))), "not a loadable TorchScript"),
    "record_unreadable": (lambda p, mp: ((p.parent / "cache").mkdir(exist_ok=True),
                                         (p.parent / "cache" / metrics.INCEPTION_RECORD).write_text("{"),
                                         metrics.InceptionV3(_fake_inception(p))), "recorded hash"),
}


@pytest.mark.parametrize("case", sorted(INCEPTION_CASES))
def test_inception_file_is_refused_before_loading_when_its_hash_is_wrong(case, tmp_path, cache, monkeypatch) -> None:
    make, words = INCEPTION_CASES[case]
    path = tmp_path / "inception.pt"
    with pytest.raises(ValueError) as info:
        make(path, monkeypatch)
    assert words in str(info.value), str(info.value)
    if case != "pin_not_hex":
        assert str(path) in str(info.value) or "recorded hash" in str(info.value)
    if case == "not_torchscript":  # a file that did not load is not recorded as the good one
        assert not (cache / metrics.INCEPTION_RECORD).exists()


def test_inception_with_the_right_pin_loads_and_records_nothing(tmp_path, cache) -> None:
    path = _fake_inception(tmp_path / "inception.pt")
    metrics.InceptionV3(path, sha256=_sha(path).upper())
    assert not (cache / metrics.INCEPTION_RECORD).exists()


def _orders_call(name: str, *args):
    from fractalkit.graphs import (
        random_bfs_encodings,
        random_bfs_log_prob,
        random_bfs_order,
        uniform_order,
    )

    fns = {"log_prob": random_bfs_log_prob, "bfs": random_bfs_order, "uniform": uniform_order,
           "encodings": random_bfs_encodings}
    return fns[name](*args)


ORDER_CASES = {
    "log_prob_float_orders": (lambda: _orders_call("log_prob", _graph(), torch.tensor([[0.0, 1.0, 2.0]] * 2)),
                              TypeError, "orders"),
    "log_prob_not_a_graph": (lambda: _orders_call("log_prob", "graph", torch.zeros(2, 3, dtype=torch.long)),
                             TypeError, "graph"),
    "bfs_not_a_graph": (lambda: _orders_call("bfs", [1, 2]), TypeError, "graph"),
    "uniform_not_a_graph": (lambda: _orders_call("uniform", None), TypeError, "graph"),
    "encodings_not_an_encoding": (lambda: _orders_call("encodings", "enc", _graph()), TypeError, "encoding"),
    "permute_wrong_shape": (lambda: _graph().permute(torch.zeros(2, 2, dtype=torch.long)), ValueError, "order"),
    "permute_out_of_range": (lambda: _graph().permute(torch.full((2, 3), 5)), ValueError, "order"),
    "permute_negative": (lambda: _graph().permute(torch.full((2, 3), -1)), ValueError, "order"),
}


@pytest.mark.parametrize("case", sorted(ORDER_CASES))
def test_graph_orders_refuse_bad_arguments(case: str) -> None:
    call, exc, words = ORDER_CASES[case]
    with pytest.raises(exc) as info:
        call()
    assert words in str(info.value), str(info.value)
