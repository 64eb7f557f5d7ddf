#!/usr/bin/env python3
"""Set up fractalkit from a fresh clone: a virtual environment with torch and ``fractalkit[dev]``.

    python3 scripts/setup.py && .venv/bin/python examples/digits/train.py    # the quick start
    .venv/bin/python -m pytest                                               # the tests

Standard library only: it runs before anything is installed, with any Python 3.10 or newer.
Three steps; running it again is safe and quick (the first two are skipped when done, and pip
finds the third's requirements satisfied):

1. ``.venv`` (``--venv``): made with ``python -m venv`` unless it already holds a Python.
2. torch, unless the environment already has torch >= 2.4 (``--torch`` replaces it):
   - no NVIDIA GPU: the CPU build, ``torch==2.13.0`` (the version the project is tested with)
     with PyTorch's CPU index as an *extra* index, so pip takes the small ``+cpu`` wheel there
     instead of the CUDA build of several GB that PyPI serves on Linux;
   - an NVIDIA GPU (``nvidia-smi`` lists one): the same version from PyPI, which on Linux is
     the CUDA build;
   - ``--torch`` or ``$FRACTALKIT_TORCH``: ``cpu``, ``cuda``, ``keep`` (install no torch) or a
     pip requirement such as ``torch==2.6.0``; ``--torch-index URL`` (``$FRACTALKIT_TORCH_INDEX``)
     installs torch from that index only, e.g. a CUDA-specific one from pytorch.org.
3. ``pip install -e ".[dev]"`` (``--extras``): the library, the examples', docs' and test tools.

``--dry-run`` prints what it would run and changes nothing (it asks nothing over the network).
Without a virtual environment (conda, an environment you manage yourself): ``--no-venv``
installs into the Python running this script.
"""

from __future__ import annotations

import argparse
import os
import platform
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

MIN_PYTHON = (3, 10)
#: the torch release the project is tested with (tests/test_pinned.py's figures come from it)
TORCH_VERSION = "2.13.0"
#: an existing torch at least this new is kept (pyproject.toml's requirement)
TORCH_MINIMUM = (2, 4)
CPU_INDEX = "https://download.pytorch.org/whl/cpu"
ENV_TORCH = "FRACTALKIT_TORCH"
ENV_TORCH_INDEX = "FRACTALKIT_TORCH_INDEX"
ROOT = Path(__file__).resolve().parents[1]


class SetupError(Exception):
    """A step cannot go on; the message says what was wrong and what to do."""


def venv_python(venv: Path, windows: bool | None = None) -> Path:
    """The interpreter inside the virtual environment ``venv`` (``Scripts\\python.exe`` on Windows)."""
    windows = os.name == "nt" if windows is None else windows
    return venv / "Scripts" / "python.exe" if windows else venv / "bin" / "python"


def nvidia_gpu(run=subprocess.run, which=shutil.which) -> str | None:
    """The first line of ``nvidia-smi -L`` (e.g. ``GPU 0: NVIDIA H100 ...``), or None: no NVIDIA GPU.

    Args:
        run, which: ``subprocess.run`` and ``shutil.which`` (tests pass stand-ins).
    """
    if which("nvidia-smi") is None:
        return None
    try:
        done = run(["nvidia-smi", "-L"], capture_output=True, text=True, timeout=20)
    except (OSError, subprocess.SubprocessError):
        return None
    lines = [ln.strip() for ln in (done.stdout or "").splitlines() if ln.strip().startswith("GPU")]
    return lines[0] if done.returncode == 0 and lines else None


def reachable(url: str, timeout: float = 10.0) -> bool:
    """Whether ``url`` answers within ``timeout`` seconds (any HTTP status counts as an answer)."""
    import urllib.error
    import urllib.request

    try:
        urllib.request.urlopen(urllib.request.Request(url, method="HEAD"), timeout=timeout).close()
    except urllib.error.HTTPError:
        return True
    except (OSError, ValueError):
        return False
    return True


def torch_plan(choice: str, *, gpu: str | None, index: str | None, installed: str | None,
               system: str | None = None, cpu_index: bool = True) -> tuple[list[str] | None, str]:
    """Which torch to install: ``(pip install arguments or None, one line saying why)``.

    Args:
        choice: ``"auto"`` (decide from ``gpu`` and ``installed``), ``"cpu"``, ``"cuda"``,
            ``"keep"`` or a pip requirement starting with ``torch`` (e.g. ``"torch==2.6.0"``).
        gpu: the NVIDIA GPU found (:func:`nvidia_gpu`), or None.
        index: an index URL to install torch from (``--torch-index``), or None.
        installed: the version of torch already in the environment, or None.
        system: ``platform.system()`` (tests pass one).
        cpu_index: PyTorch's CPU index answers (:func:`reachable`). When it does not (offline,
            behind a mirror), torch comes from pip's configured indexes and find-links alone,
            instead of pip retrying the CPU index for every package.

    Returns:
        None for the arguments when no torch is installed (``keep``, or ``auto`` with a recent
        enough torch already there).

    Raises:
        SetupError: ``choice`` is none of these.
    """
    system = system or platform.system()
    pinned = f"torch=={TORCH_VERSION}"
    if choice == "keep":
        return None, f"torch: kept as it is ({installed or 'none installed'}; --torch keep)"
    if choice == "auto" and installed and _version(installed) >= TORCH_MINIMUM:
        return None, (f"torch {installed} is already installed: kept (--torch cpu, cuda or a "
                      "requirement replaces it)")
    if choice == "auto":
        choice = "cuda" if gpu else "cpu"
        why = f"an NVIDIA GPU ({gpu})" if gpu else "no NVIDIA GPU found"
    else:
        why = f"--torch {choice}"
    if choice == "cpu" and cpu_index:
        requirement, extra, kind = pinned, ["--extra-index-url", CPU_INDEX], "the CPU build"
    elif choice == "cpu":
        requirement, extra, kind = pinned, [], (
            f"the CPU build is wanted but {CPU_INDEX} does not answer, so the build is the one "
            "pip's own indexes and find-links hold (on Linux PyPI's is the CUDA one; "
            "--torch-index names a mirror of the CPU index)")
    elif choice == "cuda":
        requirement, extra, kind = pinned, [], "PyPI's build"
        if system == "Windows" and not index:
            kind += (" (on Windows PyPI's torch is CPU-only: for CUDA pass --torch-index with "
                     "the index pytorch.org names for your CUDA version)")
    elif choice.startswith("torch"):
        requirement, extra, kind = choice, [], "the requirement given"
    else:
        raise SetupError(
            f"--torch {choice!r}: expected auto, cpu, cuda, keep or a pip requirement such as "
            f"torch=={TORCH_VERSION} (also read from ${ENV_TORCH})"
        )
    if index:  # the user's index replaces the others for torch (e.g. a CUDA 12.6 build)
        extra = ["--index-url", index]
    return [requirement, *extra], f"{requirement}, {kind} ({why})"


def _version(text: str) -> tuple[int, ...]:
    """``"2.13.0+cpu"`` -> ``(2, 13, 0)`` (leading numeric parts only)."""
    parts = []
    for piece in text.split("+")[0].split("."):
        digits = "".join(c for c in piece if c.isdigit()) if piece[:1].isdigit() else ""
        if not digits:
            break
        parts.append(int(digits))
    return tuple(parts)


def existing_venv(venv: Path, windows: bool | None = None) -> Path | None:
    """The interpreter of an existing virtual environment at ``venv``, or None if there is none.

    Raises:
        SetupError: ``venv`` exists but holds no Python (a half-made or foreign folder).
    """
    if not venv.exists():
        return None
    python = venv_python(venv, windows)
    if not python.exists():
        raise SetupError(
            f"{venv} exists but holds no Python ({python} is missing): a half-made or foreign "
            f"folder. Remove it (rm -rf {venv}) and run this again, or pass --venv another folder"
        )
    return python


def build_plan(args: argparse.Namespace, *, gpu: str | None, installed: str | None,
               env_exists: bool, python: Path, cpu_index: bool = True) -> list[tuple[str, list[str] | None]]:
    """The steps as ``(what, command or None when nothing runs)``, in order.

    Args:
        args: the parsed command line (:func:`parse_args`).
        gpu, installed, cpu_index: as in :func:`torch_plan`.
        env_exists: the environment is already there (or ``--no-venv``).
        python: the environment's interpreter.
    """
    steps: list[tuple[str, list[str] | None]] = []
    if args.no_venv:
        steps.append((f"no virtual environment: installing into {python} (--no-venv)", None))
    elif env_exists:
        steps.append((f"{args.venv}: already there, reused", None))
    else:
        steps.append((f"{args.venv}: a new virtual environment",
                      [sys.executable, "-m", "venv", str(args.venv)]))
    pip = [str(python), "-m", "pip", "install"]
    torch_args, why = torch_plan(args.torch, gpu=gpu, index=args.torch_index, installed=installed,
                                 cpu_index=cpu_index)
    steps.append((why, None if torch_args is None else [*pip, *torch_args]))
    extras = f".[{args.extras}]" if args.extras else "."
    steps.append((f'fractalkit, editable, with "{extras}"', [*pip, "-e", extras]))
    return steps


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """The command line (see ``--help``)."""
    p = argparse.ArgumentParser(
        prog="scripts/setup.py", description=__doc__.split("\n\n")[0],
        epilog="Details: docs/install.md",
    )
    p.add_argument("--venv", type=Path, default=ROOT / ".venv",
                   help="the virtual environment's folder (default .venv in the repository)")
    p.add_argument("--no-venv", action="store_true",
                   help="install into the Python running this script (conda, your own environment)")
    p.add_argument("--torch", default=os.environ.get(ENV_TORCH) or "auto",
                   help="auto (default), cpu, cuda, keep, or a pip requirement such as "
                        f"torch=={TORCH_VERSION} (default from ${ENV_TORCH})")
    p.add_argument("--torch-index", default=os.environ.get(ENV_TORCH_INDEX) or None, metavar="URL",
                   help="install torch from this index only, e.g. a CUDA build's index from "
                        f"pytorch.org (default from ${ENV_TORCH_INDEX})")
    p.add_argument("--extras", default="dev",
                   help='the extras of "pip install -e .[EXTRAS]" (default dev: examples, docs, '
                        "tests; empty: the library only)")
    p.add_argument("--dry-run", action="store_true", help="print the steps; change nothing")
    return p.parse_args(argv)


def _show(command: list[str]) -> str:
    return " ".join(shlex.quote(c) for c in command)


def _installed_torch(python: Path) -> str | None:
    code = "import importlib.metadata as m\ntry: print(m.version('torch'))\nexcept Exception: pass"
    done = subprocess.run([str(python), "-c", code], capture_output=True, text=True)
    return done.stdout.strip() or None


def _check_can_make_venv() -> None:
    import importlib.util

    if importlib.util.find_spec("ensurepip") is None:  # Debian/Ubuntu split it out of python3
        raise SetupError(
            f"{sys.executable} cannot make a virtual environment with pip: its ensurepip module "
            "is missing. On Debian/Ubuntu install it with: sudo apt install python3-venv "
            "(or python3.X-venv for your version); then run this again"
        )


def main(argv: list[str] | None = None) -> int:
    """Run the set-up; returns the exit status (0: done)."""
    args = parse_args(argv)
    if sys.version_info < MIN_PYTHON:
        raise SetupError(f"fractalkit needs Python {'.'.join(map(str, MIN_PYTHON))} or newer; this is "
                         f"{platform.python_version()} ({sys.executable}). Run this script with a newer python3")
    args.venv = Path(args.venv).absolute()  # the steps run in the repository root
    if args.no_venv:
        python, exists = Path(sys.executable), True
    else:
        found = existing_venv(args.venv)
        python, exists = (found, True) if found else (venv_python(args.venv), False)
    if exists and subprocess.run([str(python), "-m", "pip", "--version"], capture_output=True).returncode:
        raise SetupError(
            f"{python} has no pip (a virtual environment made without ensurepip?). "
            + ("Install pip for it" if args.no_venv else
               f"Remove {args.venv} (rm -rf {args.venv}), make sure python3 -m venv works (Debian/"
               "Ubuntu: sudo apt install python3-venv)") + " and run this again"
        )
    installed = _installed_torch(python) if exists else None
    gpu = nvidia_gpu()
    # Only asked when the CPU index would be used: the answer saves pip's retries per package
    # (--dry-run asks nothing over the network and shows the plan for a reachable index)
    cpu_index = args.dry_run or not (args.torch in ("auto", "cpu") and not gpu and not args.torch_index) \
        or reachable(CPU_INDEX + "/")
    plan = build_plan(args, gpu=gpu, installed=installed, env_exists=exists, python=python,
                      cpu_index=cpu_index)
    for what, command in plan:
        print(f"==> {what}", flush=True)
        if command is None:
            continue
        print(f"    {_show(command)}", flush=True)
        if args.dry_run:
            continue
        if command[1:3] == ["-m", "venv"]:
            _check_can_make_venv()
        done = subprocess.run(command, cwd=ROOT)
        if done.returncode != 0:
            raise SetupError(f"this step failed (exit status {done.returncode}): {_show(command)}; "
                             "the lines above say why. Fix that and run this script again: the "
                             "steps already done are skipped")
    if args.dry_run:
        print("(--dry-run: nothing was changed)")
        return 0
    done = subprocess.run([str(python), "-c", CHECK], capture_output=True, text=True)
    if done.returncode != 0:
        last = "\n".join(done.stderr.strip().splitlines()[-15:])  # whole lines: the traceback's end
        raise SetupError(f"the environment does not import torch and fractalkit:\n{last}")
    print(f"\nfractalkit is set up in {sys.prefix if args.no_venv else args.venv} ({done.stdout.strip()}).")
    print(next_steps(python, no_venv=args.no_venv))
    return 0


#: run in the new environment at the end: both import, and which torch it is
CHECK = ("import torch, fractalkit; print('torch', torch.__version__ + ', CUDA',"
         " 'available' if torch.cuda.is_available() else 'not available')")


def next_steps(python: Path, *, no_venv: bool = False, cwd: Path | None = None) -> str:
    """The lines printed at the end: the quick start and test commands with this interpreter."""
    cwd = Path.cwd() if cwd is None else cwd
    shown = "python" if no_venv else os.path.relpath(python, ROOT)
    first = "" if cwd.resolve() == ROOT else f"  cd {shlex.quote(str(ROOT))}\n"
    activate = ".venv\\Scripts\\activate" if os.name == "nt" else "source .venv/bin/activate"
    return (f"Next, from the repository root:\n{first}"
            f"  {shown} examples/digits/train.py   # the quick start: a few minutes on a CPU\n"
            f"  {shown} -m pytest                  # the tests\n"
            + ("" if no_venv else
               f"Other pages write `python ...`: use {shown}, or activate the environment first ({activate})."))

if __name__ == "__main__":
    try:
        sys.exit(main())
    except SetupError as err:
        print(f"scripts/setup.py: {err}", file=sys.stderr)
        sys.exit(1)
    except KeyboardInterrupt:
        print("scripts/setup.py: interrupted; run it again to continue (finished steps are skipped)",
              file=sys.stderr)
        sys.exit(130)
