"""The layers of docs/architecture.md, checked by import-linter's contracts in pyproject.toml.

``lint-imports`` must keep every contract on the package as it stands; and, so that a green run
means something, the same contracts must break on a copy of the package with one import added
that runs back up (a foundation importing the composer) or that closes a circle.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def lint_imports(root: Path) -> subprocess.CompletedProcess:
    """``lint-imports`` over the ``fractalkit`` package found under ``root``."""
    env = {**os.environ, "PYTHONPATH": str(root)}
    script = "import sys; from importlinter.cli import lint_imports_command; sys.exit(lint_imports_command())"
    return subprocess.run(
        [sys.executable, "-c", script, str(root / "pyproject.toml"), "--no-cache", "--no-logo"],
        cwd=root, env=env, capture_output=True, text=True, timeout=120,
    )


def test_the_import_contracts_are_kept():
    result = lint_imports(ROOT)
    assert result.returncode == 0, result.stdout[-4000:] + result.stderr[-2000:]
    assert "broken" not in result.stdout.lower().split("contracts:")[-1].replace("0 broken", "")


@pytest.fixture
def package_copy(tmp_path: Path) -> Path:
    shutil.copytree(ROOT / "fractalkit", tmp_path / "fractalkit",
                    ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copy(ROOT / "pyproject.toml", tmp_path / "pyproject.toml")
    return tmp_path


@pytest.mark.parametrize(
    ("module", "added", "broken"),
    [
        # a foundation importing the composer: runs back up across every layer
        ("nn/linear.py", "from fractalkit.fractal import Fractal  # noqa", "fractalkit.nn.linear -> fractalkit.fractal"),
        # a type-only import counts as well
        ("partition/base.py", "from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from fractalkit.levels import Level  # noqa",
         "fractalkit.partition.base -> fractalkit.levels"),
        # the core importing a wing
        ("composer.py", "import fractalkit.graphs  # noqa", "fractalkit.composer -> fractalkit.graphs"),
    ],
)
def test_a_back_import_breaks_the_contracts(package_copy, module, added, broken):
    path = package_copy / "fractalkit" / module
    path.write_text(path.read_text() + "\n" + added + "\n")
    result = lint_imports(package_copy)
    assert result.returncode != 0, result.stdout[-3000:]
    assert broken in result.stdout, result.stdout[-3000:]


def test_nothing_in_the_package_imports_its_own_top():
    """``from fractalkit import X`` inside the package would hide an upward import from the
    layers (the top ``__init__`` belongs to no layer): every module imports by full path."""
    import grimp

    graph = grimp.build_graph("fractalkit")
    assert sorted(graph.find_modules_that_directly_import("fractalkit")) == []
