"""The documentation cannot rot: runnable snippets run, diagrams are current, every module has a page.

- Every Python block of ``README.md`` and ``docs/**/*.md`` that follows a ``<!-- runnable -->``
  line is executed, each in a fresh namespace, in a temporary working directory, on the CPU.
- ``docs/assets/*.svg`` equal a fresh run of ``docs/scripts/make_diagrams.py``.
- Every public module of the package is rendered by a ``::: module`` line of ``docs/api/*.md``.
- (slow) ``mkdocs build --strict`` passes and the built site loads nothing from the internet.

The strict build itself also runs in ``.ci/run``; the headless-browser check of the rendered
site is ``docs/scripts/check_site.py`` (not run by CI, which has no Chromium).
"""

from __future__ import annotations

import importlib.util
import pkgutil
import re
import shutil
import subprocess
import sys
import types
from pathlib import Path

import pytest
import torch

import fractalkit
from fractalkit import config as config_module
from fractalkit.partition import PARTITIONERS

ROOT = Path(__file__).resolve().parents[1]
DOCS = ROOT / "docs"
MARKER = "<!-- runnable -->"
FENCE = re.compile(r"^```python\s*$")


def _pages() -> list[Path]:
    return [ROOT / "README.md", *sorted(DOCS.rglob("*.md"))]


def _snippets() -> list[tuple[str, int, str]]:
    """``(page, line, code)`` for every runnable block; a marker without a block is an error."""
    found = []
    for page in _pages():
        lines = page.read_text(encoding="utf-8").splitlines()
        for i, line in enumerate(lines):
            if line.strip() != MARKER:
                continue
            if i + 1 >= len(lines) or not FENCE.match(lines[i + 1]):
                raise AssertionError(
                    f"{page.relative_to(ROOT)}:{i + 1}: {MARKER} must be followed by a ```python block"
                )
            end = next((j for j in range(i + 2, len(lines)) if lines[j].strip() == "```"), None)
            if end is None:
                raise AssertionError(f"{page.relative_to(ROOT)}:{i + 2}: unclosed ```python block")
            found.append((str(page.relative_to(ROOT)), i + 3, "\n".join(lines[i + 2 : end])))
    return found


SNIPPETS = _snippets()


def test_snippets_are_found() -> None:
    pages = {page for page, _, _ in SNIPPETS}
    assert "README.md" in pages
    for required in (
        "docs/index.md",
        "docs/concepts.md",
        "docs/tutorials/compose.md",
        "docs/tutorials/plugins.md",
        "docs/tutorials/own_level.md",
        "docs/tutorials/own_partitioner.md",
        "docs/tutorials/completion.md",
        "docs/tutorials/sampling.md",
        "docs/tutorials/testing.md",
        "docs/tutorials/conditioning.md",
    ):
        assert required in pages, f"{required} has no runnable snippet"


SNIPPET_MODULE = "__docs_snippet__"


@pytest.fixture
def isolated(tmp_path, monkeypatch):
    """A temporary working directory, one torch thread, and the snippet's plug-ins unregistered.

    One thread: the snippets are tiny, and on a shared 2-core machine torch's thread pool makes
    them many times slower. Configs and partitioners a snippet registers (classes defined in the
    snippet) are removed afterwards so they do not leak into other tests; registrations made by
    library modules the snippet imported for the first time stay, as those modules stay imported.
    """
    monkeypatch.chdir(tmp_path)
    threads = torch.get_num_threads()
    dtype = torch.get_default_dtype()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)
        torch.set_default_dtype(dtype)
        for registry in (config_module.CONFIG_REGISTRY, PARTITIONERS):
            for kind in [k for k, cls in registry.items() if cls.__module__ == SNIPPET_MODULE]:
                del registry[kind]


@pytest.mark.parametrize(
    "page,line,code", SNIPPETS, ids=[f"{page}:{line}" for page, line, _ in SNIPPETS]
)
def test_runnable_snippet(page: str, line: int, code: str, isolated, monkeypatch) -> None:
    """Run one snippet as a script would: a fresh module namespace, on the CPU."""
    # A fresh module, registered while it runs (dataclasses look their module up), as a script.
    module = types.ModuleType(SNIPPET_MODULE)
    monkeypatch.setitem(sys.modules, module.__name__, module)
    # Compiled with the page's name and line numbers, so a traceback points into the page, and
    # without this file's ``from __future__`` flags.
    code = compile("\n" * (line - 1) + code, str(ROOT / page), "exec", dont_inherit=True)
    exec(code, module.__dict__)


def test_diagrams_are_current() -> None:
    spec = importlib.util.spec_from_file_location(
        "make_diagrams", DOCS / "scripts" / "make_diagrams.py"
    )
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    for name, text in module.render().items():
        path = DOCS / "assets" / name
        assert path.is_file(), f"{path} is missing: run python docs/scripts/make_diagrams.py"
        assert path.read_text(encoding="utf-8") == text, (
            f"{path.relative_to(ROOT)} is stale: run python docs/scripts/make_diagrams.py"
        )


def _public_modules() -> list[str]:
    names = [fractalkit.__name__]
    for info in pkgutil.walk_packages(fractalkit.__path__, f"{fractalkit.__name__}."):
        if not any(part.startswith("_") for part in info.name.split(".")):
            names.append(info.name)
    return names


def test_every_public_module_has_an_api_page() -> None:
    rendered = set()
    for page in (DOCS / "api").glob("*.md"):
        rendered |= set(re.findall(r"^:::\s+([\w.]+)", page.read_text(encoding="utf-8"), re.M))
    missing = [name for name in _public_modules() if name not in rendered]
    assert not missing, (
        f"modules without an API page: {missing}; add a '::: module' line to a page in docs/api/ "
        "(and the page to mkdocs.yml's nav)"
    )


@pytest.mark.slow
@pytest.mark.skipif(shutil.which("mkdocs") is None, reason="the docs extra is not installed")
def test_strict_build_works_offline(tmp_path) -> None:
    site = tmp_path / "site"
    result = subprocess.run(
        [sys.executable, "-m", "mkdocs", "build", "--strict", "--site-dir", str(site)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert result.returncode == 0, result.stderr[-4000:]
    remote = re.compile(
        r"""(?:<script[^>]+src|<link[^>]+href|<img[^>]+src)=["']https?://|url\(["']?https?://"""
    )
    offenders = []
    for path in site.rglob("*"):
        if path.suffix in {".html", ".css"}:
            text = path.read_text(encoding="utf-8", errors="replace")
            offenders += [f"{path.relative_to(site)}: {m.group(0)}" for m in remote.finditer(text)]
    assert not offenders, f"the built site fetches from the internet: {offenders[:10]}"
