"""Issue 22, item 3: two commands from zero.

The README's quick start is one command (``python3 scripts/setup.py && .venv/bin/python
examples/digits/train.py``) and its tests one more (``.venv/bin/python -m pytest``). Checked here:

- the README, docs/index.md, docs/install.md and ``.ci/run`` hold the same set-up and test
  commands, textually (CI runs exactly what a new user runs);
- ``scripts/setup.py``'s decisions, without installing anything: which torch (no GPU, an NVIDIA
  GPU, an override by option or environment variable, a torch already there, an unreachable CPU
  index), an existing, half-made or pip-less environment, the errors for a Python too old and a
  missing ``ensurepip``;
- ``.venv`` is ignored by git, pytest, ruff and the docs build.

Before the change the README's set-up took four commands (``python -m pip``, which Debian-style
systems lack and refuse outside an environment), and ``.ci/run`` ran other commands than it.
"""

from __future__ import annotations

import importlib.util
import os
import re
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "scripts" / "setup.py"


@pytest.fixture(scope="module")
def setup():
    spec = importlib.util.spec_from_file_location("fractalkit_setup_script", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


# ---- the pages and CI run the same commands --------------------------------------------------


def quick_start(page: Path) -> str:
    """The first command of the page's first bash block after its quick start heading (or the page's
    first bash block holding ``scripts/setup.py``)."""
    text = page.read_text()
    blocks = re.findall(r"```bash\n(.*?)```", text, re.S)
    lines = [ln.split("#")[0].strip() for b in blocks for ln in b.splitlines()]
    found = [ln for ln in lines if "scripts/setup.py" in ln]
    assert found, f"{page.relative_to(ROOT)} shows no set-up command"
    return found[0]


def the_test_command(page: Path) -> str:
    text = page.read_text()
    lines = [ln.split("#")[0].strip() for b in re.findall(r"```bash\n(.*?)```", text, re.S)
             for ln in b.splitlines()]
    found = [ln for ln in lines if re.search(r"-m pytest$", ln)]
    assert found, f"{page.relative_to(ROOT)} shows no test command"
    return found[0]


def ci_lines() -> list[str]:
    return [ln.strip() for ln in (ROOT / ".ci" / "run").read_text().splitlines()
            if ln.strip() and not ln.lstrip().startswith("#")]


def test_the_readme_quick_start_is_one_command_of_set_up_and_training() -> None:
    command = quick_start(ROOT / "README.md")
    setup_part, _, train_part = command.partition(" && ")
    assert setup_part == "python3 scripts/setup.py", command
    assert train_part == ".venv/bin/python examples/digits/train.py", command


@pytest.mark.parametrize("page", ["docs/index.md", "docs/install.md"])
def test_the_docs_show_the_readme_quick_start_verbatim(page: str) -> None:
    assert quick_start(ROOT / page) == quick_start(ROOT / "README.md")


def test_ci_runs_the_readme_set_up_command_verbatim() -> None:
    setup_part = quick_start(ROOT / "README.md").partition(" && ")[0]
    assert setup_part in ci_lines()
    assert not [ln for ln in ci_lines() if re.search(r"\bpip install\b", ln)], "CI installs more than the README says"


@pytest.mark.parametrize("page", ["README.md", "docs/install.md"])
def test_ci_runs_the_pages_test_command_verbatim(page: str) -> None:
    command = the_test_command(ROOT / page)
    assert command == ".venv/bin/python -m pytest"
    assert f"{command} || status=$?" in ci_lines()


def test_ci_keeps_its_guards_and_builds_the_docs_with_the_same_python() -> None:
    lines = ci_lines()
    assert 'export CI="${CI:-true}"' in lines
    assert any("$status -eq 5" in ln for ln in lines)
    assert ".venv/bin/python -m mkdocs build --strict || docs=$?" in lines
    assert not [ln for ln in lines if re.match(r"python3? -m", ln)], "a bare python outside .venv"


@pytest.mark.parametrize("tool", ["git", "pytest", "ruff", "mkdocs"])
def test_the_environment_folder_is_ignored(tool: str) -> None:
    import tomllib

    if tool == "git":
        assert ".venv/" in (ROOT / ".gitignore").read_text().splitlines()
    elif tool == "pytest":
        config = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["pytest"]["ini_options"]
        assert config["testpaths"] == ["tests"]  # .venv's site-packages are never collected
    elif tool == "ruff":  # ruff skips .gitignore'd paths and .venv by default; nothing re-includes it
        ruff = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["ruff"]
        assert "include" not in ruff and ruff.get("respect-gitignore", True)
    else:  # mkdocs reads docs/ only (its default docs_dir), never the repository root
        found = re.findall(r"^docs_dir:\s*(\S+)", (ROOT / "mkdocs.yml").read_text(), re.M)
        assert found in ([], ["docs"]), found


# ---- the script's decisions ----------------------------------------------------------------------

CPU = ["torch==2.13.0", "--extra-index-url", "https://download.pytorch.org/whl/cpu"]
TORCH_CASES = {
    # name: (choice, gpu, index, installed, system, cpu index answers) -> (pip args, words in the why)
    "no gpu: CPU build from the extra index": (("auto", None, None, None, "Linux", True), (CPU, "no NVIDIA GPU")),
    "nvidia gpu: PyPI's build": (("auto", "GPU 0: NVIDIA H100", None, None, "Linux", True),
                                 (["torch==2.13.0"], "NVIDIA H100")),
    "gpu on windows: says PyPI's is CPU-only": (("auto", "GPU 0: RTX", None, None, "Windows", True),
                                                (["torch==2.13.0"], "--torch-index")),
    "recent torch already there: kept": (("auto", None, None, "2.6.0+cu124", "Linux", True), (None, "kept")),
    "old torch there: replaced": (("auto", None, None, "2.1.0", "Linux", True), (CPU, "no NVIDIA GPU")),
    "--torch cpu with a gpu": (("cpu", "GPU 0: A100", None, None, "Linux", True), (CPU, "--torch cpu")),
    "--torch cuda without a gpu": (("cuda", None, None, None, "Linux", True), (["torch==2.13.0"], "--torch cuda")),
    "--torch cpu replaces a torch there": (("cpu", None, None, "2.13.0", "Linux", True), (CPU, "--torch cpu")),
    "--torch keep": (("keep", None, None, None, "Linux", True), (None, "kept")),
    "--torch requirement": (("torch==2.6.0", None, None, None, "Linux", True), (["torch==2.6.0"], "requirement")),
    "--torch-index": (("auto", "GPU 0: A100", "https://download.pytorch.org/whl/cu126", None, "Linux", True),
                      (["torch==2.13.0", "--index-url", "https://download.pytorch.org/whl/cu126"], "A100")),
    "cpu index unreachable: pip's own sources": (("auto", None, None, None, "Linux", False),
                                                 (["torch==2.13.0"], "does not answer")),
}


@pytest.mark.parametrize("case", sorted(TORCH_CASES))
def test_which_torch(setup, case: str) -> None:
    (choice, gpu, index, installed, system, answers), (expected, words) = TORCH_CASES[case]
    args, why = setup.torch_plan(choice, gpu=gpu, index=index, installed=installed, system=system,
                                 cpu_index=answers)
    assert args == expected
    assert words in why, why


def test_an_unknown_torch_choice_names_the_choices(setup) -> None:
    with pytest.raises(setup.SetupError, match="expected auto, cpu, cuda, keep or a pip requirement"):
        setup.torch_plan("gpu", gpu=None, index=None, installed=None)


GPU_PROBES = {
    # name: (nvidia-smi on PATH, its exit status, its output or an exception) -> the GPU found
    "no nvidia-smi": (False, 0, "", None),
    "one gpu": (True, 0, "GPU 0: NVIDIA H100 80GB HBM3 (UUID: GPU-1)\n", "GPU 0: NVIDIA H100 80GB HBM3 (UUID: GPU-1)"),
    "driver not loaded": (True, 9, "NVIDIA-SMI has failed because it couldn't communicate with the driver", None),
    "no devices listed": (True, 0, "No devices were found\n", None),
    "hangs": (True, 0, subprocess.TimeoutExpired("nvidia-smi", 20), None),
}


@pytest.mark.parametrize("case", sorted(GPU_PROBES))
def test_the_gpu_probe(setup, case: str) -> None:
    on_path, status, output, expected = GPU_PROBES[case]

    def run(command, **kwargs):
        assert command == ["nvidia-smi", "-L"]
        if isinstance(output, Exception):
            raise output
        return SimpleNamespace(returncode=status, stdout=output)

    found = setup.nvidia_gpu(run=run, which=lambda name: "/usr/bin/nvidia-smi" if on_path else None)
    assert found == expected


@pytest.mark.parametrize("windows", [False, True])
def test_an_existing_environment_is_reused_and_a_half_made_one_refused(setup, tmp_path: Path, windows: bool) -> None:
    venv = tmp_path / ".venv"
    assert setup.existing_venv(venv, windows) is None  # none yet: made
    venv.mkdir()
    with pytest.raises(setup.SetupError, match=r"holds no Python .*rm -rf"):
        setup.existing_venv(venv, windows)
    python = setup.venv_python(venv, windows)
    python.parent.mkdir()
    python.write_text("")
    assert setup.existing_venv(venv, windows) == python
    assert python.name == ("python.exe" if windows else "python")


PLAN_CASES = {
    # name: (--no-venv, environment there, --extras) -> (the first step runs a command, the install target)
    "fresh": (False, False, "dev", True, ".[dev]"),
    "environment there": (False, True, "dev", False, ".[dev]"),
    "--no-venv": (True, True, "dev", False, ".[dev]"),
    "library only": (False, False, "", True, "."),
}


@pytest.mark.parametrize("case", sorted(PLAN_CASES))
def test_the_steps(setup, tmp_path: Path, case: str) -> None:
    no_venv, there, extras, makes_venv, target = PLAN_CASES[case]
    args = setup.parse_args(["--venv", str(tmp_path / "v"), "--extras", extras, "--torch", "auto"]
                            + (["--no-venv"] if no_venv else []))
    python = Path(sys.executable) if no_venv else setup.venv_python(tmp_path / "v")
    steps = setup.build_plan(args, gpu=None, installed=None, env_exists=there, python=python)
    assert steps[0][0].startswith("no virtual environment" if no_venv else str(tmp_path / "v"))
    assert (steps[0][1] is not None) == makes_venv
    assert steps[1][1][:4] == [str(python), "-m", "pip", "install"] and "torch==2.13.0" in steps[1][1]
    assert steps[2][1] == [str(python), "-m", "pip", "install", "-e", target]


def run_script(*argv: str, env: dict | None = None) -> subprocess.CompletedProcess:
    environ = {k: v for k, v in os.environ.items() if not k.startswith("FRACTALKIT_TORCH")}
    return subprocess.run([sys.executable, str(SCRIPT), *argv], capture_output=True, text=True,
                          env={**environ, **(env or {})}, timeout=120)


@pytest.mark.parametrize("how", ["option", "environment"])
def test_dry_run_changes_nothing_and_the_override_reaches_pip(tmp_path: Path, how: str) -> None:
    venv = tmp_path / "v"
    if how == "option":
        done = run_script("--venv", str(venv), "--dry-run", "--torch", "torch==2.6.0")
    else:
        done = run_script("--venv", str(venv), "--dry-run", env={"FRACTALKIT_TORCH": "torch==2.6.0"})
    assert done.returncode == 0, done.stderr
    assert f"-m venv {venv}" in done.stdout
    assert re.search(r"-m pip install torch==2\.6\.0\n", done.stdout), done.stdout
    assert "-m pip install -e '.[dev]'" in done.stdout and "nothing was changed" in done.stdout
    assert not venv.exists()


def test_an_existing_environment_with_torch_is_reused_and_its_torch_kept(tmp_path: Path) -> None:
    """A real environment without pip of its own; a .pth file lends it this interpreter's
    packages (pip and torch), so nothing is installed."""
    import site
    import sysconfig

    venv = tmp_path / "v"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True, timeout=120)
    purelib = Path(sysconfig.get_path("purelib", vars={"base": str(venv), "platbase": str(venv)}))
    (purelib / "lend.pth").write_text("\n".join(site.getsitepackages()) + "\n")
    done = run_script("--venv", str(venv), "--dry-run")
    assert done.returncode == 0, done.stderr
    assert "already there, reused" in done.stdout and "-m venv" not in done.stdout
    assert re.search(r"torch \S+ is already installed: kept", done.stdout), done.stdout
    assert "pip install torch" not in done.stdout


def test_an_environment_without_pip_says_what_to_do(tmp_path: Path) -> None:
    venv = tmp_path / "v"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True, timeout=120)
    done = run_script("--venv", str(venv), "--dry-run")
    assert done.returncode == 1
    assert "has no pip" in done.stderr and f"rm -rf {venv}" in done.stderr and "python3-venv" in done.stderr


def test_a_python_too_old_is_refused_by_name(setup, monkeypatch) -> None:
    monkeypatch.setattr(setup, "MIN_PYTHON", (99, 0))
    with pytest.raises(setup.SetupError, match=r"needs Python 99\.0 or newer; this is 3\."):
        setup.main(["--dry-run"])


def test_a_python_without_ensurepip_names_the_package_to_install(setup, monkeypatch) -> None:
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "ensurepip" else real(name, *a))
    with pytest.raises(setup.SetupError, match=r"ensurepip module is missing.*apt install python3-venv"):
        setup._check_can_make_venv()


def test_the_closing_lines_name_the_two_commands(setup) -> None:
    text = setup.next_steps(setup.venv_python(setup.ROOT / ".venv", False), cwd=setup.ROOT)
    assert ".venv/bin/python examples/digits/train.py" in text and ".venv/bin/python -m pytest" in text
    assert "cd " not in text
    assert f"cd {setup.ROOT}" in setup.next_steps(setup.venv_python(setup.ROOT / ".venv", False), cwd=Path("/"))


def test_the_script_needs_only_the_standard_library() -> None:
    imports = re.findall(r"^\s*(?:import|from) (\w+)", SCRIPT.read_text(), re.M)
    assert set(imports) <= set(sys.stdlib_module_names) | {"__future__"}, imports
