"""Issue 22 (smaller): the quick start leaves the committed results alone.

``examples/digits/results/`` holds the committed run the README shows (pictures and
``results.json``). Before the change the README's quick start wrote its own run over them, so a
new user's first command left the checkout modified. Now a default run writes to
``runs/digits-results/`` (ignored by git), beside the model (``runs/digits``) and the training
run (``runs/digits-training``), relative to the working folder.
"""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
COMMITTED = ROOT / "examples" / "digits" / "results"


def load_example():
    spec = importlib.util.spec_from_file_location("quick_start_output", ROOT / "examples" / "digits" / "train.py")
    example = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(example)
    return example


@pytest.mark.parametrize("flag", ["--out", "--model-out", "--run-dir"])
def test_every_default_output_is_under_the_ignored_runs_folder(flag: str, tmp_path: Path, monkeypatch) -> None:
    """The defaults as the parser gives them (nothing runs), from a working folder of the user's."""
    captured = {}

    def stop(**kwargs):
        captured.update(kwargs)
        raise SystemExit(0)

    example = load_example()
    monkeypatch.setattr(example, "run", lambda out, **kwargs: stop(out=out, **kwargs))
    monkeypatch.chdir(tmp_path)
    with pytest.raises(SystemExit):
        example.main([])
    name = {"--out": "out", "--model-out": "model_out", "--run-dir": "run_dir"}[flag]
    where = captured[name].resolve()
    assert where.is_relative_to(tmp_path / "runs"), where
    assert not where.is_relative_to(ROOT / "examples")
    assert "runs/" in (ROOT / ".gitignore").read_text().splitlines()


@pytest.mark.slow  # a whole (2-step) run with every output at its default: about 10 s here
def test_a_default_run_writes_under_runs_and_leaves_the_committed_results(tmp_path: Path, monkeypatch) -> None:
    pytest.importorskip("sklearn", reason="scikit-learn (the examples extra) is not installed")
    before = {p.name: p.read_bytes() for p in COMMITTED.iterdir()}
    example = load_example()
    monkeypatch.chdir(tmp_path)  # the defaults are relative to the working folder
    example.main(["--steps", "2", "--per-class", "1", "--no-progress"])  # every output at its default
    made = tmp_path / "runs" / "digits-results"
    assert sorted(p.name for p in made.iterdir()) == ["completion.png", "results.json", "samples.png"]
    assert json.loads((made / "results.json").read_text())["train_steps"] == 2
    assert (tmp_path / "runs" / "digits" / "config.json").is_file()
    assert {p.name: p.read_bytes() for p in COMMITTED.iterdir()} == before


class _Parsed(Exception):
    """Raised by the patched parse_args once an example's arguments parsed."""


# Every example that writes a results folder: a run with the defaults must not rewrite the
# committed figures beside the script (the class of the quick start's results.json).
RESULT_WRITERS = [
    "examples/audio/train.py",
    "examples/graphs/train.py",
    "examples/text/train.py",
    "examples/molecules/train.py",
    "examples/molecules/conditional.py",
]


@pytest.mark.parametrize("script", RESULT_WRITERS)
def test_every_example_writes_its_default_results_under_runs(script: str, tmp_path: Path, monkeypatch) -> None:
    import argparse
    import sys

    original = argparse.ArgumentParser.parse_args

    def capture(self, args=None, namespace=None):
        raise _Parsed(original(self, args, namespace))

    spec = importlib.util.spec_from_file_location(f"results_writer_{Path(script).parent.name}", ROOT / script)
    example = importlib.util.module_from_spec(spec)
    monkeypatch.syspath_prepend(str((ROOT / script).parent))
    spec.loader.exec_module(example)
    monkeypatch.setattr(argparse.ArgumentParser, "parse_args", capture)
    monkeypatch.setattr(sys, "argv", [script])
    monkeypatch.chdir(tmp_path)
    with pytest.raises(_Parsed) as parsed:
        example.main([])
    out = Path(parsed.value.args[0].out).resolve()
    assert out.is_relative_to(tmp_path / "runs"), out
    assert not out.is_relative_to(ROOT / "examples"), out
