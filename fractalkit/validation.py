"""Checks at the API boundary: finite numbers, integer types and tensors that fit a model.

Each check raises a ValueError or TypeError whose message starts with the caller's name
(``owner``) and the argument, says what was wrong and what to do; nothing is coerced.
"""

from __future__ import annotations

import contextlib
import contextvars
import hashlib
import json
import math
import numbers
import threading
from collections.abc import Callable, Iterable, Iterator, Mapping
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from fractalkit.legacy import upgrade_state_dict

__all__ = [
    "DeclaredSizeError",
    "bounded_by_file",
    "check_declared_elements",
    "check_finite_number",
    "check_finite_tensor",
    "check_integer",
    "check_integer_tensor",
    "check_log_prob",
    "check_probabilities",
    "check_state_fits",
    "checked_model_file",
    "nonfinite_tensors",
    "read_json_file",
]


def read_json_file(
    path: str | Path, *, owner: str, fix: str, error: type[Exception] = ValueError
) -> Any:
    """The parsed JSON of a file this process did not write (a config, manifest, options file).

    A file that is not JSON (garbage, a binary file, a symlink to something else, unreadable
    bytes) raises ``error`` naming the file and saying what to do, never a bare
    ``json.JSONDecodeError`` / ``UnicodeDecodeError`` from deep inside a loader.

    Args:
        path: the file.
        owner: who reads it, for the message (e.g. ``"load_checkpoint"``).
        fix: what the user should do, for the message (e.g. ``"write it again with save_pretrained"``).
        error: the exception class to raise (the caller's own error type).

    Returns:
        The parsed value (any JSON type; the caller checks its shape).
    """
    path = Path(path)
    try:
        return json.loads(path.read_bytes().decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as err:
        detail = "not UTF-8 text" if isinstance(err, UnicodeDecodeError) else str(err)
        real = f" (a link to {path.resolve()})" if path.is_symlink() else ""
        raise error(f"{owner}: {path}{real} is not valid JSON ({detail}); {fix}") from err


def check_finite_number(owner: str, name: str, value: Any, *, positive: bool = False) -> float:
    """Return ``value`` as a float after checking it is a finite real number (and > 0 if asked).

    Args:
        owner: who checks (starts the message), e.g. ``"SampleOptions"``.
        name: the argument's name.
        value: an int, float, numpy scalar or one-element tensor (bools and strings are refused).
        positive: also require ``value > 0``.

    Raises:
        TypeError: not a real number.
        ValueError: NaN, infinite, or (with ``positive``) not above 0.
    """
    try:  # ints, floats, numpy scalars, 0-dim tensors; not bools or strings
        if isinstance(value, bool | str | bytes):
            raise TypeError
        number = float(value)
    except (TypeError, ValueError, RuntimeError):
        raise TypeError(f"{owner}: {name} must be a real number, got {value!r}") from None
    if not math.isfinite(number):
        raise ValueError(f"{owner}: {name} must be finite, got {value}")
    if positive and not number > 0:
        raise ValueError(f"{owner}: {name} must be positive, got {value}")
    return number


def check_finite_tensor(owner: str, name: str, t: Tensor, *, positive: bool = False) -> None:
    """Raise a ValueError if a float tensor holds NaN or infinite entries (or, with ``positive``,
    entries <= 0). Integer tensors are always finite and pass.

    Args:
        owner: who checks; name: the argument's name.
        t: any tensor (one synchronising reduction on accelerators).
        positive: also require every entry to be above 0.
    """
    if not isinstance(t, Tensor):
        raise TypeError(f"{owner}: {name} must be a Tensor, got {type(t).__name__}")
    if not (t.dtype.is_floating_point or t.dtype.is_complex) or t.numel() == 0:
        if positive and t.numel() and not bool((t > 0).all()):
            raise ValueError(f"{owner}: {name} must be positive, got min {t.min().item()}")
        return
    finite = torch.isfinite(t)
    if not bool(finite.all()):
        bad = int((~finite).sum())
        kinds = "NaN" if bool(torch.isnan(t).any()) else "infinite"
        raise ValueError(
            f"{owner}: {name} holds {bad} non-finite ({kinds}) value(s) of {t.numel()}; "
            "check where it came from (a diverged model or a bad input)"
        )
    if positive and not bool((t > 0).all()):
        raise ValueError(f"{owner}: {name} must be positive, got min {t.min().item()}")


def check_integer(owner: str, name: str, value: Any, *, minimum: int | None = None) -> int:
    """Return ``value`` after checking it is a Python int (bools and floats refused) >= ``minimum``."""
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"{owner}: {name} must be an int, got {value!r} ({type(value).__name__})")
    if minimum is not None and value < minimum:
        raise ValueError(f"{owner}: {name} must be >= {minimum}, got {value}")
    return value


def check_probability(owner: str, name: str, value: Any) -> float:
    """``value`` as a float after checking it is a real number in ``[0, 1)`` (a dropout rate).

    Raises:
        TypeError: not a real number (strings and bools are refused, not converted).
        ValueError: NaN, infinite, or outside ``[0, 1)``.
    """
    number = check_finite_number(owner, name, value)
    if not 0 <= number < 1:
        raise ValueError(f"{owner}: {name} must lie in [0, 1), got {value!r}")
    return number


def check_count(owner: str, name: str, value: Any, minimum: int = 1) -> int:
    """``value`` as an int after checking it is an integer >= ``minimum`` (a count, a size, a
    split; Python and numpy integers pass, bools, floats and strings are refused, not converted).

    Raises:
        TypeError: not an int.
        ValueError: below ``minimum``.
    """
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise TypeError(
            f"{owner}: {name} must be an integer >= {minimum}, got {value!r} ({type(value).__name__})"
        )
    if value < minimum:
        raise ValueError(f"{owner}: {name} must be an integer >= {minimum}, got {value!r}")
    return int(value)


def check_integer_tensor(owner: str, name: str, t: Any) -> Tensor:
    """Return ``t`` after checking it is a tensor of an integer dtype (floats are not truncated).

    Raises:
        TypeError: not a tensor, or a float/bool/complex dtype.
    """
    if not isinstance(t, Tensor):
        raise TypeError(f"{owner}: {name} must be an integer tensor, got {type(t).__name__}")
    if t.dtype.is_floating_point or t.dtype.is_complex or t.dtype == torch.bool:
        raise TypeError(
            f"{owner}: {name} must be an integer tensor (e.g. torch.long), got dtype {t.dtype}; "
            "floats are not truncated silently"
        )
    return t


def check_probabilities(owner: str, logprobs: Tensor) -> None:
    """Raise a ValueError if log-probabilities a sampler is about to draw from hold NaN.

    ``logprobs`` is a ``log_softmax`` output: every entry is <= 0 or NaN (NaN when a logit was
    NaN or infinite: diverged weights, or a guidance scale so extreme that the logits overflow),
    so one sum tells: it is NaN exactly when an entry is (-inf entries, impossible values, are
    fine). One reduction and one device sync.
    """
    if bool(torch.isnan(logprobs.sum())):
        raise ValueError(
            f"{owner}: the probabilities to sample from hold NaN or infinite values (diverged "
            "weights, or a guidance scale / temperature so extreme that the logits overflow); "
            "nothing was drawn"
        )


def nonfinite_tensors(tensors: Iterable[tuple[str, Tensor]]) -> list[str]:
    """Names of the float tensors among ``(name, tensor)`` pairs that hold NaN or infinities."""
    return [
        name
        for name, t in tensors
        if isinstance(t, Tensor) and t.is_floating_point() and not bool(torch.isfinite(t).all())
    ]


def check_state_fits(
    owner: str, expected: Mapping[str, tuple[tuple[int, ...], Any]], found: Mapping[str, tuple[int, ...]]
) -> None:
    """Raise a ValueError listing the tensors of ``found`` that do not fit ``expected``.

    Args:
        owner: who checks, including the file name.
        expected: name -> (shape, anything) of what the config builds (e.g. from the meta device).
        found: name -> shape of what the file holds (read from its header, nothing allocated).
    """
    missing = sorted(set(expected) - set(found))
    unexpected = sorted(set(found) - set(expected))
    wrong = [
        f"{k}: file {list(found[k])}, config {list(expected[k][0])}"
        for k in sorted(set(expected) & set(found))
        if tuple(found[k]) != tuple(expected[k][0])
    ]
    if missing or unexpected or wrong:
        parts = []
        if missing:
            parts.append(f"missing {missing[:5]}{' ...' if len(missing) > 5 else ''}")
        if unexpected:
            parts.append(f"unexpected {unexpected[:5]}{' ...' if len(unexpected) > 5 else ''}")
        if wrong:
            parts.append(f"shapes differ ({'; '.join(wrong[:5])}{' ...' if len(wrong) > 5 else ''})")
        raise ValueError(f"{owner}: the tensors do not fit the config: {', '.join(parts)}")


def check_log_prob(owner: str, logp: Tensor, model: torch.nn.Module) -> None:
    """Raise a ValueError if a log-likelihood is NaN or +inf (never labelled exact silently).

    -inf is a legitimate value (an impossible observation); NaN or +inf are not. The message
    names the model's non-finite parameters when there are some (a diverged run's weights).
    """
    if bool((torch.isnan(logp) | (logp == math.inf)).any()):
        bad = nonfinite_tensors(model.named_parameters())
        cause = (
            f"{len(bad)} parameter tensor(s) hold NaN/inf, e.g. {bad[:3]} (a diverged run?)"
            if bad else "the inputs or an overflow in the network"
        )
        raise ValueError(f"{owner}: the log-likelihood is NaN or infinite; cause: {cause}")


class DeclaredSizeError(ValueError):
    """A file's config declares a model larger than the file's own tensors can describe
    (refused while building on the meta device, before anything proportional is allocated)."""


#: the active file budget (owner, tensors, elements) while a file's config is being built
_FILE_BUDGET: contextvars.ContextVar[tuple[str, int, int] | None] = contextvars.ContextVar(
    "fractalkit_file_budget", default=None
)

#: the smallest event (elements per instance) a file may declare whatever it holds: any real
#: model of this size loads; past it, the event may be at most this many times the file's elements
MIN_EVENT_BUDGET = 2**22
EVENT_PER_FILE_ELEMENT = 16


def check_declared_elements(what: str, numel: int) -> None:
    """Refuse a declared size (e.g. an event's element count) too large for the file being
    loaded; a no-op outside :func:`checked_model_file` (models built in code are not bounded).

    Raises:
        DeclaredSizeError: over ``max(MIN_EVENT_BUDGET, EVENT_PER_FILE_ELEMENT * elements)``,
            where ``elements`` counts the file's tensor entries.
    """
    budget = _FILE_BUDGET.get()
    if budget is None:
        return
    owner, _, elements = budget
    limit = max(MIN_EVENT_BUDGET, EVENT_PER_FILE_ELEMENT * elements)
    if numel > limit:
        raise DeclaredSizeError(
            f"{owner}: the tensors do not fit the config: it declares {what} of {numel:,} "
            f"elements, more than a file of "
            f"{elements:,} tensor elements can describe (limit {limit:,}); refused before "
            "allocating anything (a corrupt or hostile file?)"
        )


@contextlib.contextmanager
def bounded_by_file(owner: str, tensors: int, elements: int) -> Iterator[None]:
    """Build modules (on the meta device) within what a file holds: stop as soon as the build
    has registered more parameters than twice the file's tensor count (plus 64), or more
    parameter elements than twice the file's (plus 2**20), so that a declared depth or width
    costs time and memory in proportion to the file, not to the declaration.

    Parameters registered by other threads meanwhile are not counted.

    Args:
        owner: who loads and which file (starts the message).
        tensors: the number of tensors in the file's header.
        elements: the number of tensor elements in the file's header (their shapes' products).

    Raises:
        DeclaredSizeError: from inside the build, naming the declared and the held counts.
    """
    from torch.nn.modules.module import register_module_parameter_registration_hook

    thread = threading.get_ident()
    max_tensors, max_elements = 2 * tensors + 64, 2 * elements + 2**20
    seen = [0, 0]

    def count(module: torch.nn.Module, name: str, param: Tensor | None) -> None:
        if param is None or threading.get_ident() != thread:
            return
        seen[0] += 1
        seen[1] += param.numel()
        if seen[0] > max_tensors or seen[1] > max_elements:
            raise DeclaredSizeError(
                f"{owner}: the tensors do not fit the config: it declares a larger model than "
                f"the file holds: building it "
                f"passed {seen[0]:,} parameter tensors / {seen[1]:,} elements, the file holds "
                f"{tensors:,} tensors / {elements:,} elements (a depth, width or size in the "
                "config that its tensors do not have); refused before allocating it"
            )

    handle = register_module_parameter_registration_hook(count)
    token = _FILE_BUDGET.set((owner, tensors, elements))
    try:
        yield
    finally:
        _FILE_BUDGET.reset(token)
        handle.remove()


def checked_model_file(
    owner: str, path: Path, key: str, build: Callable[[dict[str, Any]], torch.nn.Module]
) -> dict[str, Any]:
    """The JSON config stored under ``key`` in a safetensors file's metadata, after checking,
    without allocating the model, that the file's tensors fit the model the config declares.

    The model is built on the meta device (shapes only, no memory) and compared with the file's
    header (names and shapes, no tensor read), so an untrusted file cannot make the caller
    allocate a model it does not contain. The build itself is bounded by the header
    (:func:`bounded_by_file`): a config declaring a depth, width or event size that the file's
    tensors cannot hold is refused while it is built, in time and memory proportional to the
    file, not to the declaration.

    Args:
        owner: who checks (e.g. ``"Fractal.load"``).
        path: the ``.safetensors`` file.
        key: the metadata entry holding the JSON config.
        build: config -> module (e.g. ``Fractal.from_config``).

    Raises:
        ValueError: unreadable header, no or non-JSON config, a config that builds nothing
            (missing key, wrong type, unknown entry), tensors that do not fit; each names ``path``.
        DeclaredSizeError: (a ValueError) the config declares more than the file holds.
    """
    from safetensors import safe_open

    try:
        with safe_open(str(path), framework="pt") as f:
            metadata = f.metadata() or {}
            shapes = {name: tuple(f.get_slice(name).get_shape()) for name in f.keys()}  # noqa: SIM118 - not a dict
    except Exception as err:  # safetensors raises its own error types for bad headers
        raise ValueError(
            f"{owner}: {path} is not a readable safetensors file (truncated or corrupt?): {err}"
        ) from err
    if key not in metadata:
        raise ValueError(
            f"{owner}: {path} has no fractalkit config in its metadata; was it written by "
            "Fractal.save?"
        )
    try:
        config = json.loads(metadata[key])
    except json.JSONDecodeError as err:
        raise ValueError(f"{owner}: {path}: its config is not valid JSON ({err})") from err
    owner_file = f"{owner}: {path}"
    elements = sum(math.prod(shape) for shape in shapes.values())
    try:
        with torch.device("meta"), bounded_by_file(owner_file, len(shapes), elements):
            skeleton = build(config)
    except DeclaredSizeError:
        raise
    except KeyError as err:
        raise ValueError(f"{owner}: {path}: its config lacks the required key {err}") from err
    except (TypeError, ValueError, AttributeError) as err:
        raise ValueError(f"{owner}: {path}: its config does not describe a model: {err}") from err
    expected = {k: (tuple(v.shape), v.dtype) for k, v in skeleton.state_dict().items()}
    check_state_fits(owner_file, expected, upgrade_state_dict(shapes))
    return config


def file_sha256(path: str | Path) -> str:
    """The SHA-256 of a file's bytes as 64 hex digits, read in 4 MiB blocks (constant memory,
    whatever the file's size: the released checkpoints are 0.75-3.4 GB)."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(1 << 22):
            h.update(block)
    return h.hexdigest()

