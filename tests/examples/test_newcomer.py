"""Issue 14, class 7 (the scripts): what a newcomer following the README meets.

Progress bars on the slow scripts (fed by ``SampleOptions.callback`` for sampling and completion),
``--classes`` refused for a checkpoint trained without labels, and ``evaluate.py``'s help
naming its default data truthfully. Before the change the three scripts printed nothing until
they finished, ``--classes`` on the default (unlabelled) run was accepted silently, and the help
called other crops of the same photographs "held-out".
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest

from fractalkit.cli import UserError

EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "imagenet_pixels"
ARGS = ["--batch-size", "2", "--natural-count", "8", "--no-progress", "--threads", "1"]


def script(name: str):
    spec = importlib.util.spec_from_file_location(f"newcomer_{name}", EXAMPLE / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def unlabelled_run(tmp_path_factory) -> Path:
    """The README's default run, shortened: tiny-in32 on scikit-image crops (no labels)."""
    run = tmp_path_factory.mktemp("newcomer") / "run"
    script("train").main([*ARGS, "--steps", "1", "--out", str(run)])
    return run


CALLS = {
    "sample": (["--num-samples", "2", "--batch-size", "1", "--steps", "2,2"], "sampling", "4/4"),
    "complete": (["--photo", "chelsea", "--mask", "center", "--samples", "1", "--steps", "2,2"],
                 "completing", "2/2"),
    "evaluate": (["--max-images", "4", "--batch-size", "2", "--heatmap-images", "0"], "scoring", "2/2"),
}


@pytest.mark.parametrize("name", sorted(CALLS))
def test_the_slow_scripts_show_a_progress_bar(name: str, unlabelled_run: Path, tmp_path, capsys) -> None:
    argv, label, count = CALLS[name]
    argv = [*argv, "--checkpoint", str(unlabelled_run), "--threads", "1"]
    if name != "evaluate":
        argv += ["--out", str(tmp_path / "out.png")]
    script(name).main(argv)
    err = capsys.readouterr().err
    assert label in err and count in err, err[-500:]
    script(name).main([*argv, "--no-progress"])
    assert label not in capsys.readouterr().err


@pytest.mark.parametrize("name", ["sample", "complete"])
def test_classes_are_refused_for_a_checkpoint_trained_without_labels(name: str, unlabelled_run: Path) -> None:
    argv = ["--checkpoint", str(unlabelled_run), "--classes", "3", "--no-progress", "--steps", "2,2"]
    with pytest.raises(UserError, match="trained without labels"):
        script(name).main(argv)


def test_evaluate_help_names_its_default_data_truthfully(capsys) -> None:
    with pytest.raises(SystemExit):
        script("evaluate").parse_args(["--help"])
    text = " ".join(capsys.readouterr().out.split())
    assert "held-out scikit-image crops" not in text
    assert "same scikit-image photographs" in text and "not held-out images" in text
