"""The test suite stands on its own: no test reads a file outside the repository, and a skip for
a missing fixture or data file fails under CI (tests/skip_policy.py), so none passes in silence.

Before this, 63 tests skipped on a clone because ``../shared`` (fixtures and datasets kept beside
the repository on the development machines) was absent, among them every converter parity test.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import tomllib

TESTS = Path(__file__).resolve().parent
ROOT = TESTS.parent
#: a path into the folder kept beside the repository: "../" + "shared", or a "shared" path segment
OUTSIDE = re.compile(r"\.\./" + "shared" + r"""|/\s*["']""" + "shared" + """["']""")
#: files allowed to name that folder, and why
ALLOWED = {
    "test_doc_commands.py": "matches the pages' documented local-copy prefix as text and checks "
                            "the rest against tests/data; it never opens the folder",
}


def test_no_test_reads_outside_the_repository() -> None:
    found = []
    for path in sorted(TESTS.rglob("*.py")):
        if path.name in ALLOWED or path == Path(__file__).resolve():
            continue
        for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
            if OUTSIDE.search(line):
                found.append(f"{path.relative_to(ROOT)}:{number}: {line.strip()}")
    assert found == [], "tests must read fixtures and data from tests/fixtures or tests/data:\n" + "\n".join(found)


def test_the_allowed_file_only_compares_text() -> None:
    """The allowed mention is a prefix string: no path is built from it."""
    source = (TESTS / "test_doc_commands.py").read_text(encoding="utf-8")
    lines = [line for line in source.splitlines() if OUTSIDE.search(line)]
    assert lines and all(not re.search(r"ROOT\s*/|Path\(", line) for line in lines), lines


def test_the_pattern_catches_both_spellings() -> None:
    assert OUTSIDE.search('FIXTURES = ROOT.parent / "shared" / "fixtures"')
    assert OUTSIDE.search("DATA = '../" + "shared/data/qm9'")
    assert not OUTSIDE.search('orders = {"identity": 1, "' + 'shared_orders": 2}')


@pytest.mark.parametrize("folder", ["fixtures/fractalgen", "data"])
def test_the_samples_are_small_and_described(folder: str) -> None:
    base = TESTS / folder
    files = [p for p in base.rglob("*") if p.is_file()]
    assert (base / "README.md").is_file() and len(files) > 5
    limit = 10_000_000 if folder.startswith("fixtures") else 2_000_000
    assert sum(p.stat().st_size for p in files) < limit


def test_every_skip_reason_is_listed_in_the_summary() -> None:
    addopts = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["pytest"]["ini_options"]["addopts"]
    assert any(re.fullmatch(r"-r\w*s\w*", opt) for opt in addopts), addopts


PROBE = '''
import pytest

def test_missing_fixture():
    pytest.skip("fixture file missing: tests/fixtures/x.safetensors")

def test_missing_package():
    pytest.skip("could not import 'pynauty'")
'''


@pytest.mark.parametrize("ci", ["", "true"])
def test_ci_turns_a_fixture_skip_into_a_failure(tmp_path: Path, ci: str) -> None:
    (tmp_path / "test_probe.py").write_text(PROBE)
    env = dict(os.environ, CI=ci, PYTHONPATH=os.pathsep.join([str(TESTS), os.environ.get("PYTHONPATH", "")]))
    proc = subprocess.run(
        [sys.executable, "-m", "pytest", "-p", "skip_policy", "-p", "no:cacheprovider", "-rs", "-q",
         "--rootdir", str(tmp_path), "-c", os.devnull, str(tmp_path)],
        capture_output=True, text=True, env=env, cwd=tmp_path, timeout=120,
    )
    out = proc.stdout + proc.stderr
    if ci:
        assert proc.returncode == 1 and "1 failed, 1 skipped" in out, out
        assert "which CI does not allow" in out
    else:
        assert proc.returncode == 0 and "2 skipped" in out, out
    assert "could not import 'pynauty'" in out  # the allowed skip, with its reason
