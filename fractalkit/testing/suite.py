"""Run every relevant contract check at once: on a model, or on small models built around one
user component (a level config, a leaf config or a partitioner).

Shape letters: C = V**E configurations.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import torch

from fractalkit.config import ComponentConfig
from fractalkit.fractal import Fractal
from fractalkit.leaves import CategoricalLeafConfig
from fractalkit.levels import ARLevelConfig
from fractalkit.partition import Partitioner, SequenceChunks
from fractalkit.testing.decoding import (
    check_callback,
    check_completion,
    check_kv_cache,
    check_seeded_sampling,
)
from fractalkit.testing.files import check_config_round_trip, check_save_load
from fractalkit.testing.likelihood import (
    check_decomposition,
    check_normalisation,
    check_orders_reach_levels,
    is_bound,
)
from fractalkit.testing.samplers import check_completion_law, check_sampler
from fractalkit.testing.support import check_model, enumerable, roughen, uses_orders

__all__ = ["check_component", "run_all", "tiny_fractal"]


def tiny_fractal(
    level: ComponentConfig | None = None,
    leaf: ComponentConfig | None = None,
    partitioner: Partitioner | None = None,
    *,
    position: str = "top",
    num_classes: int = 2,
    num_values: int = 3,
    seed: int = 0,
    scale: float = 0.4,
) -> Fractal:
    """A small, roughened, enumerable :class:`fractalkit.Fractal` around your component(s).

    The defaults fill in what you do not give: a 4-element sequence cut into 2 chunks
    (:class:`fractalkit.SequenceChunks`), a one-block :class:`fractalkit.ARLevelConfig` (width
    16, 2 heads) and a :class:`fractalkit.CategoricalLeafConfig` with ``num_values`` values:
    ``3**4 = 81`` configurations.

    Args:
        level: your level config; ``position="top"`` puts it at the top (it reads the class
            condition), ``"below"`` under a default AR level (it reads a parent's condition).
        leaf: your leaf config (its ``num_values`` must keep V**E small).
        partitioner: your partitioner, at the top; its ``event_shape`` must be small.
        position: ``"top"`` or ``"below"`` (where ``level`` goes).
        num_classes: K (2 by default, so guidance and class conditions are checked).
        num_values: V of the default leaf.
        seed, scale: the parameter noise of :func:`~fractalkit.testing.support.roughen`.

    Returns:
        A float32 model in eval mode.
    """
    if position not in ("top", "below"):
        raise ValueError(f"tiny_fractal: position must be 'top' or 'below', got {position!r}")
    default_level = ARLevelConfig(width=16, depth=1, heads=2)
    leaf = leaf if leaf is not None else CategoricalLeafConfig(num_values=num_values)
    top = partitioner if partitioner is not None else SequenceChunks(4, 2)
    if level is not None and position == "below":
        if len(top.child_shape) != 1:
            raise ValueError(
                "tiny_fractal: position='below' cuts the top partitioner's children into "
                f"single elements and needs 1-D children, got {list(top.child_shape)}; build "
                "your own two-level Fractal and pass it to run_all instead"
            )
        levels = [(top, default_level), (SequenceChunks(top.child_numel, 1), level)]
    else:
        levels = [(top, level if level is not None else default_level)]
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        model = Fractal(levels, leaf, num_classes=num_classes, label_drop=0.1)
    return roughen(model, seed=seed, scale=scale).eval()


def run_all(
    model: Fractal,
    *,
    num_samples: int = 4000,
    seed: int = 0,
    label: int | None = None,
    skip: Sequence[str] = (),
) -> dict[str, Any]:
    """Run every check that applies to ``model``; raise on the first failure.

    Always: decomposition, KV-cache equivalence, seeded sampling, the callback (with a linear
    guidance schedule on a conditional model), completion keeps known elements, config and
    save/load round trips. On an enumerable support (C <= 4096): normalisation, and for an exact
    (not bound) model the sampler at temperature 1, at temperature 0.7, with guidance 3 on the
    linear schedule (conditional models), and exact-prefix completion, each by chi-square.
    With an order-taking level: ``log_prob`` depends on the order.

    Args:
        model: any :class:`fractalkit.Fractal` (sampled as given, scored in float64).
        num_samples: draws per chi-square test.
        seed: sampling seed.
        label: the class the chi-square tests sample (default: 1 if conditional, else None).
        skip: names of checks not to run (keys of the result).

    Returns:
        ``{check name: result}`` for the checks that ran, with a ``"skipped"`` entry naming
        the ones that did not apply and why.

    Raises:
        ContractError: from the first check that fails.
        ValueError: the model is in training mode, or ``skip`` names an unknown check.
    """
    check_model(model, "run_all")
    if model.training:
        raise ValueError(
            "run_all: the model is in training mode; call model.eval() first (dropout would make "
            "the sampler's law differ from the likelihood's)"
        )
    conditional = model.num_classes > 0
    if label is None and conditional:
        label = min(1, model.num_classes - 1)
    small = enumerable(model)
    bound = is_bound(model)
    chi = {"num_samples": num_samples, "seed": seed}
    guided = {"guidance": 3.0, "guidance_schedule": "linear"} if conditional else {}
    plan: dict[str, tuple[bool, str, Callable[[], Any]]] = {
        "normalisation": (small, "support too large", lambda: check_normalisation(model)),
        "decomposition": (True, "", lambda: check_decomposition(model)),
        "orders_reach_levels": (
            any(uses_orders(model)), "no order-taking level", lambda: check_orders_reach_levels(model)
        ),
        "kv_cache": (True, "", lambda: check_kv_cache(model)),
        "seeded_sampling": (True, "", lambda: check_seeded_sampling(model)),
        "callback": (True, "", lambda: check_callback(model, **guided)),
        "completion": (True, "", lambda: check_completion(model)),
        "sampler": (small and not bound, "support too large or a bound",
                    lambda: check_sampler(model, label, **chi)),
        "sampler_temperature": (small and not bound, "support too large or a bound",
                                lambda: check_sampler(model, label, temperature=0.7, **chi)),
        "sampler_guidance": (small and not bound and conditional,
                             "support too large, a bound, or unconditional",
                             lambda: check_sampler(model, label, **guided, **chi)),
        "completion_law": (small and not bound, "support too large or a bound",
                           lambda: check_completion_law(model, None, label, **chi)),
        "config_round_trip": (True, "", lambda: check_config_round_trip(model)),
        "save_load": (True, "", lambda: check_save_load(model)),
    }
    unknown = sorted(set(skip) - set(plan))
    if unknown:
        raise ValueError(f"run_all: unknown check names {unknown}; known: {sorted(plan)}")
    results: dict[str, Any] = {}
    skipped: dict[str, str] = {}
    for name, (applies, why, run) in plan.items():
        if name in skip:
            skipped[name] = "skipped by the caller"
        elif not applies:
            skipped[name] = why
        else:
            results[name] = run()
    results["skipped"] = skipped
    return results


def check_component(
    level: ComponentConfig | None = None,
    leaf: ComponentConfig | None = None,
    partitioner: Partitioner | None = None,
    **kwargs: Any,
) -> dict[str, dict[str, Any]]:
    """The whole contract for one component: :func:`run_all` on the small models of
    :func:`tiny_fractal` built around it (a level both at the top and below another level).

    Args:
        level, leaf, partitioner: your component(s); at least one.
        **kwargs: passed to :func:`run_all` (``num_samples``, ``seed``, ``skip``).

    Returns:
        ``{model name: run_all result}``.

    Raises:
        ContractError: from the first check that fails (the message names the model).
    """
    if level is None and leaf is None and partitioner is None:
        raise ValueError("check_component: give a level config, a leaf config or a partitioner")
    models = {"top": tiny_fractal(level, leaf, partitioner)}
    if level is not None:
        models["below"] = tiny_fractal(level, leaf, partitioner, position="below", seed=1)
    out = {}
    for name, model in models.items():
        try:
            out[name] = run_all(model, **kwargs)
        except AssertionError as err:
            raise type(err)(f"[model {name!r}] {err}") from err
    return out
