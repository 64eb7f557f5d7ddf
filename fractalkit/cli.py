"""Command-line helpers shared by the example and benchmark scripts.

Argument types that check what they parse (so ``--batch-size 0`` is a parser error that names
the flag, not a silent fallback or a crash deep inside torch), and :func:`run`, which turns a
user error into one clear line and exit code 2 instead of a traceback.

Example:
    >>> p = argparse.ArgumentParser()
    >>> _ = p.add_argument("--batch-size", type=positive_int)
    >>> p.parse_args(["--batch-size", "8"]).batch_size
    8
"""

from __future__ import annotations

import argparse
import math
import os
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any, NoReturn

from fractalkit.data.hub_datasets import is_hub_name
from fractalkit.filelock import FolderInUseError

__all__ = [
    "DEBUG_ENV",
    "ArgumentParser",
    "MissingInputError",
    "UserError",
    "add_debug_argument",
    "check_data",
    "check_device",
    "check_output_folder",
    "int_list",
    "non_negative_float",
    "non_negative_int",
    "output_folder",
    "positive_float",
    "positive_int",
    "probability",
    "run",
    "steps_list",
]

#: set to 1 to see the traceback of a user error (as ``--debug`` does)
DEBUG_ENV = "FRACTALKIT_DEBUG"


class ArgumentParser(argparse.ArgumentParser):
    """``argparse.ArgumentParser`` whose errors are one line: ``prog: error: ... (see --help)``
    and exit code 2, without the usage block."""

    def error(self, message: str) -> NoReturn:
        """Print the one-line error and exit with code 2."""
        self.exit(2, f"{self.prog}: error: {message} (see --help)\n")


class UserError(Exception):
    """A mistake in the command line or its inputs: reported in one line, exit code 2."""


def _number(cast: Callable[[str], float], accepts: Callable[[float], bool], expected: str):
    """An argparse type: ``cast`` the text, then refuse values ``accepts`` rejects."""

    def parse(text: str):
        try:
            value = cast(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected {expected}, got {text!r}") from None
        if not accepts(value):
            raise argparse.ArgumentTypeError(f"expected {expected}, got {text}")
        return value

    return parse


def _finite(lo: float, inclusive: bool) -> Callable[[float], bool]:
    return lambda v: math.isfinite(v) and (v >= lo if inclusive else v > lo)


_positive_int = _number(int, lambda v: v >= 1, "a positive integer")
_non_negative_int = _number(int, lambda v: v >= 0, "an integer >= 0")
_positive_float = _number(float, _finite(0.0, inclusive=False), "a finite number > 0")
_non_negative_float = _number(float, _finite(0.0, inclusive=True), "a finite number >= 0")
_probability = _number(float, lambda v: 0 <= v < 1, "a number in [0, 1)")


def positive_int(text: str) -> int:
    """An integer >= 1 (``--batch-size``, ``--steps``, ``--num-samples`` ...)."""
    return _positive_int(text)


def non_negative_int(text: str) -> int:
    """An integer >= 0 (``--workers``, ``--eval-every`` where 0 means off, ``--seed``)."""
    return _non_negative_int(text)


def positive_float(text: str) -> float:
    """A finite number > 0 (``--lr``, ``--minutes``, ``--temperature`` ...)."""
    return _positive_float(text)


def non_negative_float(text: str) -> float:
    """A finite number >= 0 (``--guidance``, ``--grad-clip`` where 0 means off ...)."""
    return _non_negative_float(text)


def probability(text: str) -> float:
    """A number in [0, 1) (``--holdout``, ``--filter``)."""
    return _probability(text)


def int_list(text: str) -> tuple[int, ...]:
    """Comma-separated integers >= 0, e.g. ``64,16`` or class labels ``1,7,9``."""
    parts = [p.strip() for p in text.split(",")]
    try:
        values = tuple(int(p) for p in parts)
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"expected comma-separated integers like 64,16, got {text!r}"
        ) from None
    if any(v < 0 for v in values):
        raise argparse.ArgumentTypeError(f"expected integers >= 0, got {text!r}")
    return values


def positive_float_list(text: str) -> tuple[float, ...]:
    """Comma-separated positive finite numbers, e.g. budgets in seconds ``30,90``."""
    try:
        return tuple(positive_float(p.strip()) for p in text.split(","))
    except argparse.ArgumentTypeError:
        raise argparse.ArgumentTypeError(
            f"expected comma-separated positive numbers like 30,90, got {text!r}"
        ) from None


def steps_list(text: str) -> tuple[int, ...] | None:
    """Decoding steps per level: ``exact`` (None: one child per step) or e.g. ``64,16``."""
    if text.strip() == "exact":
        return None
    values = int_list(text)
    if any(v < 1 for v in values):
        raise argparse.ArgumentTypeError(
            f"expected 'exact' or positive integers per level like 64,16, got {text!r}"
        )
    return values


def output_folder(text: str) -> Path:
    """A folder to write into: created (with parents) if missing; refused if it is a file or
    cannot be created, with the reason."""
    path = Path(text)
    if path.exists() and not path.is_dir():
        raise argparse.ArgumentTypeError(f"{path} exists and is not a folder")
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise argparse.ArgumentTypeError(f"cannot create the folder {path}: {err.strerror}") from None
    return path


class MissingInputError(UserError, FileNotFoundError):
    """An input named on the command line does not exist: a :class:`UserError` (one line, exit
    code 2 under :func:`run`) that is also a ``FileNotFoundError`` for callers of ``main``."""


def _fail(parser: argparse.ArgumentParser | None, message: str, *, missing: bool = False) -> NoReturn:
    """``parser.error(message)`` (one line, exit 2), or without a parser a :class:`UserError`
    (:class:`MissingInputError` when ``missing``)."""
    if parser is not None:
        parser.error(message)
    raise (MissingInputError if missing else UserError)(message)


def check_device(parser: argparse.ArgumentParser | None, text: str | None, flag: str = "--device"):
    """The ``torch.device`` that ``text`` names, checked after parsing (``None``: CUDA if present).

    Refused with one line and exit code 2 (``parser.error``): a name torch does not know
    (``gpu``), ``cuda`` without CUDA, a CUDA index beyond the devices present, ``mps`` without
    MPS. Checked after ``parse_args`` rather than as an argparse type, so that documented
    commands naming ``cuda`` still parse on a CPU-only machine.

    Args:
        parser: the script's parser (its ``error`` reports); None raises :class:`UserError`.
        text: the value given, e.g. ``"cpu"``, ``"cuda"``, ``"cuda:1"``; None or ``""`` picks.
        flag: the option's name in the message.

    Returns:
        ``torch.device``.
    """
    import torch

    if not text:
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(text)
    except (RuntimeError, ValueError, TypeError):
        _fail(parser, f"{flag} {text!r}: not a device; use cpu, cuda or cuda:N")
    if device.type == "cuda":
        if not torch.cuda.is_available():
            _fail(parser, f"{flag} {text}: CUDA is not available on this machine; use {flag} cpu")
        if device.index is not None and device.index >= torch.cuda.device_count():
            _fail(parser, f"{flag} {text}: this machine has {torch.cuda.device_count()} CUDA device(s), "
                  f"numbered from 0")
    elif device.type == "mps":
        if not torch.backends.mps.is_available():
            _fail(parser, f"{flag} {text}: MPS is not available on this machine; use {flag} cpu")
    elif device.type != "cpu":
        _fail(parser, f"{flag} {text}: unsupported device type {device.type!r}; use cpu, cuda or cuda:N")
    return device


def _looks_binary(path: Path) -> bool:
    with open(path, "rb") as f:
        head = f.read(8192)
    if b"\0" in head:
        return True
    try:
        head.decode("utf-8")
    except UnicodeDecodeError as err:  # a multi-byte character cut at the end of the block is fine
        return err.start < len(head) - 3
    return False


def check_data(
    parser: argparse.ArgumentParser | None,
    flag: str,
    value: str | os.PathLike | None,
    *,
    expect: str = "any",
    what: str = "",
    suffixes: tuple[str, ...] = (),
    text: bool = False,
    hub: bool = True,
) -> str | Path | None:
    """Check a data argument after parsing: a Hub name, or a local path of the right form.

    A value that does not exist locally but reads as ``owner/name`` is returned as a Hub name
    (loaded later). A local path is refused (one line, exit code 2) when it is missing, an empty
    file or an empty folder, a folder where a file is expected (or the reverse), a file of
    another kind than ``suffixes``, or binary where text is expected.

    Args:
        parser: the script's parser (its ``error`` reports); None raises :class:`UserError`.
        flag: the option, e.g. ``"--data"``.
        value: what was given (None passes through).
        expect: ``"file"``, ``"folder"`` or ``"any"``.
        what: the accepted forms, for the messages (e.g. ``"a UTF-8 .txt file"``).
        suffixes: accepted file suffixes (lower case, with the dot); empty: any.
        text: the file must be UTF-8 text.
        hub: whether a Hugging Face Hub dataset name is accepted.

    Returns:
        The Hub name (``str``), the local ``Path``, or None.
    """
    if value is None:
        return None
    path = Path(value)
    forms = what or {"file": "a file", "folder": "a folder"}.get(expect, "a file or folder")
    if not path.exists():
        if hub and is_hub_name(str(value)):
            return str(value)
        also = " or a Hugging Face Hub dataset name (owner/name)" if hub and "Hub" not in forms else ""
        _fail(parser, f"{flag} {value}: no such file or folder; expected {forms}{also}", missing=True)
    if path.is_dir():
        if expect == "file":
            _fail(parser, f"{flag} {value} is a folder; expected {forms}")
        if not any(not p.name.startswith(".") for p in path.iterdir()):
            _fail(parser, f"{flag} {value} is an empty folder; expected {forms}")
        return path
    if expect == "folder":
        _fail(parser, f"{flag} {value} is a file; expected {forms}")
    if suffixes and path.suffix.lower() not in suffixes:
        _fail(parser, f"{flag} {value}: a {path.suffix or 'suffix-less'} file; expected {forms}")
    try:
        size = path.stat().st_size
        if size == 0:
            _fail(parser, f"{flag} {value} is an empty file; expected {forms}")
        if text and _looks_binary(path):
            _fail(parser, f"{flag} {value} is binary, not UTF-8 text; expected {forms}")
    except OSError as err:
        _fail(parser, f"{flag} {value}: cannot be read ({err.strerror})")
    return path


def check_output_folder(parser: argparse.ArgumentParser | None, flag: str, value: str | os.PathLike) -> Path:
    """An output folder checked after parsing: created if missing, refused (one line, exit 2)
    when it is a file or cannot be created. Returns it as a ``Path``."""
    try:
        return output_folder(str(value))
    except argparse.ArgumentTypeError as err:
        _fail(parser, f"{flag} {err}")


def add_debug_argument(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    """Add ``--debug``: show the traceback of a user error (also ``FRACTALKIT_DEBUG=1``)."""
    parser.add_argument(
        "--debug", action="store_true",
        help=f"show full tracebacks for input errors (or set {DEBUG_ENV}=1)",
    )
    return parser


#: errors that mean "the inputs are wrong" (missing/corrupt files, bad values, wrong checkpoint)
#: (FolderInUseError: another process writes the run folder; the message names it)
USER_ERRORS: tuple[type[BaseException], ...] = (UserError, ValueError, OSError, FolderInUseError)


def run(main: Callable[..., Any], argv: list[str] | None = None) -> Any:
    """Call ``main(argv)``; a user error prints ``<script>: error: <message>`` and exits 2.

    A run that fails on its own (a non-finite loss: ``FloatingPointError``) prints
    ``<script>: stopped: <message>`` and exits 1.

    With ``--debug`` in the arguments or ``FRACTALKIT_DEBUG=1`` the traceback is shown instead.
    Other exceptions (bugs) propagate with their traceback as usual.

    Args:
        main: the script's main function, taking an argument list.
        argv: the arguments (default ``sys.argv[1:]``).

    Returns:
        What ``main`` returns.
    """
    argv = sys.argv[1:] if argv is None else argv
    debug = "--debug" in argv or os.environ.get(DEBUG_ENV, "") not in ("", "0")
    try:
        return main(argv)
    except USER_ERRORS as err:
        if debug:
            raise
        prog = Path(sys.argv[0]).name or "fractalkit"
        message = " ".join(str(err).split()) or type(err).__name__
        print(f"{prog}: error: {message} (run with --debug for the traceback)", file=sys.stderr)
        sys.exit(2)
    except FloatingPointError as err:  # e.g. training.NonFiniteLoss: the run itself failed
        if debug:
            raise
        print(f"{Path(sys.argv[0]).name or 'fractalkit'}: stopped: {err}", file=sys.stderr)
        sys.exit(1)
    except KeyboardInterrupt:
        if debug:
            raise
        print("interrupted", file=sys.stderr)
        sys.exit(130)
