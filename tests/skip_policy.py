"""What a skip may be for: a missing optional package, tool or hardware (a GPU, the Inception
weights a user downloads), never a missing fixture or data file.

Everything the tests read is in the repository (``tests/fixtures``, ``tests/data``), so a skip
for a missing fixture means a file was lost or a test looks outside the repository. Under CI (the
``CI`` environment variable set, as CI services do) such a skip is turned into a failure;
elsewhere it stays a skip, and ``-rs`` (pyproject's addopts) lists its reason in the summary.
The hooks are imported by ``tests/conftest.py``.
"""

from __future__ import annotations

import os
import re

import pytest

#: skip reasons that mean a fixture or data file is missing (not a package, tool or GPU)
FIXTURE_SKIP = re.compile(
    r"\bfixtures?\b|\bdata (file|folder|set)s?\b|\.\./shared|\bshared/(data|fixtures)\b|tests/(data|fixtures)/",
    re.IGNORECASE,
)


def in_ci() -> bool:
    """True when the ``CI`` environment variable is set to anything but empty, 0 or false."""
    return os.environ.get("CI", "").strip().lower() not in ("", "0", "false", "no")


def skip_reason(report) -> str | None:
    """The reason of a skipped test or collection report; None if it was not skipped."""
    if not report.skipped or not isinstance(report.longrepr, tuple):
        return None
    return str(report.longrepr[2])


def fail_fixture_skip(report) -> None:
    """Under CI, turn a skip for a missing fixture or data file into a failure (in place)."""
    reason = skip_reason(report)
    if reason is None or getattr(report, "wasxfail", None) is not None or not in_ci():
        return
    if FIXTURE_SKIP.search(reason):
        report.outcome = "failed"
        report.longrepr = (f"skipped for a missing fixture or data file, which CI does not allow (every "
                           f"file a test reads belongs in tests/fixtures or tests/data): {reason}")


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    """Test reports (setup, call, teardown)."""
    outcome = yield
    fail_fixture_skip(outcome.get_result())


@pytest.hookimpl(hookwrapper=True)
def pytest_make_collect_report(collector):
    """Module-level skips (``pytest.skip(..., allow_module_level=True)``)."""
    outcome = yield
    fail_fixture_skip(outcome.get_result())
