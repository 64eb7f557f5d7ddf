"""Sampling for FID and bits/dim over a dataset across processes (gloo on CPUs, as under torchrun):
the merged result equals one process's, bit for bit, and a killed rank resumes from its batches.

Every process group here is two CPU processes started with ``torch.multiprocessing.spawn`` on a
free local port; one spawn serves every case of a family (the module-scoped fixtures), so the
default run pays for one start. The one-process references are computed in this process with
one thread, as the workers run.
"""

from __future__ import annotations

import importlib.util
import json
import os
import signal
import socket
from pathlib import Path

import numpy as np
import pytest
import torch

from fractalkit.imagenet import metrics

ROOT = Path(__file__).resolve().parents[1]
EVALUATE = ROOT / "examples" / "imagenet_pixels" / "evaluate.py"

#: (num_samples, batch): 4 batches with a short last one; 2 batches, one per rank; 1 batch, rank
#: 1 idle; 5 batches, rank 0 one more than rank 1.
SAMPLE_CASES = [(7, 2), (6, 3), (3, 4), (9, 2)]
#: (model, images, batch, draws, orders): an MAR estimate over random orders, the exact AR
#: figure, an MAR model scored exactly under identity orders, rank 1 idle.
SCORE_CASES = [("mar", 7, 2, 2, "random"), ("ar", 5, 3, 1, "random"), ("mar", 6, 4, 1, "identity"),
               ("mar", 3, 4, 3, "random")]
SEED = 5
#: The installed torch warns that TorchScript is deprecated; InceptionV3 (and the stand-in) read such files.
JIT_DEPRECATED = "ignore:`torch.jit.*deprecated:DeprecationWarning"


def tiny_model(kind: str = "ar") -> torch.nn.Module:
    """A 4x4 RGB model with 3 classes, the same weights in every process."""
    from fractalkit import ARLevelConfig, Fractal, ImagePatches, MARLevelConfig, RGBLeafConfig

    torch.manual_seed(0)
    top = MARLevelConfig(width=16, depth=1, heads=2) if kind == "mar" else ARLevelConfig(width=16, depth=1, heads=2)
    return Fractal([(ImagePatches(4, 2), top), (ImagePatches(2, 1), ARLevelConfig(width=16, depth=1, heads=2))],
                   leaf=RGBLeafConfig(width=8, depth=1, heads=2), num_classes=3).eval()


def tiny_dataset(n: int) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """``n`` items ``(x [3, 4, 4] in 0..255, y in 0..2)``."""
    g = torch.Generator().manual_seed(11)
    x = torch.randint(0, 256, (n, 3, 4, 4), generator=g)
    y = torch.randint(0, 3, (n,), generator=g)
    return [(x[i], y[i]) for i in range(n)]


def evaluate_script():
    """The ImageNet example's evaluate.py as a module."""
    import sys

    sys.path.insert(0, str(EVALUATE.parent))
    spec = importlib.util.spec_from_file_location("imagenet_pixels_evaluate_dist", EVALUATE)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def score_case(evaluate, case) -> dict:
    kind, n, batch, draws, orders = case
    scored = evaluate.score_dataset(tiny_model(kind), tiny_dataset(n), n, batch_size=batch, draws=draws,
                                    orders=orders, seed=SEED, use_labels=True)
    mean, stderr = evaluate.summarise(scored.values, scored.stderrs)
    return {"values": scored.values, "stderrs": scored.stderrs, "mean": mean, "stderr": stderr,
            "kind": scored.kind}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _worker(rank: int, world: int, port: int, folder: str, job: str) -> None:
    import torch.distributed as dist

    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank), WORLD_SIZE=str(world))
    torch.set_num_threads(1)
    dist.init_process_group("gloo", rank=rank, world_size=world)
    out = Path(folder)
    try:
        if job == "cases":
            model = tiny_model()
            for n, batch in SAMPLE_CASES:
                got = metrics.sample_images(model, n, batch=batch, seed=SEED, folder=out / f"s{n}_{batch}",
                                            out=out / f"merged{n}_{batch}.npz", progress=False)
                assert (got is None) == (rank != 0)
                if rank == 0:
                    torch.save(got, out / f"returned{n}_{batch}.pt")
            evaluate = evaluate_script()
            for i, case in enumerate(SCORE_CASES):
                torch.save(score_case(evaluate, case), out / f"scored{i}_rank{rank}.pt")
        else:  # "die" (rank 1 is killed as it starts its second batch) or "resume"
            model = tiny_model()
            calls = []
            inner = model.sample

            def sample(*a, **k):
                calls.append(a[0])
                if job == "die" and rank == 1 and len(calls) == 2:
                    os.kill(os.getpid(), signal.SIGKILL)
                return inner(*a, **k)

            model.sample = sample
            metrics.sample_images(model, 9, batch=2, seed=SEED, folder=out / "s", out=out / "merged.npz",
                                  progress=False)
            (out / f"calls_rank{rank}.txt").write_text(str(len(calls)))
    finally:
        dist.destroy_process_group()


def spawn(folder: Path, job: str) -> None:
    import torch.multiprocessing as mp

    mp.spawn(_worker, args=(2, free_port(), str(folder), job), nprocs=2, join=True)


@pytest.fixture
def one_thread():
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def two_processes(tmp_path_factory) -> Path:
    """One two-process gloo job over every case of both families; its outputs' folder."""
    folder = tmp_path_factory.mktemp("two_processes")
    spawn(folder, "cases")
    return folder


# ---- sampling --------------------------------------------------------------------------------------


@pytest.mark.parametrize("n,batch", SAMPLE_CASES)
def test_two_processes_sample_the_images_one_process_samples(two_processes, n, batch, one_thread):
    model = tiny_model()
    alone = metrics.sample_images(model, n, batch=batch, seed=SEED, progress=False)
    merged = torch.load(two_processes / f"returned{n}_{batch}.pt")
    assert merged.dtype == torch.uint8 and torch.equal(merged, alone)
    adm = np.load(two_processes / f"merged{n}_{batch}.npz")
    assert sorted(adm.files) == ["arr_0", "arr_1"] and adm["arr_0"].dtype == np.uint8
    np.testing.assert_array_equal(adm["arr_0"], alone.permute(0, 2, 3, 1).numpy())  # [N, H, W, 3]
    np.testing.assert_array_equal(adm["arr_1"], np.arange(n) % 3)
    # each rank kept its own batches, named by their global start, no temporary file left over
    kept = sorted(p.name for p in (two_processes / f"s{n}_{batch}").iterdir())
    assert kept == [f"samples_{s:06d}_{min(batch, n - s)}.npz" for s in range(0, n, batch)]


@pytest.mark.parametrize("n,batch", SAMPLE_CASES)
def test_one_process_draws_batch_b_from_seed_plus_b(n, batch, one_thread, tmp_path):
    """The one-process rule is today's: batch b from ``seed + b``, labels ``i % K``; and the merged
    file holds what the call returns."""
    model = tiny_model()
    got = metrics.sample_images(model, n, batch=batch, seed=SEED, progress=False, out=tmp_path / "all.npz")
    by_hand = [model.sample(min(batch, n - s), y=torch.arange(s, min(n, s + batch)) % 3,
                            options=model.pretrained_options,
                            generator=torch.Generator().manual_seed(SEED + b)).clamp(0, 255).to(torch.uint8)
               for b, s in enumerate(range(0, n, batch))]
    assert torch.equal(got, torch.cat(by_hand))
    np.testing.assert_array_equal(np.load(tmp_path / "all.npz")["arr_0"], got.permute(0, 2, 3, 1).numpy())


# ---- bits/dim ----------------------------------------------------------------------------------------


@pytest.mark.parametrize("i", range(len(SCORE_CASES)), ids=["-".join(map(str, c)) for c in SCORE_CASES])
def test_two_processes_score_what_one_process_scores(two_processes, i, one_thread):
    alone = score_case(evaluate_script(), SCORE_CASES[i])
    for rank in (0, 1):
        got = torch.load(two_processes / f"scored{i}_rank{rank}.pt")
        assert got["values"].dtype == torch.float64
        assert torch.equal(got["values"], alone["values"]) and torch.equal(got["stderrs"], alone["stderrs"])
        assert got["mean"] == alone["mean"] and got["stderr"] == alone["stderr"]  # float64, exactly
    assert torch.load(two_processes / f"scored{i}_rank0.pt")["kind"] == alone["kind"]
    expected = "estimate" if SCORE_CASES[i][0] == "mar" and SCORE_CASES[i][4] == "random" else "exact"
    assert alone["kind"] == expected and (alone["stderr"] > 0) == (len(alone["values"]) > 1)


# ---- resuming --------------------------------------------------------------------------------------


@pytest.mark.parametrize("restart", [pytest.param("two processes", marks=pytest.mark.slow), "one process"])
def test_a_killed_rank_resumes_from_its_own_batches(tmp_path, restart, one_thread):
    """Rank 1 is killed (SIGKILL) as it starts its second batch; the job restarts (with two
    processes, or one) and draws only the missing batches; the merged file is one process's."""
    import torch.multiprocessing as mp

    with pytest.raises(mp.ProcessExitedException, match="SIGKILL"):
        spawn(tmp_path, "die")
    folder = tmp_path / "s"
    # finished batches only (a process killed while writing leaves at most a hidden temporary file)
    kept = {p.name for p in folder.glob("samples_*.npz")}
    assert "samples_000002_2.npz" in kept  # rank 1's first batch survived its death
    assert "samples_000006_2.npz" not in kept  # its second one was never written
    assert not (tmp_path / "merged.npz").exists()
    if restart == "two processes":
        spawn(tmp_path, "resume")
        calls = sum(int((tmp_path / f"calls_rank{r}.txt").read_text()) for r in (0, 1))
    else:
        model = tiny_model()
        counted = []
        inner = model.sample
        model.sample = lambda *a, **k: counted.append(a) or inner(*a, **k)
        metrics.sample_images(model, 9, batch=2, seed=SEED, folder=folder, out=tmp_path / "merged.npz",
                              progress=False)
        calls = len(counted)
    assert calls == 5 - len(kept)  # 5 batches in all: only the missing ones were drawn
    alone = metrics.sample_images(tiny_model(), 9, batch=2, seed=SEED, progress=False)
    np.testing.assert_array_equal(np.load(tmp_path / "merged.npz")["arr_0"], alone.permute(0, 2, 3, 1).numpy())


# ---- the command lines under torchrun ------------------------------------------------------------


def torchrun(script: Path, *args: str) -> str:
    """Run ``script`` under ``torchrun --standalone --nproc_per_node=2`` (gloo on the CPU)."""
    import subprocess
    import sys

    env = dict(os.environ, OMP_NUM_THREADS="1", HF_DATASETS_OFFLINE="1", PYTHONPATH=str(ROOT))
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", str(script), *args]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return proc.stdout


class _Features(torch.nn.Module):
    """A TorchScript stand-in for Inception-v3's calling convention (features or probabilities)."""

    def __init__(self):
        super().__init__()
        self.register_buffer("w", torch.linspace(-1, 1, 24).view(6, 4))

    def forward(self, x: torch.Tensor, return_features: bool = False, no_output_bias: bool = False) -> torch.Tensor:
        x = x.float() / 255
        f = torch.cat([x.mean((2, 3)), x.std((2, 3))], 1)
        return f if return_features else (f @ self.w).softmax(-1)


def stand_in_inception(folder: Path) -> tuple[Path, Path]:
    """A scripted feature network file and a reference ``.npz`` (mu/sigma) made with it."""
    net_path = folder / "net.pt"
    torch.jit.script(_Features()).save(str(net_path))
    net = metrics.InceptionV3(net_path)
    real = torch.randint(0, 256, (40, 3, 4, 4), generator=torch.Generator().manual_seed(1))
    metrics.save_reference(folder / "ref.npz", metrics.extract_features(net, real).features)
    return net_path, folder / "ref.npz"


@pytest.mark.slow
@pytest.mark.filterwarnings(JIT_DEPRECATED)
def test_table4_under_torchrun_scores_what_one_process_scores(tmp_path, one_thread):
    """benchmarks/table4.py with two processes: the same merged samples and scores as one."""
    spec = importlib.util.spec_from_file_location("table4_dist", ROOT / "benchmarks" / "table4.py")
    table4 = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(table4)
    model = tiny_model().save_pretrained(tmp_path / "model")
    net, ref = stand_in_inception(tmp_path)
    common = ["--model", str(model), "--reference", str(ref), "--inception", str(net), "--num-samples", "9",
              "--batch", "2", "--device", "cpu"]
    alone = table4.main([*common, "--samples-dir", str(tmp_path / "one"), "--out", str(tmp_path / "out1")])
    torchrun(ROOT / "benchmarks" / "table4.py", *common, "--samples-dir", str(tmp_path / "two"),
             "--out", str(tmp_path / "out2"))
    both = json.loads((tmp_path / "out2" / "table4_model_9.json").read_text())
    assert both["processes"] == 2 and alone["processes"] == 1
    for key in ("fid", "inception_score", "num_samples"):
        assert both[key] == alone[key]
    one, two = np.load(alone["samples_npz"]), np.load(both["samples_npz"])
    np.testing.assert_array_equal(one["arr_0"], two["arr_0"])
    np.testing.assert_array_equal(one["arr_1"], two["arr_1"])


@pytest.mark.slow
@pytest.mark.filterwarnings(JIT_DEPRECATED)
def test_evaluate_under_torchrun_reports_what_one_process_reports(tmp_path, one_thread):
    """examples/imagenet_pixels/evaluate.py with two processes: the same bits/dim and standard
    error (float64, exactly), the same FID over the same merged samples."""
    from PIL import Image

    for i in range(7):  # an image folder of two classes
        (tmp_path / "data" / f"c{i % 2}").mkdir(parents=True, exist_ok=True)
        pixels = np.random.default_rng(i).integers(0, 256, (4, 4, 3), dtype=np.uint8)
        Image.fromarray(pixels).save(tmp_path / "data" / f"c{i % 2}" / f"{i}.png")
    model = tiny_model("mar")
    model.save(tmp_path / "model.safetensors")
    net, ref = stand_in_inception(tmp_path)
    common = ["--checkpoint", str(tmp_path / "model.safetensors"), "--data", str(tmp_path / "data"),
              "--max-images", "7", "--batch-size", "2", "--draws", "2", "--heatmap-images", "1",
              "--fid", "--reference", str(ref), "--inception", str(net), "--num-samples", "5",
              "--device", "cpu", "--threads", "1", "--no-progress"]
    alone = evaluate_script().main([*common, "--samples-dir", str(tmp_path / "one"),
                                    "--json", str(tmp_path / "one.json")])
    torchrun(EVALUATE, *common, "--samples-dir", str(tmp_path / "two"), "--json", str(tmp_path / "two.json"))
    both = json.loads((tmp_path / "two.json").read_text())
    assert both["processes"] == 2 and alone["processes"] == 1 and alone["kind"] == "estimate"
    for key in ("bits_per_dim", "stderr", "images", "per_channel_bits", "fid", "inception_score"):
        assert both[key] == alone[key], key
    np.testing.assert_array_equal(np.load(alone["samples_npz"])["arr_0"], np.load(both["samples_npz"])["arr_0"])
