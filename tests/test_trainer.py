"""The shared training loop (fractalkit.training.Trainer): exact resumption, non-finite stop, EMA,
declared weight-decay groups, budgets in steps or seconds, and that every example trains
through it."""

from __future__ import annotations

import itertools
import math
import re
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from torch import nn

from fractalkit.imagenet.presets import PRESETS
from fractalkit.testing import tiny_fractal
from fractalkit.training import (
    NonFiniteLoss,
    Trainer,
    WarmupCosine,
    declare_no_weight_decay,
    load_checkpoint,
    no_weight_decay_parameters,
    parameter_groups,
)

ROOT = Path(__file__).resolve().parents[1]


def draw(g: torch.Generator) -> torch.Tensor:
    return torch.randint(0, 3, (4, 4), generator=g)


def make(seed: int = 0, **kwargs):
    torch.manual_seed(seed)
    model = tiny_fractal()
    opt = torch.optim.AdamW(parameter_groups(model, 0.05), lr=3e-3)
    kwargs.setdefault("schedule", WarmupCosine(opt, peak_lr=3e-3, warmup_steps=2, total_steps=6))
    return model, Trainer(model, opt, generator=torch.Generator().manual_seed(seed), **kwargs)


def weights(model: nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def test_resume_continues_exactly(tmp_path) -> None:
    """Stopping at step 3 and resuming gives the same losses and weights as 6 steps at once."""
    model_a, a = make(steps=6, ema_decay=0.9, out=tmp_path / "a", log_every=1)
    a.fit(draw)
    _model_b, b = make(steps=3, ema_decay=0.9, out=tmp_path / "b", log_every=1)
    assert b.fit(draw).steps == 3
    ck = load_checkpoint(tmp_path / "b")
    assert ck.step == 3 and ck.ema is not None and ck.scheduler["last_step"] == 3
    opt = torch.optim.AdamW(parameter_groups(ck.model, 0.05), lr=3e-3)
    c = Trainer(ck.model, opt, generator=torch.Generator(), steps=6, ema_decay=0.9, out=tmp_path / "b",
                log_every=1, schedule=WarmupCosine(opt, peak_lr=3e-3, warmup_steps=2, total_steps=6))
    c.restore(ck)
    result = c.fit(draw)
    assert result.steps == 6 and result.steps_this_run == 3 and result.stopped_by == "steps"

    def losses(run: Path) -> dict[int, float]:
        import json

        return {r["step"]: r["loss"] for r in map(json.loads, (run / "log.jsonl").read_text().splitlines())}

    assert losses(tmp_path / "a") == losses(tmp_path / "b")
    wa, wb = weights(model_a), weights(ck.model)
    assert all(torch.equal(wa[k], wb[k]) for k in wa)
    ema_a, ema_b = load_checkpoint(tmp_path / "a").ema, load_checkpoint(tmp_path / "b").ema
    assert all(torch.equal(ema_a[k], ema_b[k]) for k in ema_a)


def test_ema_tracks_the_weights() -> None:
    model, trainer = make(steps=3, ema_decay=0.5)
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    trainer.fit(draw)
    name, p = next((n, p) for n, p in model.named_parameters() if not torch.equal(p, before[n]))
    shadow = trainer.ema.shadow[name]
    assert not torch.equal(shadow, p.detach()) and not torch.equal(shadow, before[name])


class _Poisoned(nn.Module):
    def __init__(self, at: int) -> None:
        super().__init__()
        self.w = nn.Parameter(torch.ones(2))
        self.at, self.calls = at, 0

    def loss(self, x, generator=None):
        self.calls += 1
        total = (self.w * x).sum() * (math.nan if self.calls == self.at else 1.0)
        return SimpleNamespace(total=total, nll=total.detach())


def test_a_non_finite_loss_stops_before_its_update_and_skipping_is_opt_in() -> None:
    model = _Poisoned(at=3)
    trainer = Trainer(model, torch.optim.SGD(model.parameters(), lr=0.1), generator=torch.Generator(), steps=5)
    with pytest.raises(NonFiniteLoss, match=r"step 3: total loss = nan.*NaN/inf at step 3"):
        trainer.fit(lambda g: torch.ones(2))
    assert trainer.step == 2 and bool(torch.isfinite(model.w).all())

    model = _Poisoned(at=3)
    trainer = Trainer(model, torch.optim.SGD(model.parameters(), lr=0.1), generator=torch.Generator(), steps=5,
                      skip_nonfinite=1)
    result = trainer.fit(lambda g: torch.ones(2))
    assert result.steps == 5 and result.skipped_nonfinite == 1 and bool(torch.isfinite(model.w).all())


def test_deferred_non_finite_checks_still_stop_the_run() -> None:
    model = _Poisoned(at=2)
    trainer = Trainer(model, torch.optim.SGD(model.parameters(), lr=0.1), generator=torch.Generator(), steps=9,
                      check_every=4)
    with pytest.raises(NonFiniteLoss, match=r"a step in 1\.\.4: the run stopped \(checked every 4 steps"):
        trainer.fit(lambda g: torch.ones(2))


def test_budget_in_seconds_on_a_given_clock() -> None:
    """A clock that ticks once per call: the loop stops before the step that would start late."""
    _model, trainer = make(budget_s=5, clock=itertools.count().__next__, schedule=None)
    result = trainer.fit(draw)
    assert result.stopped_by == "budget" and result.steps == 4  # clock reads 1..4 before steps 1..4


def test_bad_settings_are_refused() -> None:
    model = tiny_fractal()
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    g = torch.Generator()
    with pytest.raises(ValueError, match="never stops"):
        Trainer(model, opt, generator=g)
    with pytest.raises(ValueError, match="save_every needs a run folder"):
        Trainer(model, opt, generator=g, steps=1, save_every=1)
    with pytest.raises(ValueError, match="exactly one of"):
        Trainer(model, opt, generator=g, steps=1).fit()
    with pytest.raises(ValueError, match="next_batch/batches"):
        Trainer(model, opt, generator=g, steps=1).fit(lambda g: [draw(g)])


def test_batches_from_a_step_and_the_end_of_the_data(tmp_path) -> None:
    starts = []

    def batches(start: int):
        starts.append(start)
        g = torch.Generator().manual_seed(start)
        return (draw(g) for _ in range(2))

    _model, trainer = make(steps=5, out=tmp_path)
    result = trainer.fit(batches=batches)
    assert starts == [0] and result.stopped_by == "data" and result.steps == 2
    assert load_checkpoint(tmp_path).step == 2  # saved when the data ran out


def test_groups_are_what_the_old_name_rule_gave_for_the_paper_models() -> None:
    """Declared groups reproduce the ImageNet example's former rule (ndim < 2 or a name holding
    pos_embed, mask_token or null_embedding) for every preset, so paper training is unchanged."""
    for name, preset in PRESETS.items():
        with torch.device("meta"):
            model = preset.build()
        old = [n for n, p in model.named_parameters()
               if p.ndim < 2 or "pos_embed" in n or "mask_token" in n or "null_embedding" in n]
        assert no_weight_decay_parameters(model) == old, name


def test_modules_declare_their_exempt_parameters() -> None:
    class Mine(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.table = nn.Parameter(torch.zeros(3, 4))
            self.scale = nn.Parameter(torch.zeros(3, 4))
            self.proj = nn.Linear(4, 4)
            self.norm = nn.LayerNorm(4)

        def no_weight_decay(self):
            return {"table"}

    class Theirs(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.positions = nn.Parameter(torch.zeros(5, 4))
            self.emb = nn.Embedding(3, 4)

    declare_no_weight_decay(Theirs, "positions")
    model = nn.ModuleDict({"a": Mine(), "b": Theirs()})
    assert no_weight_decay_parameters(model) == [
        "a.table", "a.proj.bias", "a.norm.weight", "a.norm.bias", "b.positions"]
    decay, exempt = parameter_groups(model, 0.1)
    assert exempt["weight_decay"] == 0.0 and decay["weight_decay"] == 0.1
    assert len(decay["params"]) == 3  # scale, proj.weight and the embedding table keep their decay
    with pytest.raises(TypeError, match=r"nn\.Module subclass"):
        declare_no_weight_decay(int, "x")


TRAINING_SCRIPTS = ["digits/train.py", "imagenet_pixels/train.py", "text/train.py", "audio/train.py",
                    "molecules/train.py", "molecules/conditional.py", "graphs/train.py"]


@pytest.mark.parametrize("script", TRAINING_SCRIPTS)
def test_every_example_trains_through_the_shared_loop(script: str) -> None:
    """No example keeps a loop of its own: no backward pass or optimizer step in its source, and
    it calls the Trainer or train_for_budget (itself a front to the Trainer)."""
    source = (ROOT / "examples" / script).read_text()
    assert re.search(r"\bTrainer\(|train_for_budget\(", source), script
    assert ".backward(" not in source and not re.search(r"\b(opt|optimizer)\.step\(", source), script


def test_train_for_budget_is_a_front_to_the_trainer(monkeypatch) -> None:
    """text, audio, molecules and graphs train with train_for_budget: it runs Trainer.fit."""
    from fractalkit.training import loop, train_for_budget

    calls = []
    real = loop.Trainer.fit
    monkeypatch.setattr(loop.Trainer, "fit", lambda self, *a, **k: calls.append(self) or real(self, *a, **k))
    torch.manual_seed(0)
    log = train_for_budget(tiny_fractal(), draw, budget_s=math.inf, max_steps=2, generator=torch.Generator())
    assert len(calls) == 1 and log["steps"] == 2 and math.isfinite(log["last_loss_nats"])


def _ddp_worker(rank: int, world: int, port: int, folder: str) -> None:
    import os

    import torch.distributed as dist

    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank), WORLD_SIZE=str(world))
    torch.set_num_threads(1)
    dist.init_process_group("gloo", rank=rank, world_size=world)
    try:
        torch.manual_seed(0)  # the same initial weights on every rank
        model = tiny_fractal(num_classes=3)
        opt = torch.optim.AdamW(parameter_groups(model, 0.05), lr=3e-3)
        trainer = Trainer(model, opt, generator=torch.Generator().manual_seed(rank), steps=3,
                          out=folder, log_every=1)

        def batch(g):  # labels but no label dropout at this batch size: the null row may go unused
            return draw(g), torch.randint(0, 3, (4,), generator=g)

        result = trainer.fit(batch)
        assert result.steps == 3 and len(set(result.parameter_digests)) == 1
    finally:
        dist.destroy_process_group()


@pytest.mark.slow
def test_two_gloo_processes_keep_identical_weights(tmp_path) -> None:
    """DDP through the loop (gloo on CPUs): gradients averaged, one checkpoint with both ranks'
    random streams; unused parameters found by the probe step, whatever the model's classes."""
    import socket

    import torch.multiprocessing as mp

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    mp.spawn(_ddp_worker, args=(2, port, str(tmp_path)), nprocs=2, join=True)
    ck = load_checkpoint(tmp_path)
    assert ck.step == 3 and len(ck.rng["model"]) == 2 and ck.extra["world_size"] == 2
