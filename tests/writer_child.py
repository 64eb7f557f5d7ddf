"""A first writer of a run folder, run in its own process by tests/test_one_writer.py.

    python writer_child.py RUN MODE     MODE: trainer | save

It takes the run folder as a writer (``trainer``: ``Trainer.fit`` with a run folder; ``save``:
``save_checkpoint``, stopped inside the save with its temporary folder half written), writes
``RUN/../ready`` and waits until ``RUN/../release`` exists (or until it is killed), then finishes
normally.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

import torch

import fractalkit.training.checkpoint as ckpt
from fractalkit.testing import tiny_fractal
from fractalkit.training import Trainer, save_checkpoint


def hold(run: Path) -> None:
    (run.parent / "ready").write_text("ready")
    deadline = time.monotonic() + 120  # never outlive a broken test for long
    while not (run.parent / "release").exists() and time.monotonic() < deadline:
        time.sleep(0.02)


def main() -> None:
    run, mode = Path(sys.argv[1]), sys.argv[2]
    torch.manual_seed(0)
    model = tiny_fractal()
    if mode == "trainer":
        def draw(g: torch.Generator) -> torch.Tensor:
            hold(run)
            return torch.randint(0, 3, (4, 4), generator=g)

        opt = torch.optim.SGD(model.parameters(), lr=1e-3)
        Trainer(model, opt, generator=torch.Generator(), steps=1, out=run).fit(draw)
    elif mode == "save":
        real = ckpt.torch.save

        def slow_save(obj, f, *args, **kwargs):  # the temporary folder is half written now
            real(obj, f, *args, **kwargs)
            hold(run)

        ckpt.torch.save = slow_save
        save_checkpoint(run / "checkpoint", model, step=1)
    else:
        raise SystemExit(f"unknown mode {mode!r}")


if __name__ == "__main__":
    main()
