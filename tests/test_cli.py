"""Issue 14, class 6: every command line validates its arguments and reports user errors in one
line with exit code 2 (no traceback unless --debug / FRACTALKIT_DEBUG=1).

The flags are found by reading the scripts, so a new count flag is covered automatically; a
script that declares a plain ``type=int``/``type=float`` flag fails the first test.
"""

from __future__ import annotations

import importlib.util
import re
import sys
from pathlib import Path

import pytest

from fractalkit import cli

ROOT = Path(__file__).resolve().parents[1]
SCRIPTS = sorted(
    p for p in [*ROOT.glob("examples/*/*.py"), *ROOT.glob("benchmarks/*.py")]
    if "__main__" in p.read_text() and p.name != "pixels_common.py"
)
BUDGET_FLAGS = {"--budget-s": "positive_float", "--batch": "positive_int", "--threads": "positive_int"}
FLAG = re.compile(r'add_argument\(\s*"(--[\w-]+)"[^)]*?type=(?:cli\.)?(\w+)', re.S)


def flags(path: Path) -> dict[str, str]:
    """--flag -> type name, from the script's source (and add_budget_arguments when used)."""
    text = path.read_text()
    if path.name == "pixels_common.py":
        return dict(FLAG.findall(text))
    found = dict(FLAG.findall(text))
    if "add_sampling_arguments(" in text:
        found |= flags(path.parent / "pixels_common.py")
    if "add_budget_arguments(" in text:
        found |= BUDGET_FLAGS
    return found


def load(path: Path):
    """Import a script under a unique module name."""
    name = f"cli_{path.parent.name}_{path.stem}"
    if name in sys.modules:
        return sys.modules[name]
    sys.path.insert(0, str(path.parent))
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


def run_script(path: Path, argv: list[str], capsys) -> tuple[int, str]:
    """Run the script's main through cli.run in-process; its exit code and stderr."""
    module = load(path)
    with pytest.raises(SystemExit) as info:
        cli.run(module.main, argv)
    return info.value.code, capsys.readouterr().err


def test_no_script_declares_an_unchecked_number_flag() -> None:
    plain = [
        f"{p.relative_to(ROOT)} {flag}"
        for p in SCRIPTS
        for flag, kind in flags(p).items()
        if kind in ("int", "float")
    ]
    assert plain == []
    assert sum(len(flags(p)) for p in SCRIPTS) >= 40  # the scan really finds the flags


BAD = {
    "positive_int": ["0", "-3", "2.5", "many"],
    "positive_float": ["0", "-1", "nan", "inf"],
    "non_negative_int": ["-1", "x"],
    "non_negative_float": ["-0.5", "inf"],
    "probability": ["1", "-0.1", "nan"],
    "int_list": ["1,a", "-1"],
    "steps_list": ["64,0", "64,,16", "sixty"],
}
CASES = [
    pytest.param(p, flag, bad, id=f"{p.parent.name}/{p.stem}{flag}={bad}")
    for p in SCRIPTS
    for flag, kind in sorted(flags(p).items())
    for bad in BAD.get(kind, [])
]


@pytest.mark.parametrize("path, flag, bad", CASES)
def test_a_bad_number_is_a_one_line_parser_error_naming_the_flag(path: Path, flag: str, bad: str, capsys) -> None:
    code, err = run_script(path, [flag, bad], capsys)
    assert code == 2
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    assert f"argument {flag}:" in lines[0] and "Traceback" not in err


PIXELS = ROOT / "examples" / "imagenet_pixels"


@pytest.mark.parametrize(
    "script, argv, message",
    [
        ("sample", ["--checkpoint", "nowhere/run"], "no checkpoint at nowhere"),
        ("complete", ["--checkpoint", "nowhere/model.safetensors"], "nowhere"),
        ("evaluate", ["--checkpoint", "nowhere"], "nowhere"),
        ("train", ["--data", "nowhere/images", "--out", "{tmp}/run", "--no-progress"], "nowhere"),
        ("train", ["--resume", "nowhere/run", "--no-progress"], "nowhere"),
    ],
)
def test_a_user_error_exits_2_with_one_line_and_debug_shows_the_traceback(
    script: str, argv: list[str], message: str, tmp_path, capsys, monkeypatch
) -> None:
    monkeypatch.chdir(tmp_path)
    argv = [a.replace("{tmp}", str(tmp_path)) for a in argv]
    code, err = run_script(PIXELS / f"{script}.py", argv, capsys)
    assert code == 2
    assert len(err.strip().splitlines()) == 1 and message in err and "Traceback" not in err
    with pytest.raises((FileNotFoundError, ValueError)):
        cli.run(load(PIXELS / f"{script}.py").main, [*argv, "--debug"])


def test_output_folder_is_created_or_named(tmp_path) -> None:
    assert cli.output_folder(str(tmp_path / "a" / "b")).is_dir()
    (tmp_path / "file").write_text("x")
    with pytest.raises(Exception, match="is not a folder"):
        cli.output_folder(str(tmp_path / "file"))
    with pytest.raises(Exception, match="cannot create the folder"):
        cli.output_folder(str(tmp_path / "file" / "sub"))
