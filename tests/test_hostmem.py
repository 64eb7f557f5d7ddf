"""Keeping freed CPU tensor memory (fractalkit.hostmem): a loop that frees and re-allocates large
tensors stops page-faulting them back in; the opt-out and non-glibc cases change nothing; the
training loop turns it on exactly for CPU models that did not opt out.

The setting is process-wide and cannot be undone, so the page-fault checks run in a child
process each."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from fractalkit import hostmem
from fractalkit.testing import tiny_fractal
from fractalkit.training import Trainer

ROOT = Path(__file__).resolve().parents[1]

# Frees and re-allocates 40-120 MB tensors (above glibc's largest mmap threshold, 32 MiB) and
# prints whether the setting took effect and the minor page faults of every round after the first.
CHILD = r"""
import json, resource, sys, torch
from fractalkit.hostmem import keep_freed_host_memory, keeps_freed_host_memory
took = keep_freed_host_memory() if sys.argv[1] == "keep" else False
faults = []
for _ in range(ROUNDS):
    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    xs = [torch.ones(10_000_000 * k) for k in (1, 2, 3)]
    del xs
    faults.append(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
print(json.dumps({"took": took, "kept": keeps_freed_host_memory(), "faults": faults[1:]}))
""".replace("ROUNDS", "6")

# 240 MB of tensors written per round: 58,600 pages of 4 KiB when every round maps them afresh
PAGES_PER_ROUND = 240_000_000 // 4096

glibc_only = pytest.mark.skipif(
    hostmem._glibc() is None, reason="keeping freed memory is a glibc setting; this C library is not glibc"
)


def run_child(mode: str, **env: str) -> dict:
    environ = {k: v for k, v in os.environ.items() if k != hostmem.ENV_OPT_OUT}
    environ.update(PYTHONPATH=str(ROOT), **env)
    out = subprocess.run([sys.executable, "-c", CHILD, mode], env=environ, capture_output=True,
                         text=True, check=True, timeout=120)
    return json.loads(out.stdout.strip().splitlines()[-1])


@glibc_only
@pytest.mark.parametrize(
    ("mode", "env", "reused"),
    [
        ("keep", {}, True),
        ("keep", {hostmem.ENV_OPT_OUT: "0"}, False),  # opted out: glibc's defaults stay
        ("default", {}, False),  # never asked: every round faults its buffers back in
    ],
    ids=["kept", "opted-out", "default"],
)
def test_freed_memory_is_reused_without_page_faults(mode, env, reused) -> None:
    got = run_child(mode, **env)
    assert got["took"] is reused and got["kept"] is reused
    if reused:
        # The heap may still grow once in the second or third round (freed blocks are reused in
        # a different order: 40 or 120 MB faulted in once), then the rounds reuse it as it is.
        assert sum(got["faults"]) < PAGES_PER_ROUND, got
        assert sum(got["faults"][-3:]) < PAGES_PER_ROUND // 10, got
    else:
        assert min(got["faults"]) > PAGES_PER_ROUND // 2, got


def test_not_glibc_changes_nothing(monkeypatch) -> None:
    monkeypatch.setattr(hostmem, "_kept", False)
    monkeypatch.setattr(hostmem, "_glibc", lambda: None)
    assert hostmem.keep_freed_host_memory() is False
    assert hostmem.keeps_freed_host_memory() is False


@pytest.mark.parametrize(("keep", "device", "calls"), [(True, "cpu", 1), (False, "cpu", 0), (True, "meta", 0)])
def test_trainer_keeps_host_memory_for_cpu_models(monkeypatch, keep, device, calls) -> None:
    """fit() asks for it once for a CPU model (not for another device, nor after opting out)."""
    import fractalkit.training.loop as loop

    called = []
    monkeypatch.setattr(loop, "keep_freed_host_memory", lambda: called.append(1) or True)
    model = tiny_fractal()
    opt = torch.optim.SGD(model.parameters(), lr=1e-3)
    trainer = Trainer(model, opt, generator=torch.Generator().manual_seed(0), steps=1,
                      keep_host_memory=keep)
    trainer.device = torch.device(device)  # only the decision is under test, not a meta run
    if device != "cpu":
        monkeypatch.setattr(trainer, "_fit", lambda *a: None)
    trainer.fit(lambda g: torch.randint(0, 3, (4, 4), generator=g))
    assert len(called) == calls
