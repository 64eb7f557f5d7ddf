"""What a contract check returns, and what it raises when the contract is broken.

Every ``check_*`` function of :mod:`fractalkit.testing` returns what it measured (a
:class:`CheckResult`, or a :class:`~fractalkit.testing.stats.ChiSquare` for the sampler checks)
and raises :class:`ContractError` (an ``AssertionError``, so pytest reports a failed test) whose
message names the check, the figure, the tolerance and what the failure usually means.

A check that cannot decide raises :class:`InconclusiveCheck` instead (not an ``AssertionError``):
the model is so peaked that the test has no power (too few chi-square cells, two seeds that
must draw the same samples), which says nothing against the component. :func:`~fractalkit.testing.run_all`
records such checks as :class:`CheckResult` entries with ``inconclusive=True`` and goes on.
"""

from __future__ import annotations

from dataclasses import dataclass

__all__ = [
    "ALPHA",
    "CheckResult",
    "ContractError",
    "ContractFailures",
    "InconclusiveCheck",
    "fail",
    "inconclusive",
]

ALPHA = 1e-3
"""Significance level of the sampler checks: a correct sampler fails for about 1 seed in 1,000."""


class ContractError(AssertionError):
    """A model broke a contract checked by :mod:`fractalkit.testing` (the message says how)."""


class ContractFailures(ContractError):
    """Several checks failed: what :func:`~fractalkit.testing.run_all` raises with ``collect=True``.

    Attributes:
        failures: ``{check name: the exception it raised}`` (a :class:`ContractError`, or any
            other exception a check crashed with), in the order the checks ran.
        results: ``{check name: result}`` of every check, the failed ones holding their
            exception, as ``run_all`` would have returned them.
    """

    def __init__(self, message: str, failures: dict[str, BaseException], results: dict) -> None:
        super().__init__(message)
        self.failures = failures
        self.results = results


class InconclusiveCheck(Exception):
    """A check had too little statistical power to decide (a peaked model, too few samples).

    Not a :class:`ContractError` and not an ``AssertionError``: it says nothing against the
    component. Draw more samples, lower ``tiny_fractal``'s ``scale`` or the guidance, or use a
    model with more configurations.

    Attributes:
        check: the check's name.
        reason: what was measured, in words.
    """

    def __init__(self, check: str, reason: str) -> None:
        super().__init__(f"{check} inconclusive: {reason}")
        self.check = check
        self.reason = reason


@dataclass(frozen=True)
class CheckResult:
    """What a check measured.

    Attributes:
        check: the check's name.
        figure: the worst value measured (e.g. the largest ``|sum p - 1|``).
        tolerance: the bound ``figure`` had to stay within.
        detail: per-case figures, in words.
        inconclusive: True when the check could not decide (see :class:`InconclusiveCheck`);
            ``detail`` then says why.
    """

    check: str
    figure: float
    tolerance: float
    detail: str = ""
    inconclusive: bool = False


def fail(check: str, what: str, figure: float, tolerance: str, meaning: str) -> ContractError:
    """The error a check raises: ``"<check> failed: <what>: <figure> (tolerance ...). Likely
    cause: <meaning>"``."""
    return ContractError(
        f"{check} failed: {what}: {figure:.3g} (tolerance {tolerance}). Likely cause: {meaning}"
    )


def inconclusive(check: str, what: str, figure: float, needed: str, advice: str) -> InconclusiveCheck:
    """The exception a check raises when it lacks power: ``"<check> inconclusive: <what>:
    <figure> (needed ...); <advice>"``."""
    return InconclusiveCheck(check, f"{what}: {figure:.3g} (needed {needed}); {advice}")
