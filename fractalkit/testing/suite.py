"""Run every relevant contract check at once: on a model, or on small models built around one
user component (a level config, a leaf config or a partitioner).

Shape letters: C = V**E configurations.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import Any

import torch

from fractalkit.conditioners import ConditionerConfig
from fractalkit.config import ComponentConfig
from fractalkit.fractal import Fractal
from fractalkit.leaves import CategoricalLeafConfig
from fractalkit.levels import ARLevelConfig
from fractalkit.partition import Partitioner, SequenceChunks
from fractalkit.testing.conditions import conditional, example_conditions, one_condition
from fractalkit.testing.decoding import (
    check_callback,
    check_completion,
    check_kv_cache,
    check_seeded_sampling,
)
from fractalkit.testing.dropout import check_condition_dropout
from fractalkit.testing.files import check_config_round_trip, check_save_load
from fractalkit.testing.likelihood import (
    check_condition_reaches_model,
    check_decomposition,
    check_normalisation,
    check_orders_reach_levels,
    is_bound,
)
from fractalkit.testing.report import (
    CheckResult,
    ContractError,
    ContractFailures,
    InconclusiveCheck,
)
from fractalkit.testing.samplers import check_completion_law, check_sampler, partial_prefix_known
from fractalkit.testing.support import (
    MAX_ENUMERABLE,
    check_model,
    enumerable,
    fixed_orders,
    partitioners,
    roughen,
    uses_orders,
)

__all__ = ["CHECKS", "check_component", "run_all", "tiny_fractal"]

CONDITIONER_SHRINK = 0.5
"""Factor on a (non class-label) conditioner's roughened parameters in :func:`tiny_fractal`."""

LEVEL_CHILDREN = 4
"""Children per instance of a level under test in :func:`tiny_fractal` (a cache that goes
wrong from the third step on must be caught)."""


def _tiny_levels(
    level: ComponentConfig | None,
    leaf: ComponentConfig | None,
    partitioner: Partitioner | None,
    position: str,
    num_values: int,
) -> list[tuple[Partitioner, ComponentConfig]]:
    """The ``(partitioner, level config)`` pairs of :func:`tiny_fractal`, top first."""
    default_level = ARLevelConfig(width=16, depth=1, heads=2)
    fits = num_values ** (2 * LEVEL_CHILDREN) <= MAX_ENUMERABLE  # 8 elements enumerable
    if level is not None and position == "below":
        if partitioner is not None:
            top = partitioner
            if len(top.child_shape) != 1:
                raise ValueError(
                    "tiny_fractal: position='below' cuts the top partitioner's children into "
                    f"single elements and needs 1-D children, got {list(top.child_shape)}; build "
                    "your own two-level Fractal and pass it to run_all instead"
                )
        else:
            # Two parents (a cache must not leak from one parent's child to the next) of
            # LEVEL_CHILDREN single-element children each; one parent if the leaf's values
            # make 8 elements too many to enumerate.
            top = SequenceChunks(2 * LEVEL_CHILDREN if fits else LEVEL_CHILDREN, LEVEL_CHILDREN)
        return [(top, default_level), (SequenceChunks(top.child_numel, 1), level)]
    if partitioner is not None:
        top = partitioner
    elif level is not None:  # LEVEL_CHILDREN children of 2 elements (of 1 if V**8 is too many)
        top = SequenceChunks(2 * LEVEL_CHILDREN, 2) if fits else SequenceChunks(LEVEL_CHILDREN, 1)
    else:  # a leaf or a conditioner under test: 2 children of 2 elements
        top = SequenceChunks(4, 2)
    return [(top, level if level is not None else default_level)]


def tiny_fractal(
    level: ComponentConfig | None = None,
    leaf: ComponentConfig | None = None,
    partitioner: Partitioner | None = None,
    *,
    position: str = "top",
    num_classes: int = 2,
    num_values: int | None = None,
    seed: int = 0,
    scale: float = 0.4,
    conditioner: ConditionerConfig | None = None,
) -> Fractal:
    """A small, roughened, enumerable :class:`fractalkit.Fractal` around your component(s).

    The defaults fill in what you do not give. A level under test decides 4 children per
    instance, so a cache that goes wrong only from the third step on is caught:

    - ``position="top"``: an 8-element sequence cut into 4 children of 2 elements
      (:class:`fractalkit.SequenceChunks`) with a 2-value leaf, ``2**8 = 256`` configurations;
    - ``position="below"``: an 8-element sequence cut into 2 chunks of 4 by a default level,
      each chunk cut into 4 single elements by your level, with a 2-value leaf (256
      configurations);
    - with a leaf of your own whose values make 8 elements too many to enumerate
      (``V**8 > MAX_ENUMERABLE``): 4 single-element children at the top, one chunk of 4 below;
    - a leaf, partitioner or conditioner alone (no level): a 4-element sequence cut into 2
      children of 2 elements, with a 3-value leaf (81 configurations).

    The default level is a one-block :class:`fractalkit.ARLevelConfig` (width 16, 2 heads), the
    default leaf a :class:`fractalkit.CategoricalLeafConfig` with ``num_values`` values.

    Args:
        level: your level config; ``position="top"`` puts it at the top (it reads the class
            condition), ``"below"`` under a default AR level (it reads a parent's condition).
        leaf: your leaf config (its ``num_values`` must keep V**E small).
        partitioner: your partitioner, at the top; its ``event_shape`` must be small.
        position: ``"top"`` or ``"below"`` (where ``level`` goes).
        num_classes: K (2 by default, so guidance and class conditions are checked); ignored
            when ``conditioner`` is given.
        num_values: V of the default leaf (default: 2 around a level under test with the
            default partitioners, else 3).
        seed, scale: the parameter noise of :func:`~fractalkit.testing.support.roughen`.
        conditioner: your (or a built-in) conditioner config, e.g. :class:`fractalkit.Vector`
            ``(2)``; its parameters are roughened with the rest (default: ``ClassLabel`` with
            ``num_classes``).

    Returns:
        A float32 model in eval mode.
    """
    if position not in ("top", "below"):
        raise ValueError(f"tiny_fractal: position must be 'top' or 'below', got {position!r}")
    if leaf is None:
        leaf = CategoricalLeafConfig(
            num_values=num_values or (2 if level is not None and partitioner is None else 3)
        )
    levels = _tiny_levels(level, leaf, partitioner, position, int(getattr(leaf, "num_values", 2)))
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        if conditioner is not None:
            model = Fractal(levels, leaf, conditioner=conditioner)
        else:
            model = Fractal(levels, leaf, num_classes=num_classes, label_drop=0.1)
    roughen(model, seed=seed, scale=scale)
    own = model._modules.get("conditioner")
    if own is not None:
        # A roughened conditioner's network (an MLP, an encoder) amplifies the noise into
        # condition vectors several times larger than a class embedding's, so guidance makes
        # the law too peaked for the chi-square to have cells: shrink its weights back.
        with torch.no_grad():
            for p in own.parameters():
                p.mul_(CONDITIONER_SHRINK)
    return model.eval()


CHECKS: tuple[str, ...] = (
    "normalisation",
    "condition_reaches_model",
    "condition_dropout",
    "decomposition",
    "orders_reach_levels",
    "kv_cache",
    "seeded_sampling",
    "callback",
    "completion",
    "sampler",
    "sampler_temperature",
    "sampler_guidance",
    "sampler_null",
    "completion_law",
    "completion_law_partial",
    "config_round_trip",
    "save_load",
)
"""The names of :func:`run_all`'s checks, in the order it runs them (the keys of its result,
and what ``skip`` takes)."""


def run_all(
    model: Fractal,
    *,
    num_samples: int = 4000,
    seed: int = 0,
    label: int | None = None,
    skip: Sequence[str] = (),
    conditions: Sequence[Any] | None = None,
    condition: Any = None,
    guidance: float = 3.0,
    collect: bool = False,
) -> dict[str, Any]:
    """Run every check of :data:`CHECKS` that applies to ``model``; raise on the first failure
    (or, with ``collect=True``, on all of them at the end).

    Always: decomposition, KV-cache equivalence, seeded sampling, the callback (with a linear
    guidance schedule on a conditional model), completion keeps known elements, config and
    save/load round trips, each under random example conditions on a conditional model. On an
    enumerable support (C <= 4096): normalisation (for the null and every example condition),
    and for an exact (not bound) model the sampler at temperature 1, at temperature 0.7, with
    guidance 3 on the linear schedule (conditional models), for the null condition,
    exact-prefix completion (whole top-level children known) and, when a top-level child has
    several elements, completion with a top-level child known in part (so the levels below
    and the leaf decode partially known instances), each by chi-square. With an order-taking
    level: ``log_prob`` depends on the order. With a conditioner: the condition reaches the
    model (two or more example conditions) and condition dropout substitutes the null
    condition at its rate.

    A check without the statistical power to decide (a peaked model: too few chi-square cells,
    every seed drawing the same samples) raises :class:`~fractalkit.testing.InconclusiveCheck`;
    ``run_all`` records it as a :class:`~fractalkit.testing.CheckResult` with
    ``inconclusive=True`` (its ``detail`` says why) and goes on: it is no failure.

    Args:
        model: any :class:`fractalkit.Fractal` (sampled as given, scored in float64).
        num_samples: draws per chi-square test.
        seed: sampling seed.
        label: the class the chi-square tests sample (the class-label spelling of
            ``condition``).
        skip: names of checks not to run (from :data:`CHECKS`).
        conditions: example conditions, each for one instance in the conditioner's batched
            form (see :mod:`fractalkit.testing.conditions`); default: every class label, or a
            few vectors/sequences for :class:`fractalkit.Vector`/:class:`fractalkit.Sequence`.
            A user conditioner must give them.
        condition: the condition (for one instance) the chi-square tests sample; default: the
            second example condition (label 1 for class labels), or the only one.
        guidance: the scale of the guided checks (callback and sampler, linear schedule); a
            smaller one keeps a peaked model's guided law testable.
        collect: run every check even after a failure, then raise one
            :class:`~fractalkit.testing.ContractFailures` naming every failed check (its
            ``failures`` and ``results`` hold the details); a check that crashes with another
            exception counts as failed too.

    Returns:
        ``{check name: result}`` for the checks that ran, with a ``"skipped"`` entry naming
        the ones that did not apply and why.

    Raises:
        ContractError: from the first check that fails (``collect=False``).
        ContractFailures: every failure, after all checks ran (``collect=True``).
        ValueError: the model is in training mode, or ``skip`` names an unknown check.
    """
    check_model(model, "run_all")
    if model.training:
        raise ValueError(
            "run_all: the model is in training mode; call model.eval() first (dropout would make "
            "the sampler's law differ from the likelihood's)"
        )
    unknown = sorted(set(skip) - set(CHECKS))
    if unknown:
        raise ValueError(f"run_all: unknown check names {unknown}; known: {list(CHECKS)}")
    cond = conditional(model)
    examples = example_conditions(model, conditions, "run_all")
    c = one_condition(model, condition, label, "run_all")
    if c is None and cond:
        c = examples[min(1, len(examples) - 1)]
    has_null = cond and model.conditioner.has_null
    ex = {"conditions": examples}
    small = enumerable(model)
    bound = is_bound(model, c)
    exact = small and not bound
    chi = {"num_samples": num_samples, "seed": seed}
    guided = {"guidance": guidance, "guidance_schedule": "linear"} if has_null else {}
    orders = fixed_orders(model, seed=21)  # the sampler checks' default orders
    partial = partial_prefix_known(model, orders) if small else None
    # A level with one child has one order: there is nothing for an order to change.
    ordered = any(
        flag and p.num_children > 1
        for flag, p in zip(uses_orders(model), partitioners(model), strict=True)
    )
    plan: dict[str, tuple[bool, str, Callable[[], Any]]] = {
        "normalisation": (small, "support too large",
                          lambda: check_normalisation(model, conditions=examples)),
        "condition_reaches_model": (
            cond and small and not bound and len(examples) >= 2,
            "unconditional, support too large, a bound, or fewer than 2 example conditions",
            lambda: check_condition_reaches_model(model, conditions=examples),
        ),
        "condition_dropout": (has_null, "unconditional or no null condition",
                              lambda: check_condition_dropout(model, conditions=examples, seed=seed)),
        "decomposition": (True, "", lambda: check_decomposition(model, **ex)),
        "orders_reach_levels": (
            ordered, "no order-taking level with two or more children",
            lambda: check_orders_reach_levels(model, **ex),
        ),
        "kv_cache": (True, "", lambda: check_kv_cache(model, **ex)),
        "seeded_sampling": (True, "", lambda: check_seeded_sampling(model, **ex)),
        "callback": (True, "", lambda: check_callback(model, **ex, **guided)),
        "completion": (True, "", lambda: check_completion(model, **ex)),
        "sampler": (exact, "support too large or a bound", lambda: check_sampler(model, c, **chi)),
        "sampler_temperature": (exact, "support too large or a bound",
                                lambda: check_sampler(model, c, temperature=0.7, **chi)),
        "sampler_guidance": (exact and has_null,
                             "support too large, a bound, or no null condition to guide with",
                             lambda: check_sampler(model, c, **guided, **chi)),
        "sampler_null": (exact and has_null, "support too large, a bound, or no null condition",
                         lambda: check_sampler(model, None, **chi)),
        "completion_law": (exact, "support too large or a bound",
                           lambda: check_completion_law(model, None, c, **chi)),
        "completion_law_partial": (
            exact and partial is not None,
            "support too large, a bound, or single-element top-level children",
            lambda: check_completion_law(model, partial, c, orders=orders, **chi),
        ),
        "config_round_trip": (True, "", lambda: check_config_round_trip(model)),
        "save_load": (True, "", lambda: check_save_load(model, **ex)),
    }
    assert tuple(plan) == CHECKS, "run_all's plan and CHECKS must list the same checks"
    results: dict[str, Any] = {}
    skipped: dict[str, str] = {}
    failures: dict[str, BaseException] = {}
    for name, (applies, why, run) in plan.items():
        if name in skip:
            skipped[name] = "skipped by the caller"
        elif not applies:
            skipped[name] = why
        else:
            try:
                results[name] = run()
            except InconclusiveCheck as err:
                results[name] = CheckResult(err.check, math.nan, math.nan, err.reason, inconclusive=True)
            except Exception as err:
                if not collect:
                    raise
                results[name] = failures[name] = err
    results["skipped"] = skipped
    if failures:
        raise ContractFailures(_failure_report(failures), failures, results)
    return results


def _failure_report(failures: dict[str, BaseException]) -> str:
    """One line per failed check: ``"<name>: <message>"`` (crashes name their exception type)."""
    lines = [f"{len(failures)} check(s) failed:"]
    for name, err in failures.items():
        kind = "" if isinstance(err, ContractError) else f"crashed with {type(err).__name__}: "
        lines.append(f"- {name}: {kind}{err}")
    return "\n".join(lines)


def check_component(
    level: ComponentConfig | None = None,
    leaf: ComponentConfig | None = None,
    partitioner: Partitioner | None = None,
    *,
    conditioner: ConditionerConfig | None = None,
    scale: float = 0.4,
    **kwargs: Any,
) -> dict[str, dict[str, Any]]:
    """The whole contract for one component: :func:`run_all` on the small models of
    :func:`tiny_fractal` built around it (a level both at the top and below another level).

    Args:
        level, leaf, partitioner: your component(s).
        conditioner: your conditioner config (the models are conditioned by it); give
            ``conditions=[...]`` too for a conditioner the kit has no defaults for. At least
            one of the four components.
        scale: the parameter noise of :func:`tiny_fractal` (lower it when a peaked model leaves
            the chi-square tests too few cells).
        **kwargs: passed to :func:`run_all` (``num_samples``, ``seed``, ``skip``,
            ``conditions``, ``condition``, ``guidance``, ``collect``).

    Returns:
        ``{model name: run_all result}``.

    Raises:
        ContractError: from the first check that fails (the message names the model).
        ContractFailures: with ``collect=True``, every failure of every model, keyed
            ``"<model>/<check>"``.
    """
    if level is None and leaf is None and partitioner is None and conditioner is None:
        raise ValueError(
            "check_component: give a level config, a leaf config, a partitioner or a conditioner"
        )
    models = {"top": tiny_fractal(level, leaf, partitioner, conditioner=conditioner, scale=scale)}
    if level is not None:
        models["below"] = tiny_fractal(
            level, leaf, partitioner, position="below", seed=1, conditioner=conditioner,
            scale=scale,
        )
    out: dict[str, dict[str, Any]] = {}
    failures: dict[str, BaseException] = {}
    for name, model in models.items():
        try:
            out[name] = run_all(model, **kwargs)
        except ContractFailures as err:  # collect=True: gather every model's failures
            out[name] = err.results
            failures.update({f"{name}/{check}": e for check, e in err.failures.items()})
        except AssertionError as err:
            raise type(err)(f"[model {name!r}] {err}") from err
    if failures:
        raise ContractFailures(_failure_report(failures), failures, out)
    return out
