"""Issue 14, class 7: every command in the README, docs/ and the example READMEs works in the
order shown from a fresh clone.

For each documented command (fenced bash blocks and inline code spans starting with ``python``
or ``torchrun``) the test checks that the script or module exists, that its argument parser
accepts the arguments (parsing only: ``parse_args`` is stopped right after it succeeds), and
that every path it reads (``--checkpoint``, ``--resume``, ``--data``, ``--image``, mask files)
is in the repository, a public dataset's name on the Hugging Face Hub that the project knows
(``fractalkit.data.hub_datasets.KNOWN``), a file of the pages' local dataset copy (checked against the same-named
slice in ``tests/data``, never read outside the repository), made by an earlier command of the same page
(a run folder from ``train.py``'s ``--out`` or its default ``runs/<preset>``), an absolute path
of the reader's own data set, or one of the inputs the page asks the reader to bring.

Before the change the README's sample/evaluate/complete commands read ``runs/small-in64-tiny``,
which no documented command made, and ``--train-batch 0`` was not a documented-valid value.
"""

from __future__ import annotations

import argparse
import importlib.util
import re
import shlex
from pathlib import Path

import pytest

from fractalkit.data import hub_datasets

ROOT = Path(__file__).resolve().parents[1]
PAGES = sorted(
    [ROOT / "README.md", *ROOT.glob("docs/**/*.md"), *ROOT.glob("examples/*/README.md"),
     ROOT / "benchmarks" / "README.md"]
)
#: files the pages tell the reader to bring (downloads, their own photos)
READER_INPUTS = {"fractalmar_in64.pth", "my_photo.jpg", "my_mask.png"}
PATH_FLAGS = {"--checkpoint", "--resume", "--data", "--image", "--cache"}
#: tools of their own (the standard library's file server serves a mirror folder)
SKIP_MODULES = {"pip", "pytest", "mkdocs", "http"}
#: where the pages put a local copy of the public datasets (a development machine's offline
#: mirror, not part of a clone). A documented path under it must name a dataset file, checked
#: against tests/data, which holds a slice of each under the same relative path.
LOCAL_COPY = "../shared/data/"
SAMPLES = ROOT / "tests" / "data"
#: the interpreters the pages name: python, python3 (before the set-up) and the set-up's .venv
PYTHON = r"(?:python3?|\.venv/bin/python)"


def commands(page: Path) -> list[str]:
    """The page's commands in order: bash blocks (continuations joined) and inline spans."""
    text = page.read_text()
    found = []
    for block in re.findall(r"```(?:bash|sh|console)\n(.*?)```", text, re.S):
        for line in block.replace("\\\n", " ").splitlines():
            for part in line.split(" && "):  # the quick start: set-up && train
                if re.match(rf"\s*(\w+=\S+\s+)*({PYTHON}|torchrun)\b", part):
                    found.append(part.strip())
    outside = re.sub(r"```.*?```", "", text, flags=re.S)
    for span in re.findall(rf"`((?:\w+=\S+ )*(?:{PYTHON}|torchrun) [^`]+)`", outside):
        found += [part.strip() for part in span.split(" && ")]
    return found


def split(command: str) -> tuple[str, list[str]] | None:
    """(script path or ``-m module``, arguments) of a command, or None if it runs no script."""
    if "..." in command:  # an elided example in prose, not a command to run
        return None
    tokens = [t for t in shlex.split(command, comments=True) if not re.match(r"^\w+=", t)]
    tokens = [t for t in tokens if not (t.startswith("[") and t.endswith("]"))]  # [--optional]
    if re.fullmatch(PYTHON, tokens[0]):
        tokens = ["python", *tokens[1:]]
    if tokens[0] == "torchrun":  # its own options come before the script
        start = next(i for i, t in enumerate(tokens) if t.endswith(".py"))
        tokens = ["python", *tokens[start:]]
    if tokens[:2] == ["python", "-m"]:
        if tokens[2].split(".")[0] in SKIP_MODULES:
            return None
        return f"-m {tokens[2]}", tokens[3:]
    if tokens[0] == "python" and len(tokens) > 1 and tokens[1].endswith(".py"):
        return tokens[1], tokens[2:]
    return None


class Parsed(Exception):
    """Raised by the patched parse_args once the arguments parsed."""

    def __init__(self, namespace: argparse.Namespace) -> None:
        super().__init__("parsed")
        self.namespace = namespace


def parse(target: str, argv: list[str], monkeypatch) -> argparse.Namespace:
    """Run the target's main until its parser has accepted ``argv``; its namespace."""
    if target.startswith("-m "):
        module = importlib.import_module(target[3:])
    else:
        path = ROOT / target
        source = path.read_text()
        if "ArgumentParser" not in source and "add_budget_arguments" not in source:
            assert argv == [], f"{target} takes no arguments, the docs give {argv}"
            return argparse.Namespace()
        monkeypatch.syspath_prepend(str(path.parent))
        spec = importlib.util.spec_from_file_location(f"doc_{path.parent.name}_{path.stem}", path)
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
    real = argparse.ArgumentParser.parse_args

    def stop(self, args=None, namespace=None):
        raise Parsed(real(self, args, namespace))

    monkeypatch.setattr(argparse.ArgumentParser, "parse_args", stop)
    with pytest.raises(Parsed) as info:
        module.main(argv)
    return info.value.namespace


def produced(target: str, ns: argparse.Namespace) -> list[str]:
    """Run folders and files a command makes (train.py's default run folder included)."""
    out = []
    if target.endswith("imagenet_pixels/train.py"):
        out.append(str(ns.out or f"runs/{ns.preset or 'tiny-in32'}"))
    for name in ("out", "json", "gif", "strip", "heatmap"):
        if getattr(ns, name, None):
            out.append(str(getattr(ns, name)))
    return [o.rstrip("/") for o in out]


def readable(value: str, made: list[str]) -> bool:
    if value in READER_INPUTS or Path(value).is_absolute():
        return True
    if value in hub_datasets.KNOWN:  # a public dataset by name (tests/test_data_by_name.py loads each)
        return True
    if value.startswith(LOCAL_COPY):
        return (SAMPLES / value.removeprefix(LOCAL_COPY)).exists()
    if (ROOT / value).exists():
        return True
    return any(value == m or value.startswith(m + "/") for m in made)


CASES = [pytest.param(page, id=str(page.relative_to(ROOT))) for page in PAGES if commands(page)]


def test_the_pages_hold_the_commands() -> None:
    assert sum(len(commands(p)) for p in PAGES) >= 30


@pytest.mark.parametrize("page", CASES)
def test_every_documented_command_exists_parses_and_reads_what_exists(page: Path, monkeypatch) -> None:
    monkeypatch.chdir(ROOT)
    made: list[str] = []
    problems = []
    for command in commands(page):
        parts = split(command)
        if parts is None:
            continue
        target, argv = parts
        if not target.startswith("-m ") and not (ROOT / target).is_file():
            problems.append(f"{command}: no script {target}")
            continue
        try:
            ns = parse(target, argv, monkeypatch)
        except BaseException as err:
            problems.append(f"{command}: the parser refused it ({type(err).__name__}: {err})")
            continue
        finally:
            monkeypatch.undo()
            monkeypatch.chdir(ROOT)
        for i, token in enumerate(argv[:-1]):
            value = argv[i + 1]
            is_path = token in PATH_FLAGS or (token == "--mask" and value.endswith(".png"))
            if is_path and not readable(value, made):
                problems.append(f"{command}: {token} {value} exists nowhere and no earlier command makes it")
        made += produced(target, ns)
    assert problems == [], "\n".join(problems)


# ---- the extras table and the declared dependencies ----------------------------------------------

IMPORT_NAMES = {
    "pillow": "PIL",
    "scikit-image": "skimage",
    "scikit-learn": "sklearn",
    "typing-extensions": "typing_extensions",
}
TOOLS = {"mkdocs", "mkdocs-material", "mkdocstrings", "pymdown-extensions", "pytest", "hypothesis", "ruff", "import-linter"}


def _extras() -> dict[str, list[str]]:
    import tomllib

    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    names = {"(none)": project["dependencies"], **project["optional-dependencies"]}
    return {k: [re.split(r"[<>=\[;]", d)[0].strip() for d in v] for k, v in names.items()}


def test_every_declared_dependency_is_imported_somewhere() -> None:
    sources = "\n".join(
        p.read_text() for folder in ("fractalkit", "examples", "benchmarks", "tests", "docs")
        for p in (ROOT / folder).rglob("*.py")
    )
    unused = [
        name for extra, deps in _extras().items() for name in deps
        if not name.startswith("fractalkit") and name not in TOOLS
        and not re.search(rf"^\s*(import|from) {IMPORT_NAMES.get(name, name)}\b", sources, re.M)
    ]
    assert unused == []


def test_the_install_page_lists_every_extra_with_its_packages() -> None:
    page = (ROOT / "docs" / "install.md").read_text()
    rows = dict(re.findall(r"^\| `?([\w()]+)`? \| (.*) \|$", page, re.M))
    for extra, deps in _extras().items():
        assert extra in rows, f"docs/install.md has no row for the extra {extra!r}"
        for name in deps:
            if not name.startswith("fractalkit"):
                assert f"`{name}" in rows[extra], f"{name} ({extra}) is missing from docs/install.md"
