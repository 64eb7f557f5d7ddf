"""The quick start (examples/digits): its default path trains, scores and writes its pictures
and a loadable model folder, at a tiny budget."""

from __future__ import annotations

import importlib.util
import json
import math
from pathlib import Path

import pytest
import torch

from fractalkit import Fractal

ROOT = Path(__file__).resolve().parents[2]


def load_example():
    spec = importlib.util.spec_from_file_location("digits_example", ROOT / "examples" / "digits" / "train.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_data_ships_with_scikit_learn():
    pytest.importorskip("sklearn", reason="scikit-learn (the examples extra) is not installed")
    x, y = load_example().load_data()
    assert x.shape == (1797, 1, 8, 8) and x.dtype == torch.int64
    assert int(x.min()) == 0 and int(x.max()) == 16 and sorted(y.unique().tolist()) == list(range(10))


def test_quick_start_runs_at_a_tiny_budget(tmp_path):
    pytest.importorskip("sklearn", reason="scikit-learn (the examples extra) is not installed")
    example = load_example()
    out = tmp_path / "results"
    example.main(["--steps", "3", "--per-class", "2", "--out", str(out), "--model-out", str(tmp_path / "model"),
                  "--run-dir", str(tmp_path / "run"), "--no-progress"])
    from fractalkit.training import load_checkpoint

    assert load_checkpoint(tmp_path / "run").step == 3  # the shared loop saved the run
    results = json.loads((out / "results.json").read_text())
    assert results["train_steps"] == 3
    assert 0 < results["held_out_bits_per_dim"] < 2 * math.log2(17)
    for name in ("samples.png", "completion.png"):
        from PIL import Image

        with Image.open(out / name) as img:
            assert img.size[0] > 100 and img.size[1] > 40
    model = Fractal.from_pretrained(tmp_path / "model")  # a save_pretrained folder
    assert model.pretrained_options == example.SAMPLING
    assert model.event_shape == (1, 8, 8) and model.num_values == 17


@pytest.mark.slow
def test_default_run_learns_the_digits(tmp_path):
    """The documented default (1,500 steps, seed 0) reaches the README's held-out bits/dim
    (1.790 measured twice; far below the 4.09 of a uniform guess)."""
    pytest.importorskip("sklearn", reason="scikit-learn (the examples extra) is not installed")
    results = load_example().main(["--out", str(tmp_path), "--model-out", str(tmp_path / "model"),
                                   "--run-dir", str(tmp_path / "run")])
    assert results["train_steps"] == 1500
    assert results["held_out_bits_per_dim"] < 1.85


def test_ctrl_c_saves_and_resume_gives_the_uninterrupted_result(tmp_path):
    """SIGINT during training: the step in progress finishes, a checkpoint is written and the
    script exits 130; ``--resume`` continues from the saved step to the same losses, held-out
    bits/dim and weights as a run that was never interrupted."""
    pytest.importorskip("sklearn", reason="scikit-learn (the examples extra) is not installed")
    import signal
    import subprocess
    import sys
    import time

    steps = "30"

    def argv(name: str) -> list[str]:
        return ["--steps", steps, "--per-class", "1", "--save-every", "1000", "--log-every", "1",
                "--no-progress", "--threads", "1", "--out", str(tmp_path / name),
                "--model-out", str(tmp_path / f"{name}_model"), "--run-dir", str(tmp_path / f"{name}_run")]

    log = tmp_path / "b_run" / "log.jsonl"
    proc = subprocess.Popen([sys.executable, str(ROOT / "examples" / "digits" / "train.py"), *argv("b")],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 300
    while (not log.exists() or len(log.read_text().splitlines()) < 3) and proc.poll() is None:
        assert time.time() < deadline, "the training never started"
        time.sleep(0.05)
    proc.send_signal(signal.SIGINT)
    stdout, stderr = proc.communicate(timeout=300)
    assert proc.returncode == 130, stderr[-2000:]
    assert "SIGINT: saved" in stdout and "--resume" in stdout
    from fractalkit.training import load_checkpoint

    saved = load_checkpoint(tmp_path / "b_run").step
    assert 3 <= saved < int(steps)
    assert not (tmp_path / "b" / "results.json").exists()  # nothing evaluated after the signal

    example = load_example()
    resumed = example.main([*argv("b"), "--resume"])
    plain = example.main(argv("a"))
    assert resumed["train_steps"] == plain["train_steps"] == int(steps)
    for key in ("held_out_bits_per_dim", "held_out_bits_per_dim_untrained", "train_last_loss_bits_per_dim"):
        assert resumed[key] == plain[key], key

    def losses(name: str) -> dict[int, float]:
        lines = (tmp_path / f"{name}_run" / "log.jsonl").read_text().splitlines()
        return {r["step"]: r["loss"] for r in map(json.loads, lines)}

    assert losses("b") == losses("a")  # the interrupted run's log continues where it stopped
    wa = Fractal.from_pretrained(tmp_path / "a_model").state_dict()
    wb = Fractal.from_pretrained(tmp_path / "b_model").state_dict()
    assert all(torch.equal(wa[k], wb[k]) for k in wa)
