"""The contract checks: call them from your own tests on a small model built around your level,
leaf or partitioner.

Every ``check_*`` function returns what it measured (a :class:`CheckResult`, or a
:class:`~fractalkit.testing.stats.ChiSquare` for the sampler checks) and raises
:class:`ContractError` (an ``AssertionError``, so pytest reports it as a failed test) when the
model breaks the contract. The message names the check, the figure, the tolerance and what the
failure usually means. Exactness checks run on a float64 deep copy; the model is never changed.

Shape letters: N instances, E elements of one instance, V values, C = V**E configurations.
"""

from __future__ import annotations

import copy
import itertools
import json
import math
import tempfile
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from fractalkit.fractal import Fractal
from fractalkit.sampling.options import Progress, SampleOptions
from fractalkit.testing.laws import sampling_law
from fractalkit.testing.stats import ChiSquare, chi_square
from fractalkit.testing.support import (
    check_model,
    decoding_order,
    fixed_orders,
    float64_copy,
    labels_of,
    num_configurations,
    partitioners,
    random_data,
    random_labels,
    support,
    support_index,
    uses_orders,
)

__all__ = [
    "ALPHA",
    "CheckResult",
    "ContractError",
    "check_callback",
    "check_completion",
    "check_completion_law",
    "check_config_round_trip",
    "check_decomposition",
    "check_kv_cache",
    "check_normalisation",
    "check_orders_reach_levels",
    "check_sampler",
    "check_save_load",
    "check_seeded_sampling",
    "completion_chi_square",
    "is_bound",
    "prefix_known",
    "sample_histogram",
    "sampler_chi_square",
]

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


def _fail(check: str, what: str, figure: float, tolerance: str, meaning: str) -> ContractError:
    return ContractError(
        f"{check} failed: {what}: {figure:.3g} (tolerance {tolerance}). Likely cause: {meaning}"
    )


def _labels(model: Fractal, labels: object) -> list[int | None]:
    if labels == "all":
        return [None, *range(model.num_classes)] if model.num_classes else [None]
    return list(labels)  # type: ignore[call-overload]


def _order_specs(model: Fractal, orders: object, *, seed: int) -> dict[str, object]:
    """Named order specifications: given ones, or identity plus shared random permutations."""
    if isinstance(orders, Mapping):
        return dict(orders)
    if orders is not None:
        return {"given": orders}
    return {"identity": "identity", "shared": fixed_orders(model, seed=seed)}


def is_bound(model: Fractal) -> bool:
    """Whether ``log_prob`` under fixed orders is a bound (e.g. a guiding pixel), not exact."""
    x = random_data(model, 1)
    with torch.no_grad():
        return model.log_prob(x, random_labels(model, 1), orders="identity").kind == "bound"


# ---- likelihood ---------------------------------------------------------------------------------


def check_normalisation(
    model: Fractal,
    *,
    labels: object = "all",
    orders: object = None,
    atol: float = 1e-6,
    seed: int = 11,
) -> CheckResult:
    """The probabilities of every configuration sum to 1 (exact models) or to at most 1 (bounds).

    Enumerates the support (at most :data:`~fractalkit.testing.support.MAX_ENUMERABLE`
    configurations) and sums ``exp(log_prob)`` in float64, for every label (and none) and every
    order specification. For a class-conditional model it also checks that the label reaches
    the model (classes 0 and 1 give different distributions).

    Args:
        model: any :class:`fractalkit.Fractal` with an enumerable support.
        labels: ``"all"`` (None and every class) or a list of labels (None: unconditional).
        orders: None (``"identity"`` and :func:`fixed_orders` with ``seed``), one spec, or a
            ``{name: spec}`` mapping.
        atol: bound on ``|sum - 1|`` for exact models.
        seed: seed of the shared random orders.

    Returns:
        :class:`CheckResult` with the largest ``|sum - 1|`` (exact) or the largest sum (bound).

    Raises:
        ContractError: a sum off 1 (exact), above 1 or vanishing (bound), or labels ignored.
    """
    check_model(model, "check_normalisation")
    model64 = float64_copy(model)
    xs = support(model64)
    worst, parts = 0.0, []
    bound = False
    for y in _labels(model64, labels):
        for name, spec in _order_specs(model64, orders, seed=seed).items():
            with torch.no_grad():
                lp = model64.log_prob(xs, labels_of(y, len(xs)), orders=spec)
            mass = float(lp.value.logsumexp(0).exp())
            where = f"y={y}, orders={name}"
            parts.append(f"{where}: sum={mass:.15g}")
            if lp.kind == "bound":
                bound = True
                if mass > 1 + 1e-9:
                    raise _fail(
                        "check_normalisation", f"{where}: a bound's probabilities sum to", mass,
                        "<= 1 + 1e-9", "the bound is not a bound: log p(g) + log p(x | g) "
                        "exceeds log p(x) somewhere, or a conditional is not normalised",
                    )
                if mass < 1e-3:
                    raise _fail(
                        "check_normalisation", f"{where}: a bound's probabilities sum to", mass,
                        ">= 1e-3", "the bound is vacuous: the summary's model puts almost no mass "
                        "on the summaries the data have",
                    )
                worst = max(worst, mass)
                continue
            error = abs(math.expm1(float(lp.value.logsumexp(0))))
            worst = max(worst, error)
            if not error < atol:
                raise _fail(
                    "check_normalisation", f"{where}: |sum of exp(log_prob) over all {len(xs)} "
                    f"configurations - 1| (sum = {mass:.12g})", error, f"{atol:g}",
                    "a leaf's logits are not normalised over the values, a level's conditions "
                    "leak the value being scored (future children or the child itself), or the "
                    "partitioner's split/merge is not a bijection",
                )
    if model64.num_classes >= 2 and not bound:  # the label reaches the model
        with torch.no_grad():
            per_class = [
                model64.log_prob(xs, labels_of(c, len(xs)), orders="identity").value for c in (0, 1)
            ]
        gap = float((per_class[0] - per_class[1]).abs().max())
        if not gap > 1e-3:
            raise _fail(
                "check_normalisation", "largest |log p(x | y=0) - log p(x | y=1)|", gap, "> 1e-3",
                "the class condition never reaches the model (a level drops its condition), or "
                "the model is so close to uniform that no check has power (roughen it)",
            )
    return CheckResult("check_normalisation", worst, 1e-9 if bound else atol, "; ".join(parts))


def _default_order_specs(model: Fractal, n: int) -> dict[str, object]:
    """Identity, shared random permutations, and per-instance orders at an order-taking top."""
    specs: dict[str, object] = {"identity": "identity", "shared": fixed_orders(model, seed=1)}
    if uses_orders(model)[0]:
        k = partitioners(model)[0].num_children
        g = torch.Generator().manual_seed(2)
        per_instance = torch.rand(n, k, generator=g).argsort(-1)  # [N, k]
        specs["per_instance"] = [per_instance, *fixed_orders(model, seed=3)[1:]]
    return specs


def check_decomposition(
    model: Fractal,
    x: Tensor | None = None,
    y: Tensor | None = None,
    *,
    orders: object = None,
    atol: float = 1e-9,
    kv_cache: bool = True,
    expect_kind: str | None = None,
    num_instances: int = 6,
    seed: int = 4,
) -> CheckResult:
    """Teacher-forced ``log_prob`` equals the sum of per-step log-probabilities collected along
    the sampling path (``stepwise_log_prob``, an independent implementation), same orders.

    Args:
        model: any :class:`fractalkit.Fractal` (checked in float64).
        x: int64 ``[N, *event_shape]``; default: ``num_instances`` random instances (``seed``).
        y: int64 ``[N]`` labels; default: random labels (seed + 1) for a conditional model.
        orders: None (identity, shared random and, at an order-taking top level, per-instance
            orders), one spec, or a ``{name: spec}`` mapping.
        atol: bound on ``|log_prob - stepwise|`` in nats.
        kv_cache: decode with the KV cache (the sampling default).
        expect_kind: the ``LogProb.kind`` expected (``"exact"``/``"bound"``); None accepts both.
        num_instances, seed: the default data.

    Returns:
        :class:`CheckResult` with the largest ``|log_prob - stepwise|`` in nats.

    Raises:
        ContractError: the two paths differ, or a wrong kind, shape, dtype or a value >= 0.
    """
    check_model(model, "check_decomposition")
    model64 = float64_copy(model)
    if x is None:
        x = random_data(model64, num_instances, seed=seed)
        y = random_labels(model64, num_instances, seed=seed + 1) if y is None else y
    n = x.shape[0]
    specs = _default_order_specs(model64, n) if orders is None else _order_specs(model64, orders, seed=1)
    worst, parts = 0.0, []
    for name, spec in specs.items():
        with torch.no_grad():
            lp = model64.log_prob(x, y, orders=spec)
        steps = model64.stepwise_log_prob(x, y, orders=spec, kv_cache=kv_cache)
        kinds = (expect_kind,) if expect_kind else ("exact", "bound")
        if lp.kind not in kinds:
            raise ContractError(
                f"check_decomposition failed: orders={name}: log_prob's kind is {lp.kind!r}, "
                f"expected one of {kinds}. Likely cause: fixed orders must make every level exact"
            )
        if lp.value.shape != (n,) or steps.shape != (n,):
            raise ContractError(
                f"check_decomposition failed: orders={name}: shapes {list(lp.value.shape)} and "
                f"{list(steps.shape)}, expected [{n}]. Likely cause: a level does not reduce its "
                "children's log-probabilities to one number per instance"
            )
        if lp.value.dtype != torch.float64 or steps.dtype != torch.float64:
            raise ContractError(
                f"check_decomposition failed: orders={name}: dtypes {lp.value.dtype} and "
                f"{steps.dtype} from a float64 model. Likely cause: a component accumulates in "
                "float32 or casts its output"
            )
        if not bool((lp.value < 0).all()):
            raise _fail(
                "check_decomposition", f"orders={name}: largest log_prob", float(lp.value.max()),
                "< 0", "a probability of 1 or more: logits not normalised over the values",
            )
        diff = float((lp.value - steps).abs().max()) if n else 0.0
        worst = max(worst, diff)
        parts.append(f"orders={name}: {diff:.3g}")
        if not diff <= atol:
            raise _fail(
                "check_decomposition", f"orders={name}: largest |log_prob - stepwise_log_prob| "
                "in nats", diff, f"{atol:g}",
                "the training/scoring path and the decoding path compute different conditionals: "
                "a level's teacher-forced conditions see other children than decoding does (a "
                "causal mask or order mismatch), or the decoding loop mis-accumulates log-probs",
            )
    return CheckResult("check_decomposition", worst, atol, "; ".join(parts))


def check_orders_reach_levels(
    model: Fractal,
    x: Tensor | None = None,
    y: Tensor | None = None,
    *,
    min_gap: float = 1e-6,
    num_instances: int = 6,
    seed: int = 4,
) -> CheckResult:
    """For a model with an order-taking (MAR-like) level: ``log_prob`` depends on the order.

    Otherwise a check run under fixed orders would prove little (every order would be the same).

    Returns:
        :class:`CheckResult` with the largest ``|log_prob(identity) - log_prob(other order)|``.

    Raises:
        ContractError: no level takes orders, or the orders change nothing.
    """
    check_model(model, "check_orders_reach_levels")
    model64 = float64_copy(model)
    if not any(uses_orders(model64)):
        raise ContractError(
            "check_orders_reach_levels failed: no level of this model takes an order "
            "(uses_orders is False everywhere)"
        )
    if x is None:
        x = random_data(model64, num_instances, seed=seed)
        y = random_labels(model64, num_instances, seed=seed + 1) if y is None else y
    shared = fixed_orders(model64, seed=1)
    reverse = [None if o is None else torch.arange(len(o)).flip(0) for o in shared]
    with torch.no_grad():
        a = model64.log_prob(x, y, orders="identity").value
        b = model64.log_prob(x, y, orders=shared).value
        c = model64.log_prob(x, y, orders=reverse).value
    gap = max(float((a - b).abs().max()), float((a - c).abs().max()))
    if not gap > min_gap:
        raise _fail(
            "check_orders_reach_levels", "largest change of log_prob across three orders", gap,
            f"> {min_gap:g}", "the level ignores the order it is given (it always decodes in one "
            "order), so order-dependent checks prove nothing",
        )
    return CheckResult("check_orders_reach_levels", gap, min_gap)


# ---- decoding --------------------------------------------------------------------------------


def _record_leaf_logits(model: Fractal) -> list[Tensor]:
    """Wrap the leaf's ``element_logits`` so every call's output is appended to a list."""
    leaf = model.leaf
    calls: list[Tensor] = []
    original = leaf.element_logits

    def recording(*args: Any, **kwargs: Any) -> Tensor:
        out = original(*args, **kwargs)
        calls.append(out.detach().clone())
        return out

    leaf.element_logits = recording  # an instance attribute shadows the method
    return calls


def check_kv_cache(
    model: Fractal,
    x: Tensor | None = None,
    y: Tensor | None = None,
    *,
    orders: object = "identity",
    atol: float = 1e-6,
    num_instances: int = 6,
    seed: int = 6,
    sample_seed: int = 5,
) -> CheckResult:
    """Cached and uncached decoding agree: the same leaf logits at every step, the same
    step-by-step log-likelihood (which equals ``log_prob`` to 1e-9), and the same samples from
    the same seed (``kv_cache=True`` vs ``False``).

    Args:
        model: any :class:`fractalkit.Fractal`; likelihoods in float64, samples as given.
        x, y: data (default: random, from ``seed``).
        orders: the order spec for the step-by-step path.
        atol: bound on the logits' and totals' difference.
        num_instances, seed, sample_seed: default data and the sampling seed.

    Returns:
        :class:`CheckResult` with the largest difference between the cached and uncached paths.

    Raises:
        ContractError: the paths differ, or the samples do.
    """
    check_model(model, "check_kv_cache")
    if x is None:
        x = random_data(model, num_instances, seed=seed)
        y = random_labels(model, num_instances, seed=seed + 1) if y is None else y
    results = {}
    for kv in (True, False):
        model64 = float64_copy(model)
        calls = _record_leaf_logits(model64)
        total = model64.stepwise_log_prob(x, y, orders=orders, kv_cache=kv)
        results[kv] = (total, calls)
    (cached, cached_calls), (plain, plain_calls) = results[True], results[False]
    if len(cached_calls) != len(plain_calls) or not cached_calls:
        raise ContractError(
            f"check_kv_cache failed: the leaf was called {len(cached_calls)} times with the cache "
            f"and {len(plain_calls)} without. Likely cause: the cached decoding loop takes "
            "different steps from the uncached one"
        )
    worst = 0.0
    for step, (a, b) in enumerate(zip(cached_calls, plain_calls, strict=True)):
        diff = float((a - b).abs().max()) if a.numel() else 0.0
        worst = max(worst, diff)
        if a.shape != b.shape or not diff <= atol:
            raise _fail(
                "check_kv_cache", f"leaf call {step}: largest |cached - uncached| logit", diff,
                f"{atol:g}", "the cache drifts: keys/values cached at earlier steps differ from "
                "a recomputation of the prefix (stale positions, a missing norm, or a cache "
                "written before the value was decided)",
            )
    diff = float((cached - plain).abs().max()) if cached.numel() else 0.0
    worst = max(worst, diff)
    if not diff <= atol:
        raise _fail("check_kv_cache", "largest |cached - uncached| step-by-step log_prob", diff,
                    f"{atol:g}", "the cache drifts")
    with torch.no_grad():
        lp = float64_copy(model).log_prob(x, y, orders=orders).value
    diff = float((lp - cached).abs().max()) if lp.numel() else 0.0
    if not diff <= 1e-9:
        raise _fail("check_kv_cache", "largest |log_prob - cached step-by-step log_prob|", diff,
                    "1e-09", "the cached decoding path scores differently from log_prob")
    _same_samples_without_cache(model, y, x.shape[0], sample_seed, "check_kv_cache")
    return CheckResult("check_kv_cache", worst, atol)


def _same_samples_without_cache(
    model: Fractal, y: Tensor | None, n: int, seed: int, check: str
) -> None:
    """Raise unless ``kv_cache=True`` and ``False`` draw the same samples from one seed."""
    a = model.sample(n, y, generator=torch.Generator().manual_seed(seed), kv_cache=True)
    b = model.sample(n, y, generator=torch.Generator().manual_seed(seed), kv_cache=False)
    if not torch.equal(a, b):
        raise _fail(
            check, "fraction of sampled elements that differ between kv_cache=True and False "
            "(same seed)", float((a != b).double().mean()), "0",
            "the cache changes the logits, or the two paths draw random numbers differently",
        )


def check_seeded_sampling(
    model: Fractal, y: Tensor | None = None, *, num_samples: int = 8, seed: int = 5
) -> CheckResult:
    """Samples are int64 ``[N, *event_shape]`` in ``[0, V)``; the same seed gives the same
    samples, another seed other samples, and ``kv_cache=False`` the same samples again.

    Args:
        model: any :class:`fractalkit.Fractal`.
        y: labels ``[num_samples]`` (default: random labels for a conditional model).
        num_samples, seed: the draw.

    Returns:
        :class:`CheckResult` (figure: fraction of elements that differ between two seeds).

    Raises:
        ContractError: wrong dtype, shape or range, or sampling not reproducible from a seed.
    """
    check_model(model, "check_seeded_sampling")
    if y is None:
        y = random_labels(model, num_samples, seed=1)

    def draw(s: int) -> Tensor:
        return model.sample(num_samples, y, generator=torch.Generator().manual_seed(s))

    a, b, c = draw(seed), draw(seed), draw(seed + 1)
    if a.dtype != torch.int64 or a.shape != (num_samples, *model.event_shape):
        raise ContractError(
            f"check_seeded_sampling failed: samples are {a.dtype} {list(a.shape)}, expected "
            f"torch.int64 {[num_samples, *model.event_shape]}"
        )
    if a.numel() and (int(a.min()) < 0 or int(a.max()) >= model.num_values):
        raise ContractError(
            f"check_seeded_sampling failed: samples range over [{int(a.min())}, {int(a.max())}], "
            f"expected [0, {model.num_values - 1}]"
        )
    if not torch.equal(a, b):
        raise _fail(
            "check_seeded_sampling", "fraction of elements that differ between two draws with "
            "the same seed", float((a != b).double().mean()), "0",
            "a component draws from torch's global random state instead of the generator passed "
            "down (use fractalkit.sampling.rng helpers with ctx.generator)",
        )
    changed = float((a != c).double().mean())
    if changed == 0:
        raise _fail(
            "check_seeded_sampling", "fraction of elements that differ between two seeds",
            changed, "> 0", "sampling ignores its generator (or the model is deterministic)",
        )
    _same_samples_without_cache(model, y, num_samples, seed, "check_seeded_sampling")
    return CheckResult("check_seeded_sampling", changed, 0.0)


def check_callback(
    model: Fractal, y: Tensor | None = None, *, num_samples: int = 4, seed: int = 0, **options: Any
) -> CheckResult:
    """The sampling callback runs after every top-level step with a growing canvas.

    Checks: at least one call; steps numbered ``1..num_steps``; ``decided`` never shrinks and
    is all True at the end; decided elements never change afterwards; the last canvas is the
    returned sample. ``options`` (e.g. ``guidance=2.0, guidance_schedule="linear"``) go to
    ``sample``.

    Returns:
        :class:`CheckResult` (figure: number of calls).

    Raises:
        ContractError: the callback is never called or reports an inconsistent progress.
    """
    check_model(model, "check_callback")
    if y is None:
        y = random_labels(model, num_samples, seed=1)
    seen: list[Progress] = []
    out = model.sample(
        num_samples, y, generator=torch.Generator().manual_seed(seed),
        callback=lambda p: seen.append(copy.deepcopy(p)), **options,
    )
    if not seen:
        raise ContractError(
            "check_callback failed: SampleOptions.callback was never called. Likely cause: the "
            "top level's decoding loop does not report its steps"
        )
    steps = [p.step for p in seen]
    total = seen[0].num_steps
    if steps != list(range(1, total + 1)) or any(p.num_steps != total for p in seen):
        raise ContractError(
            f"check_callback failed: steps reported {steps} of {[p.num_steps for p in seen]}, "
            f"expected 1..{total} in order"
        )
    for before, after in itertools.pairwise(seen):
        if bool((before.decided & ~after.decided).any()) or not torch.equal(
            before.canvas[before.decided], after.canvas[before.decided]
        ):
            raise ContractError(
                f"check_callback failed: at step {after.step} an element decided earlier was "
                "undone or changed"
            )
    last = seen[-1]
    if not bool(last.decided.all()) or not torch.equal(last.canvas, out):
        raise ContractError(
            "check_callback failed: after the last step the canvas is not the returned sample "
            f"({int((~last.decided).sum())} elements undecided)"
        )
    return CheckResult("check_callback", float(len(seen)), 0.0)


# ---- samplers against laws -------------------------------------------------------------------


def _sample_law(model: Fractal, y: int | None, orders: object, options: SampleOptions) -> Tensor:
    if options.steps is not None and any(s not in (None, 1) for s in options.steps):
        raise ValueError(
            "fractalkit.testing: the sampler's law is only known in exact mode (one child per "
            f"step, steps=None), got steps={options.steps}"
        )
    if is_bound(model):
        raise ValueError(
            "fractalkit.testing: this model's log_prob is a bound (a summary such as a guiding "
            "pixel is sampled, not scored exactly), so its sampling law is not exp(log_prob); "
            "pass the law yourself (law=...)"
        )
    return sampling_law(
        model, y, orders=orders, temperature=options.temperature, guidance=options.guidance,
        guidance_schedule=options.guidance_schedule, filter_threshold=options.filter_threshold,
    )


def _orders_or_default(model: Fractal, orders: object) -> object:
    """The sampler checks' default: shared random orders (seed 21), under which MAR is exact."""
    return fixed_orders(model, seed=21) if orders is None else orders


def sampler_chi_square(
    model: Fractal,
    y: int | None = None,
    *,
    num_samples: int = 4000,
    seed: int = 0,
    orders: object = None,
    law: Tensor | None = None,
    **options: Any,
) -> ChiSquare:
    """Draw ``num_samples`` and test their histogram over the support against a law.

    Args:
        model: a model with an enumerable support; sampled as given (e.g. float32).
        y: the label of every sample (None: unconditional).
        num_samples, seed: the draw.
        orders: shared orders for sampling and the law; default :func:`fixed_orders` (seed 21).
        law: float ``[C]``; default: :func:`~fractalkit.testing.laws.sampling_law` with the same
            options (computed on a float64 copy).
        **options: :class:`fractalkit.SampleOptions` fields (temperature, guidance, ...).

    Returns:
        The :class:`~fractalkit.testing.stats.ChiSquare` (p-value included); asserts nothing.
    """
    check_model(model, "sampler_chi_square")
    orders = _orders_or_default(model, orders)
    if law is None:
        law = _sample_law(model, y, orders, SampleOptions.make(None, **options))
    counts = sample_histogram(model, y, num_samples=num_samples, seed=seed, orders=orders, **options)
    return chi_square(counts, law)


def sample_histogram(
    model: Fractal,
    y: int | None = None,
    *,
    num_samples: int = 4000,
    seed: int = 0,
    orders: object = None,
    **options: Any,
) -> Tensor:
    """Counts of ``num_samples`` draws per configuration of the support: int64 ``[C]``.

    Arguments as in :func:`sampler_chi_square`; test the counts against several laws with
    :func:`~fractalkit.testing.stats.chi_square` without drawing again.
    """
    check_model(model, "sample_histogram")
    orders = _orders_or_default(model, orders)
    g = torch.Generator().manual_seed(seed)
    samples = model.sample(num_samples, labels_of(y, num_samples), generator=g, orders=orders, **options)
    return torch.bincount(support_index(samples, model), minlength=num_configurations(model))


def check_sampler(
    model: Fractal,
    y: int | None = None,
    *,
    num_samples: int = 4000,
    seed: int = 0,
    orders: object = None,
    law: Tensor | None = None,
    alpha: float = ALPHA,
    min_cells: int = 10,
    **options: Any,
) -> ChiSquare:
    """Samples follow the model's law: chi-square (small cells pooled) against
    :func:`~fractalkit.testing.laws.sampling_law`, which is ``exp(log_prob)`` at temperature 1
    without guidance, and the tempered/guided product of conditionals otherwise.

    Order-taking (MAR) levels sample in the exact mode (one child per step) under shared fixed
    orders, where their law is known. Arguments as in :func:`sampler_chi_square`.

    Args:
        alpha: the p-value must exceed this (a correct sampler fails once per 1/alpha seeds).
        min_cells: the test needs at least this many cells after pooling to have power.

    Returns:
        The :class:`~fractalkit.testing.stats.ChiSquare`.

    Raises:
        ContractError: p-value at most ``alpha``, or too few cells for the test to mean anything.
    """
    result = sampler_chi_square(
        model, y, num_samples=num_samples, seed=seed, orders=orders, law=law, **options
    )
    what = f"y={y}, options={options or 'defaults'}"
    if result.cells < min_cells:
        raise _fail(
            "check_sampler", f"{what}: cells after pooling", result.cells, f">= {min_cells}",
            "too few samples or too peaked a model for the test to have power: draw more "
            "samples or use a model with more configurations",
        )
    if not result.p_value > alpha:
        raise _fail(
            "check_sampler", f"{what}: chi-square p-value of {num_samples} samples against the "
            f"model's law (statistic {result.statistic:.1f}, {result.dof} dof)", result.p_value,
            f"> {alpha:g}", "the sampler does not draw from the distribution log_prob scores: a "
            "leaf's sampling path differs from its element_logits, temperature or guidance is "
            "applied wrongly or ignored, or decoding visits children in another order than the "
            "one given",
        )
    return result


def prefix_known(model: Fractal, orders: object = "identity", fraction: float = 0.5) -> Tensor:
    """A known-mask made of the first top-level children in decoding order: bool ``[*event_shape]``.

    Fully known top-level children decided first make completion exact for any level kind.
    """
    k = partitioners(model)[0].num_children
    count = max(1, min(k - 1, round(k * fraction)))
    numel = math.prod(model.event_shape)
    first = decoding_order(model, orders)[: count * (numel // k)]
    known = torch.zeros(numel, dtype=torch.bool)
    known[first] = True
    return known.view(model.event_shape)


def completion_chi_square(
    model: Fractal,
    known: Tensor | None = None,
    y: int | None = None,
    *,
    orders: object = None,
    law_orders: object = None,
    law: Tensor | None = None,
    num_samples: int = 4000,
    seed: int = 0,
    **options: Any,
) -> ChiSquare:
    """Complete one instance ``num_samples`` times and test the completions against the law
    restricted to the configurations that agree with the known elements.

    Args:
        model: a model with an enumerable support; sampled as given.
        known: bool ``[*event_shape]`` (default: :func:`prefix_known`); the instance is drawn
            uniformly from the support with ``seed``.
        y: the label (None: unconditional).
        orders: orders passed to ``complete`` (default :func:`fixed_orders`, seed 21).
        law_orders: orders of the law (default ``orders``); completion puts known MAR children
            first, so a non-prefix mask needs the reordered law.
        law: float ``[C]`` full law (default: :func:`sampling_law` with ``options``).
        **options: :class:`fractalkit.SampleOptions` fields.

    Returns:
        The :class:`~fractalkit.testing.stats.ChiSquare` over the consistent configurations.

    Raises:
        ContractError: a completion changed a known element.
    """
    check_model(model, "completion_chi_square")
    orders = _orders_or_default(model, orders)
    law_orders = orders if law_orders is None else law_orders
    if known is None:
        known = prefix_known(model, orders)
    if law is None:
        law = _sample_law(model, y, law_orders, SampleOptions.make(None, **options))
    xs = support(model)
    g = torch.Generator().manual_seed(seed)
    x = xs[torch.randint(len(xs), (1,), generator=g)]  # [1, *event]
    known = known.view(1, *model.event_shape)
    consistent = (xs[:, known[0]] == x[:, known[0]]).all(-1)  # [C]
    out = model.complete(
        x.expand(num_samples, *x.shape[1:]), known.expand(num_samples, *known.shape[1:]),
        labels_of(y, num_samples), generator=torch.Generator().manual_seed(seed),
        orders=orders, **options,
    )
    index = support_index(out, model)
    cell_of = torch.full((len(xs),), -1, dtype=torch.long)
    cell_of[consistent] = torch.arange(int(consistent.sum()))
    if not bool((cell_of[index] >= 0).all()):
        raise ContractError("completion_chi_square failed: a completion changed a known element")
    counts = torch.bincount(cell_of[index], minlength=int(consistent.sum()))
    return chi_square(counts, law[consistent])


def check_completion_law(
    model: Fractal,
    known: Tensor | None = None,
    y: int | None = None,
    *,
    alpha: float = ALPHA,
    **kwargs: Any,
) -> ChiSquare:
    """Completion of known elements that come first in the decoding order is an exact draw from
    the model's conditional. Arguments as in :func:`completion_chi_square`.

    Raises:
        ContractError: p-value at most ``alpha``.
    """
    result = completion_chi_square(model, known, y, **kwargs)
    if not result.p_value > alpha:
        raise _fail(
            "check_completion_law", f"y={y}: chi-square p-value of completions against the "
            f"conditional law (statistic {result.statistic:.1f}, {result.dof} dof)",
            result.p_value, f"> {alpha:g}", "completion does not condition on the known "
            "elements the way the likelihood does (known children not teacher-forced, or not "
            "placed first in the order), or the sampler itself is wrong (see check_sampler)",
        )
    return result


def check_completion(
    model: Fractal,
    x: Tensor | None = None,
    y: Tensor | None = None,
    *,
    fractions: Sequence[float] = (0.3, 0.8),
    num_instances: int = 6,
    seed: int = 8,
) -> CheckResult:
    """``complete`` keeps every known element, returns int64 in range, and gives ``x`` back
    unchanged when everything is known.

    Args:
        model: any :class:`fractalkit.Fractal`.
        x, y: data (default: random, from ``seed``).
        fractions: fractions of known elements tried (random masks, seed + 2).

    Returns:
        :class:`CheckResult` (figure: masks tried).

    Raises:
        ContractError: a known element changed, or a wrong dtype, shape or range.
    """
    check_model(model, "check_completion")
    if x is None:
        x = random_data(model, num_instances, seed=seed)
        y = random_labels(model, num_instances, seed=seed + 1) if y is None else y
    g = torch.Generator().manual_seed(seed + 2)
    for p in fractions:
        known = torch.rand(x.shape, generator=g) < p
        out = model.complete(x, known, y, generator=torch.Generator().manual_seed(seed + 3))
        if out.shape != x.shape or out.dtype != torch.int64:
            raise ContractError(
                f"check_completion failed: got {out.dtype} {list(out.shape)}, expected int64 "
                f"{list(x.shape)}"
            )
        changed = int((out[known] != x[known]).sum())
        if changed:
            raise _fail(
                "check_completion", f"known elements changed (of {int(known.sum())}, "
                f"known fraction {p})", changed, "0",
                "a level or leaf samples over known elements instead of keeping them",
            )
        if out.numel() and (int(out.min()) < 0 or int(out.max()) >= model.num_values):
            raise ContractError(f"check_completion failed: values outside [0, {model.num_values})")
    everything = model.complete(x, torch.ones_like(x, dtype=torch.bool), y)
    if not torch.equal(everything, x):
        raise ContractError("check_completion failed: with every element known, x came back changed")
    return CheckResult("check_completion", float(len(fractions) + 1), 0.0)


# ---- configuration and files ------------------------------------------------------------------


def _structure(model: Fractal) -> dict[str, tuple[tuple[int, ...], torch.dtype]]:
    return {k: (tuple(v.shape), v.dtype) for k, v in model.state_dict().items()}


def check_config_round_trip(model: Fractal) -> CheckResult:
    """``Fractal.from_config(json round trip of model.config)`` rebuilds the same structure:
    the same config and the same parameter and buffer names and shapes.

    Returns:
        :class:`CheckResult` (figure: number of tensors compared).

    Raises:
        ContractError: the config is not JSON, does not round-trip, or rebuilds another model.
    """
    check_model(model, "check_config_round_trip")
    config = model.config
    try:
        text = json.dumps(config)
    except TypeError as err:
        raise ContractError(
            f"check_config_round_trip failed: model.config is not JSON-serialisable ({err}). "
            "Likely cause: a config field holds a tensor or object; store plain numbers, "
            "strings, lists and nested configs"
        ) from err
    try:
        rebuilt = Fractal.from_config(json.loads(text))
    except ValueError as err:
        raise ContractError(
            f"check_config_round_trip failed: Fractal.from_config refused the model's own config: "
            f"{err}. Likely cause: a component's class is not registered (register_config, "
            "register_partitioner) or its config() does not give its constructor arguments"
        ) from err
    if rebuilt.config != config:
        raise ContractError(
            "check_config_round_trip failed: the rebuilt model's config differs from the original "
            f"one:\n{rebuilt.config}\nvs\n{config}"
        )
    a, b = _structure(model), _structure(rebuilt.to(next(iter(model.state_dict().values())).dtype))
    if {k: v[0] for k, v in a.items()} != {k: v[0] for k, v in b.items()}:
        missing, extra = sorted(set(a) - set(b)), sorted(set(b) - set(a))
        raise ContractError(
            "check_config_round_trip failed: the rebuilt model has other tensors: missing "
            f"{missing[:5]}, extra {extra[:5]}, or other shapes. Likely cause: build() reads "
            "something that is not in the config"
        )
    return CheckResult("check_config_round_trip", float(len(a)), 0.0)


def check_save_load(
    model: Fractal,
    x: Tensor | None = None,
    y: Tensor | None = None,
    *,
    directory: str | Path | None = None,
    num_instances: int = 4,
    seed: int = 0,
) -> CheckResult:
    """``save`` then ``Fractal.load`` gives the same tensors, the same ``log_prob`` (bitwise,
    identity orders) and the same samples from the same seed.

    Args:
        model: any :class:`fractalkit.Fractal` whose components are registered.
        x, y: data (default: random, from ``seed``).
        directory: where to write the file (default: a temporary directory, removed after).

    Returns:
        :class:`CheckResult` with the largest ``|log_prob before - after|``.

    Raises:
        ContractError: loading fails or the loaded model differs.
    """
    check_model(model, "check_save_load")
    if x is None:
        x = random_data(model, num_instances, seed=seed)
        y = random_labels(model, num_instances, seed=seed + 1) if y is None else y
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(directory or tmp) / "model.safetensors"
        model.save(path)
        try:
            loaded = Fractal.load(path).eval()
        except ValueError as err:
            raise ContractError(
                f"check_save_load failed: Fractal.load could not read the saved file: {err}. "
                "Likely cause: a component's config or partitioner is not registered, so the "
                "file cannot be rebuilt by kind (register_config / register_partitioner)"
            ) from err
    before, after = model.state_dict(), loaded.state_dict()
    if before.keys() != after.keys() or any(
        not torch.equal(before[k].cpu(), after[k].cpu()) or before[k].dtype != after[k].dtype
        for k in before
    ):
        raise ContractError(
            "check_save_load failed: the loaded model's tensors differ from the saved ones "
            f"(keys only before: {sorted(set(before) - set(after))[:5]}, only after: "
            f"{sorted(set(after) - set(before))[:5]})"
        )
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            a = model.log_prob(x, y, orders="identity").value
            b = loaded.log_prob(x, y, orders="identity").value
        diff = float((a - b).abs().max()) if a.numel() else 0.0
        if not diff == 0:
            raise _fail("check_save_load", "largest |log_prob before - after save/load|", diff, "0",
                        "the loaded model is built differently (a config field not saved)")
        n = x.shape[0]
        s1 = model.sample(n, y, generator=torch.Generator().manual_seed(seed))
        s2 = loaded.sample(n, y, generator=torch.Generator().manual_seed(seed))
    finally:
        model.train(was_training)
    if not torch.equal(s1, s2):
        raise _fail("check_save_load", "fraction of sampled elements that differ after save/load",
                    float((s1 != s2).double().mean()), "0",
                    "a sampling-relevant setting is not part of the saved config")
    return CheckResult("check_save_load", diff, 0.0)

