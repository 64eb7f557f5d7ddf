"""Decoding checks: KV-cache equivalence, seeded sampling, the progress callback and completion
keeping its known elements.

Shape letters: N instances, E elements, V values.
"""

from __future__ import annotations

import copy
import itertools
from collections.abc import Sequence
from typing import Any

import torch
from torch import Tensor

from fractalkit.fractal import Fractal
from fractalkit.protocol import Progress
from fractalkit.testing.conditions import batch_condition, random_conditions
from fractalkit.testing.report import ALPHA, CheckResult, ContractError, fail, inconclusive
from fractalkit.testing.support import check_model, float64_copy, random_data

__all__ = ["check_callback", "check_completion", "check_kv_cache", "check_seeded_sampling"]


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
    c: Any = None,
    *,
    y: Tensor | None = None,
    conditions: Sequence[Any] | None = None,
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
        x: data (default: random, from ``seed``).
        c: the condition for the N instances (any the conditioner takes); default: random
            example conditions for a conditional model (see
            :func:`~fractalkit.testing.check_normalisation` for ``conditions``).
        y: int64 ``[N]`` labels, the class-label spelling of ``c``.
        orders: the order spec for the step-by-step path.
        atol: bound on the logits' and totals' difference.
        num_instances, seed, sample_seed: default data and the sampling seed.

    Returns:
        :class:`CheckResult` with the largest difference between the cached and uncached paths.

    Raises:
        ContractError: the paths differ, or the samples do.
    """
    check_model(model, "check_kv_cache")
    c = batch_condition(c, y, "check_kv_cache")
    if x is None:
        x = random_data(model, num_instances, seed=seed)
        if c is None:
            c = random_conditions(model, num_instances, seed=seed + 1, conditions=conditions)
    results = {}
    for kv in (True, False):
        model64 = float64_copy(model)
        calls = _record_leaf_logits(model64)
        total = model64.stepwise_log_prob(x, c, orders=orders, kv_cache=kv)
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
            raise fail(
                "check_kv_cache", f"leaf call {step}: largest |cached - uncached| logit", diff,
                f"{atol:g}", "the cache drifts: keys/values cached at earlier steps differ from "
                "a recomputation of the prefix (stale positions, a missing norm, or a cache "
                "written before the value was decided)",
            )
    diff = float((cached - plain).abs().max()) if cached.numel() else 0.0
    worst = max(worst, diff)
    if not diff <= atol:
        raise fail("check_kv_cache", "largest |cached - uncached| step-by-step log_prob", diff,
                    f"{atol:g}", "the cache drifts")
    with torch.no_grad():
        lp = float64_copy(model).log_prob(x, c, orders=orders).value
    diff = float((lp - cached).abs().max()) if lp.numel() else 0.0
    if not diff <= 1e-9:
        raise fail("check_kv_cache", "largest |log_prob - cached step-by-step log_prob|", diff,
                    "1e-09", "the cached decoding path scores differently from log_prob")
    _same_samples_without_cache(model, c, x.shape[0], sample_seed, "check_kv_cache")
    return CheckResult("check_kv_cache", worst, atol)


def _same_samples_without_cache(model: Fractal, c: Any, n: int, seed: int, check: str) -> None:
    """Raise unless ``kv_cache=True`` and ``False`` draw the same samples from one seed."""
    a = model.sample(n, c, generator=torch.Generator().manual_seed(seed), kv_cache=True)
    b = model.sample(n, c, generator=torch.Generator().manual_seed(seed), kv_cache=False)
    if not torch.equal(a, b):
        raise fail(
            check, "fraction of sampled elements that differ between kv_cache=True and False "
            "(same seed)", float((a != b).double().mean()), "0",
            "the cache changes the logits, or the two paths draw random numbers differently",
        )


def check_seeded_sampling(
    model: Fractal,
    c: Any = None,
    *,
    y: Tensor | None = None,
    conditions: Sequence[Any] | None = None,
    num_samples: int = 8,
    seed: int = 5,
) -> CheckResult:
    """Samples are int64 ``[N, *event_shape]`` in ``[0, V)``; the same seed gives the same
    samples, another seed other samples, and ``kv_cache=False`` the same samples again.

    Args:
        model: any :class:`fractalkit.Fractal`.
        c: the condition for ``num_samples`` instances (default: random example conditions
            for a conditional model).
        y: int64 labels ``[num_samples]``, the class-label spelling of ``c``.
        conditions: the example conditions the default draws from.
        num_samples, seed: the draw.

    Returns:
        :class:`CheckResult` (figure: fraction of elements that differ between two seeds).

    Raises:
        ContractError: wrong dtype, shape or range, sampling not reproducible from a seed, or
            five seeds drawing the same samples where the model makes that unlikely.
        InconclusiveCheck: five seeds drew the same samples and the model gives them a
            probability above ``ALPHA`` (too peaked a model for the check to have power).
    """
    check_model(model, "check_seeded_sampling")
    c = batch_condition(c, y, "check_seeded_sampling")
    if c is None:
        c = random_conditions(model, num_samples, seed=1, conditions=conditions)

    def draw(s: int) -> Tensor:
        return model.sample(num_samples, c, generator=torch.Generator().manual_seed(s))

    a, b, other = draw(seed), draw(seed), draw(seed + 1)
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
        raise fail(
            "check_seeded_sampling", "fraction of elements that differ between two draws with "
            "the same seed", float((a != b).double().mean()), "0",
            "a component draws from torch's global random state instead of the generator passed "
            "down (use fractalkit.sampling.rng helpers with ctx.generator)",
        )
    changed = float((a != other).double().mean())
    for extra in range(2, 5):  # a peaked model may repeat itself once: try more seeds
        if changed > 0:
            break
        changed = float((a != draw(seed + extra)).double().mean())
    if changed == 0:
        # Every seed drew the same samples. A model peaked enough does that by chance: the
        # probability of drawing ``a`` again is prod_i p(a_i | c_i); only if that is small is a
        # sampler that ignores its generator the likely cause.
        with torch.no_grad():
            repeat = float(float64_copy(model).log_prob(a, c).value.sum().exp())
        if repeat > ALPHA:
            raise inconclusive(
                "check_seeded_sampling", "five seeds drew the same samples, and the model gives "
                "them together the probability", repeat, f"<= {ALPHA:g} for the test to have power",
                "the model is too peaked to tell whether sampling follows its generator: use a "
                "less peaked model (a smaller tiny_fractal scale) or more samples (num_samples)",
            )
        raise fail(
            "check_seeded_sampling", "fraction of elements that differ between five seeds "
            f"(the model gives these samples together the probability {repeat:.3g})",
            changed, "> 0", "sampling ignores its generator (a component decodes "
            "deterministically, e.g. an argmax, or draws from a fixed generator of its own)",
        )
    _same_samples_without_cache(model, c, num_samples, seed, "check_seeded_sampling")
    return CheckResult("check_seeded_sampling", changed, 0.0)


def check_callback(
    model: Fractal,
    c: Any = None,
    *,
    y: Tensor | None = None,
    conditions: Sequence[Any] | None = None,
    num_samples: int = 4,
    seed: int = 0,
    **options: Any,
) -> CheckResult:
    """The sampling callback runs after every top-level step with a growing canvas.

    Checks: at least one call; steps numbered ``1..num_steps``; ``decided`` never shrinks and
    is all True at the end; decided elements never change afterwards; the last canvas is the
    returned sample. ``options`` (e.g. ``guidance=2.0, guidance_schedule="linear"``) go to
    ``sample``; ``c``, ``y`` and ``conditions`` as in :func:`check_seeded_sampling`.

    Returns:
        :class:`CheckResult` (figure: number of calls).

    Raises:
        ContractError: the callback is never called or reports an inconsistent progress.
    """
    check_model(model, "check_callback")
    c = batch_condition(c, y, "check_callback")
    if c is None:
        c = random_conditions(model, num_samples, seed=1, conditions=conditions)
    seen: list[Progress] = []
    out = model.sample(
        num_samples, c, generator=torch.Generator().manual_seed(seed),
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


def check_completion(
    model: Fractal,
    x: Tensor | None = None,
    c: Any = None,
    *,
    y: Tensor | None = None,
    conditions: Sequence[Any] | None = None,
    fractions: Sequence[float] = (0.3, 0.8),
    num_instances: int = 6,
    seed: int = 8,
) -> CheckResult:
    """``complete`` keeps every known element, returns int64 in range, and gives ``x`` back
    unchanged when everything is known.

    Args:
        model: any :class:`fractalkit.Fractal`.
        x: data (default: random, from ``seed``).
        c: the condition for the N instances (any the conditioner takes); default: random
            example conditions for a conditional model (see
            :func:`~fractalkit.testing.check_normalisation` for ``conditions``).
        y: int64 ``[N]`` labels, the class-label spelling of ``c``.
        fractions: fractions of known elements tried (random masks, seed + 2).

    Returns:
        :class:`CheckResult` (figure: masks tried).

    Raises:
        ContractError: a known element changed, or a wrong dtype, shape or range.
    """
    check_model(model, "check_completion")
    c = batch_condition(c, y, "check_completion")
    if x is None:
        x = random_data(model, num_instances, seed=seed)
        if c is None:
            c = random_conditions(model, num_instances, seed=seed + 1, conditions=conditions)
    g = torch.Generator().manual_seed(seed + 2)
    for p in fractions:
        known = torch.rand(x.shape, generator=g) < p
        out = model.complete(x, known, c, generator=torch.Generator().manual_seed(seed + 3))
        if out.shape != x.shape or out.dtype != torch.int64:
            raise ContractError(
                f"check_completion failed: got {out.dtype} {list(out.shape)}, expected int64 "
                f"{list(x.shape)}"
            )
        changed = int((out[known] != x[known]).sum())
        if changed:
            raise fail(
                "check_completion", f"known elements changed (of {int(known.sum())}, "
                f"known fraction {p})", changed, "0",
                "a level or leaf samples over known elements instead of keeping them",
            )
        if out.numel() and (int(out.min()) < 0 or int(out.max()) >= model.num_values):
            raise ContractError(f"check_completion failed: values outside [0, {model.num_values})")
    everything = model.complete(x, torch.ones_like(x, dtype=torch.bool), c)
    if not torch.equal(everything, x):
        raise ContractError("check_completion failed: with every element known, x came back changed")
    return CheckResult("check_completion", float(len(fractions) + 1), 0.0)
