"""Issue 14, classes 3, 4 and 5 in the ImageNet training script: a non-finite loss stops the run
(or, opted in, skips the batch) and leaves the last good checkpoint untouched; Ctrl-C/SIGTERM
save before exiting; ``--resume`` of the wrong run says why.

Before the change a NaN loss was logged and trained on, the run exited 0 and checkpointed
non-finite weights; a signal lost every step since the last periodic save; resuming another
preset failed deep inside load_state_dict or the data pipeline.
"""

from __future__ import annotations

import importlib.util
import math
import os
import signal
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch

from fractalkit import Fractal
from fractalkit.cli import UserError
from fractalkit.training import load_checkpoint, save_checkpoint, train_for_budget
from fractalkit.training import loop as loop_module
from fractalkit.training.nonfinite import NonFiniteLoss
from fractalkit.training.signals import StopRequests

ROOT = Path(__file__).resolve().parents[2]
ARGS = ["--batch-size", "2", "--natural-count", "8", "--log-every", "1", "--no-progress", "--threads", "1"]


def train_module():
    spec = importlib.util.spec_from_file_location("safety_train", ROOT / "examples/imagenet_pixels/train.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def poison(module, monkeypatch, at_step: int, term: str, value: float, times: int = 1) -> None:
    """Make the loss's ``term`` non-finite on calls at_step .. at_step + times - 1."""
    real = module.fractal_loss
    calls = {"n": 0}

    def loss(model, batch, generator):
        calls["n"] += 1
        total, nll = real(model, batch, generator)
        if at_step <= calls["n"] < at_step + times:
            if term == "total":
                total = total * value
            elif term == "nll":
                nll = nll * value
            elif term == "gradient":  # finite loss, non-finite gradient
                total = total + (model.conditioner.null_embedding * 0 * value).sum()
        return total, nll

    monkeypatch.setattr(module, "fractal_loss", loss)


def files(folder: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(folder.iterdir())}


@pytest.mark.parametrize(
    "term, value, named",
    [("total", math.nan, "total loss = nan"), ("total", math.inf, "total loss = inf"),
     ("nll", math.nan, "nll = nan"), ("gradient", math.nan, "gradient norm = nan"),
     ("gradient", math.inf, "gradient norm")],
)
def test_a_non_finite_term_stops_the_run_and_keeps_the_last_checkpoint(
    tmp_path, monkeypatch, term: str, value: float, named: str
) -> None:
    train = train_module()
    run = tmp_path / "run"
    poison(train, monkeypatch, at_step=3, term=term, value=value)
    with pytest.raises(NonFiniteLoss, match=rf"step 3: .*{named}.*step 2\) is untouched") as info:
        train.main([*ARGS, "--steps", "6", "--save-every", "2", "--out", str(run)])
    assert str(run / "checkpoint") in str(info.value)
    ck = load_checkpoint(run)
    assert ck.step == 2
    assert all(bool(torch.isfinite(p).all()) for p in ck.model.parameters())


def test_a_diverging_learning_rate_exits_1_with_one_line(tmp_path, capsys) -> None:
    from fractalkit.cli import run

    train = train_module()
    with pytest.raises(SystemExit) as info:
        run(train.main, [*ARGS, "--steps", "4", "--lr", "1e9", "--out", str(tmp_path / "run")])
    assert info.value.code == 1
    err = capsys.readouterr().err
    assert "stopped: step" in err and "non" not in err.split("stopped:")[0]
    if (tmp_path / "run" / "checkpoint").exists():  # what was written before is finite
        ck = load_checkpoint(tmp_path / "run")
        assert all(bool(torch.isfinite(p).all()) for p in ck.model.parameters())
        assert f"step {ck.step}) is untouched" in err


@pytest.mark.parametrize("term", ["total", "gradient"])
def test_skip_nonfinite_batches_skips_and_counts_them(tmp_path, monkeypatch, term: str) -> None:
    train = train_module()
    poison(train, monkeypatch, at_step=2, term=term, value=math.nan, times=2)
    summary = train.main([*ARGS, "--steps", "5", "--out", str(tmp_path / "run"), "--skip-nonfinite-batches"])
    assert summary["step"] == 5 and summary["skipped_nonfinite"] == 2
    ck = load_checkpoint(tmp_path / "run")
    assert ck.step == 5 and all(bool(torch.isfinite(p).all()) for p in ck.model.parameters())


def test_skip_nonfinite_batches_still_stops_a_diverged_run(tmp_path, monkeypatch) -> None:
    train = train_module()
    poison(train, monkeypatch, at_step=1, term="total", value=math.nan, times=100)
    with pytest.raises(NonFiniteLoss, match=r"step 11: total loss = nan.*no checkpoint was written"):
        train.main([*ARGS, "--steps", "40", "--save-every", "40", "--out", str(tmp_path / "run"),
                    "--skip-nonfinite-batches"])


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
def test_a_signal_saves_a_checkpoint_before_exiting(tmp_path, monkeypatch, sig) -> None:
    train = train_module()
    real = train.fractal_loss
    calls = {"n": 0}

    def loss(model, batch, generator):
        calls["n"] += 1
        if calls["n"] == 3:
            os.kill(os.getpid(), sig)  # arrives in the middle of step 3
        return real(model, batch, generator)

    monkeypatch.setattr(train, "fractal_loss", loss)
    summary = train.main([*ARGS, "--steps", "50", "--save-every", "40", "--out", str(tmp_path / "run")])
    assert summary["interrupted"] == sig.name and summary["step"] == 3
    assert load_checkpoint(tmp_path / "run").step == 3
    assert signal.getsignal(sig) is not None and signal.getsignal(signal.SIGTERM) != StopRequests._handle


def _plain_run(tmp_path: Path) -> Path:
    train_module().main([*ARGS, "--steps", "2", "--stop-after", "1", "--out", str(tmp_path / "a")])
    return tmp_path / "a"


@pytest.mark.parametrize(
    "case, message",
    [
        ("other-preset", "was trained with --preset tiny-in32, not small-in64; drop --preset"),
        ("no-trainer-state", "holds no trainer state"),
        ("other-architecture", "architecture differs from preset tiny-in32"),
        ("other-classes", "has 1000 classes, not --num-classes 3"),
    ],
)
def test_resume_of_the_wrong_run_says_why(tmp_path, case: str, message: str) -> None:
    run = _plain_run(tmp_path)
    argv = [*ARGS, "--steps", "2", "--resume", str(run), "--out", str(tmp_path / "b")]
    ck = load_checkpoint(run)
    if case == "other-preset":
        argv += ["--preset", "small-in64"]
    elif case == "no-trainer-state":
        save_checkpoint(run / "checkpoint", ck.model, step=1, extra=ck.extra)
    elif case == "other-architecture":
        config = ck.model.config.to_dict()
        config["levels"][0]["level"]["depth"] += 1
        state = {"optimizer": SimpleNamespace(state_dict=lambda: ck.optimizer),
                 "scheduler": SimpleNamespace(state_dict=lambda: ck.scheduler)}
        save_checkpoint(run / "checkpoint", Fractal.from_config(config), step=1, extra=ck.extra,
                        rng=ck.rng, **state)
    elif case == "other-classes":
        argv += ["--num-classes", "3"]
    with pytest.raises(UserError, match=message):
        train_module().main(argv)


def test_resume_without_preset_continues_the_checkpoints_preset(tmp_path) -> None:
    run = _plain_run(tmp_path)
    summary = train_module().main([*ARGS, "--steps", "2", "--resume", str(run), "--out", str(run)])
    assert summary["step"] == 2


class _Diverging(torch.nn.Module):
    """A model whose loss turns NaN (or inf) from the third call on."""

    def __init__(self, value: float) -> None:
        super().__init__()
        self.w = torch.nn.Parameter(torch.ones(1))
        self.value, self.calls = value, 0

    def loss(self, x, generator=None):
        self.calls += 1
        total = (self.w * x).sum() * (self.value if self.calls >= 3 else 1.0)
        return SimpleNamespace(total=total, nll=total.detach())


@pytest.mark.parametrize("value", [math.nan, math.inf])
def test_train_for_budget_stops_on_a_non_finite_loss(value: float) -> None:
    model = _Diverging(value)
    with pytest.raises(NonFiniteLoss, match="NaN/inf at step 3"):
        train_for_budget(model, lambda g: torch.ones(2), budget_s=math.inf, max_steps=10, lr=1e-3,
                         generator=torch.Generator())
    assert bool(torch.isfinite(model.w).all())


@pytest.mark.parametrize("steps, saved", [(8, [2, 4, 6, 8]), (3, [1, 2, 3]), (10, [3, 6, 9, 10])])
def test_the_default_save_interval_is_never_longer_than_a_quarter_of_the_run(
    tmp_path, monkeypatch, steps: int, saved: list[int]
) -> None:
    train = train_module()
    seen = []
    real = loop_module.save_checkpoint  # the shared training loop writes the checkpoints
    monkeypatch.setattr(loop_module, "save_checkpoint", lambda *a, **k: seen.append(k["step"]) or real(*a, **k))
    train.main([*ARGS, "--steps", str(steps), "--out", str(tmp_path / "run")])
    assert seen == saved
