"""What a contract check returns, and what it raises when the contract is broken.

Every ``check_*`` function of :mod:`fractalkit.testing` returns what it measured (a
:class:`CheckResult`, or a :class:`~fractalkit.testing.stats.ChiSquare` for the sampler checks)
and raises :class:`ContractError` (an ``AssertionError``, so pytest reports a failed test) whose
message names the check, the figure, the tolerance and what the failure usually means.
"""

from __future__ import annotations

from dataclasses import dataclass

__all__ = ["ALPHA", "CheckResult", "ContractError", "fail"]

ALPHA = 1e-3
"""Significance level of the sampler checks: a correct sampler fails for about 1 seed in 1,000."""


class ContractError(AssertionError):
    """A model broke a contract checked by :mod:`fractalkit.testing` (the message says how)."""


@dataclass(frozen=True)
class CheckResult:
    """What a check measured.

    Attributes:
        check: the check's name.
        figure: the worst value measured (e.g. the largest ``|sum p - 1|``).
        tolerance: the bound ``figure`` had to stay within.
        detail: per-case figures, in words.
    """

    check: str
    figure: float
    tolerance: float
    detail: str = ""

def fail(check: str, what: str, figure: float, tolerance: str, meaning: str) -> ContractError:
    """The error a check raises: ``"<check> failed: <what>: <figure> (tolerance ...). Likely
    cause: <meaning>"``."""
    return ContractError(
        f"{check} failed: {what}: {figure:.3g} (tolerance {tolerance}). Likely cause: {meaning}"
    )
