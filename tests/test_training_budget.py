"""fractalkit.training.budget: the wall-clock-budgeted training loop the examples share."""

from __future__ import annotations

import argparse
import math
import time
from pathlib import Path

import pytest
import torch

from fractalkit import ARLevelConfig, CategoricalLeafConfig, Fractal, SequenceChunks
from fractalkit.training import (
    Stopwatch,
    add_budget_arguments,
    budget_lr,
    device_description,
    train_for_budget,
)


def tiny_fractal(num_classes: int = 0) -> Fractal:
    """8 values of 4 categories: 8 -> 4 chunks of 2 (AR) -> single values (AR) -> categorical."""
    torch.manual_seed(0)
    return Fractal(
        [(SequenceChunks(8, 2), ARLevelConfig(width=16, depth=1, heads=2, embed="table")),
         (SequenceChunks(2, 1), ARLevelConfig(width=16, depth=1, heads=2, embed="table"))],
        leaf=CategoricalLeafConfig(num_values=4),
        num_classes=num_classes,
    )


#: a learnable set: each sequence repeats one value (4 sequences in all)
DATA = torch.arange(4).repeat_interleave(8).view(4, 8)


def draw(g: torch.Generator, batch: int = 16) -> torch.Tensor:
    return DATA[torch.randint(0, DATA.shape[0], (batch,), generator=g)]


def nats(model: Fractal) -> float:
    model.eval()
    with torch.no_grad():
        return float(-model.log_prob(DATA).value.mean()) / 8


def test_loss_falls_within_max_steps() -> None:
    model = tiny_fractal()
    before = nats(model)
    params = [p.detach().clone() for p in model.parameters()]
    log = train_for_budget(model, draw, budget_s=math.inf, lr=1e-2, max_steps=30, warmup_steps=5,
                           generator=torch.Generator().manual_seed(0))
    assert log["steps"] == 30 and model.training
    assert log["seconds"] > 0 and math.isclose(log["s_per_step"], log["seconds"] / 30)
    assert math.isfinite(log["last_loss_nats"])
    assert any(not torch.equal(a, b) for a, b in zip(params, model.parameters(), strict=True))
    after = nats(model)
    assert after < before - 0.3, (before, after)  # a clear drop (about 2.1 -> 0.2 nats per value)


def test_same_seed_same_run_and_labels_in_a_tuple() -> None:
    labels = torch.tensor([0, 1, 0, 1])

    def draw_labelled(g: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
        idx = torch.randint(0, 4, (8,), generator=g)
        return DATA[idx], labels[idx]

    runs = []
    for _ in range(2):
        model = tiny_fractal(num_classes=2)
        log = train_for_budget(model, draw_labelled, budget_s=60, max_steps=3,
                               generator=torch.Generator().manual_seed(1))
        runs.append((log["last_loss_nats"], [p.detach().clone() for p in model.parameters()]))
    # The learning rate decays with elapsed wall-clock time, so two runs differ by rounding
    # only (the lr differs by ~1e-9 relative): equal to float precision, not bit for bit.
    assert math.isclose(runs[0][0], runs[1][0], rel_tol=1e-6)
    for a, b in zip(runs[0][1], runs[1][1], strict=True):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-7)


def test_budget_stops_the_loop_and_zero_steps_give_nan() -> None:
    def slow(g: torch.Generator) -> torch.Tensor:
        time.sleep(0.06)
        return draw(g, 2)

    log = train_for_budget(tiny_fractal(), slow, budget_s=0.05, generator=torch.Generator())
    assert log["steps"] == 1 and log["seconds"] >= 0.06
    log = train_for_budget(tiny_fractal(), draw, budget_s=1.0, max_steps=0, generator=torch.Generator())
    assert log["steps"] == 0 and math.isnan(log["last_loss_nats"])


def test_budget_lr_warms_up_in_steps_and_decays_in_time() -> None:
    assert budget_lr(0, 0.0, peak_lr=1.0, budget_s=10) == pytest.approx(1 / 20)
    assert budget_lr(19, 0.0, peak_lr=1.0, budget_s=10) == pytest.approx(1.0)
    assert budget_lr(100, 5.0, peak_lr=2.0, budget_s=10) == pytest.approx(1.0)  # half-way: half
    assert budget_lr(100, 12.0, peak_lr=1.0, budget_s=10) == pytest.approx(0.0, abs=1e-12)
    assert budget_lr(0, 0.0, peak_lr=1.0, budget_s=10, warmup_steps=0) == 1.0
    assert budget_lr(0, 1e9, peak_lr=1.0, budget_s=math.inf, warmup_steps=0) == 1.0


@pytest.mark.parametrize(
    "kwargs,match",
    [
        ({"budget_s": 0}, "budget_s"),
        ({"budget_s": math.nan}, "budget_s"),
        ({"lr": 0.0}, "lr"),
        ({"max_steps": -1}, "max_steps"),
        ({"warmup_steps": -1}, "warmup_steps"),
        ({"grad_clip": 0.0}, "grad_clip"),
        ({"weight_decay": -0.1}, "weight_decay"),
    ],
)
def test_bad_arguments_raise(kwargs, match) -> None:
    args = {"budget_s": 1.0, "max_steps": 1, "generator": torch.Generator(), **kwargs}
    with pytest.raises(ValueError, match=match):
        train_for_budget(tiny_fractal(), draw, **args)


def test_bad_model_or_batch_raise() -> None:
    g = torch.Generator()
    with pytest.raises(ValueError, match="no parameters"):
        train_for_budget(torch.nn.Identity(), draw, budget_s=1.0, generator=g)
    with pytest.raises(ValueError, match="next_batch"):
        train_for_budget(tiny_fractal(), lambda g: [draw(g)], budget_s=1.0, max_steps=1, generator=g)


def test_cli_options_stopwatch_and_device_label() -> None:
    ap = add_budget_arguments(argparse.ArgumentParser(), batch=8, out=Path("results"))
    args = ap.parse_args([])
    assert (args.budget_s, args.batch, args.models, args.threads, args.out, args.device) == (
        240.0, 8, "fractal,flat", 2, Path("results"), "cpu"
    )
    assert ap.parse_args(["--budget-s", "70", "--batch", "64"]).budget_s == 70.0
    assert device_description("cpu", 3) == "cpu x 3 threads"
    with Stopwatch("cpu") as clock:
        time.sleep(0.01)
    assert clock.seconds >= 0.01


def test_budget_is_measured_on_the_given_clock() -> None:
    # a clock that ticks one "second" per reading: the start (0), one reading per loop test
    # (1, 2, 3 step; 4 stops) and the end (5): exactly 3 steps whatever the machine's speed
    ticks = iter(range(1000))
    log = train_for_budget(tiny_fractal(), draw, budget_s=3.5, generator=torch.Generator().manual_seed(0),
                           clock=lambda: float(next(ticks)))
    assert log["steps"] == 3 and log["seconds"] == 5.0
    # CPU time of this process is a valid clock too
    log = train_for_budget(tiny_fractal(), draw, budget_s=math.inf, max_steps=2,
                           generator=torch.Generator().manual_seed(0), clock=time.process_time)
    assert log["steps"] == 2 and log["seconds"] > 0


def test_summarise_runs_gives_mean_and_sample_std() -> None:
    import numpy as np

    from fractalkit.training import summarise_runs

    runs = [2.80, 2.77, 2.79, 2.71]
    mean, std = np.mean(runs), np.std(runs, ddof=1)
    assert summarise_runs(runs) == f"{mean:.3f} ± {std:.3f} (4)"
    assert summarise_runs([1.5]) == "1.500 ± nan (1)"
