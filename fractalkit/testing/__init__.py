"""fractalkit.testing: the contract-test kit for your own levels, leaves and partitioners.

Build a small model around your component and call the checks from your own tests; each
returns what it measured and raises :class:`ContractError` (an ``AssertionError``) with the
figure, the tolerance and the likely cause when the contract is broken::

    from fractalkit.testing import check_component
    check_component(level=MyLevelConfig(width=16))   # every check, on small models
    check_component(conditioner=MyConditionerConfig(), conditions=[c0, c1])  # yours

or one at a time, on any :class:`fractalkit.Fractal`::

    check_normalisation(model)           # sum of exp(log_prob) over the support is 1
    check_decomposition(model)           # log_prob == stepwise_log_prob (decoding path)
    check_sampler(model, temperature=0.7)  # chi-square against the tempered law

``run_all(model, collect=True)`` runs every check even after a failure and raises one
:class:`ContractFailures` listing them all; :data:`CHECKS` names the checks. A check without
the statistical power to decide (a peaked model) raises :class:`InconclusiveCheck`, which is not
a failure (``run_all`` records it and goes on).

Every check runs under a condition: ``c`` for N instances (any structure the model's
conditioner takes; ``y=`` stays the class-label spelling), or example conditions, each for one
instance (``conditions=[...]``; defaults for the built-in conditioners).

Modules: ``likelihood`` (normalisation, decomposition, order dependence, the condition reaching
the model), ``decoding`` (KV cache, seeds, callback, completion), ``dropout`` (condition
dropout), ``conditions`` (example conditions and batching them), ``samplers`` (chi-square against exact laws), ``files``
(config and save/load round trips), ``suite`` (``run_all``, ``check_component``,
``tiny_fractal``), ``laws`` (exact sampling laws), ``support`` (supports, orders, data),
``stats`` (the pooled chi-square), ``report`` (``CheckResult``, ``ContractError``).

Only torch and the standard library are imported: no pytest, no numpy, no scipy.
"""

from fractalkit.testing.conditions import (
    default_conditions,
    join_conditions,
    random_conditions,
    repeat_condition,
    take_conditions,
)
from fractalkit.testing.decoding import (
    check_callback,
    check_completion,
    check_kv_cache,
    check_seeded_sampling,
)
from fractalkit.testing.dropout import check_condition_dropout
from fractalkit.testing.files import check_config_round_trip, check_save_load
from fractalkit.testing.laws import likelihood_law, log_likelihood_table, sampling_law
from fractalkit.testing.likelihood import (
    check_condition_reaches_model,
    check_decomposition,
    check_normalisation,
    check_orders_reach_levels,
    is_bound,
)
from fractalkit.testing.report import (
    ALPHA,
    CheckResult,
    ContractError,
    ContractFailures,
    InconclusiveCheck,
)
from fractalkit.testing.samplers import (
    check_completion_law,
    check_sampler,
    completion_chi_square,
    partial_prefix_known,
    prefix_known,
    sample_histogram,
    sampler_chi_square,
)
from fractalkit.testing.stats import ChiSquare, chi_square, chi_square_p_value
from fractalkit.testing.suite import CHECKS, check_component, run_all, tiny_fractal
from fractalkit.testing.support import (
    MAX_ENUMERABLE,
    decoding_order,
    enumerable,
    fixed_orders,
    float64_copy,
    num_configurations,
    partitioners,
    random_data,
    random_labels,
    roughen,
    support,
    support_index,
    uses_orders,
)

__all__ = [
    "ALPHA",
    "CHECKS",
    "MAX_ENUMERABLE",
    "CheckResult",
    "ChiSquare",
    "ContractError",
    "ContractFailures",
    "InconclusiveCheck",
    "check_callback",
    "check_completion",
    "check_completion_law",
    "check_component",
    "check_condition_dropout",
    "check_condition_reaches_model",
    "check_config_round_trip",
    "check_decomposition",
    "check_kv_cache",
    "check_normalisation",
    "check_orders_reach_levels",
    "check_sampler",
    "check_save_load",
    "check_seeded_sampling",
    "chi_square",
    "chi_square_p_value",
    "completion_chi_square",
    "decoding_order",
    "default_conditions",
    "enumerable",
    "fixed_orders",
    "float64_copy",
    "is_bound",
    "join_conditions",
    "likelihood_law",
    "log_likelihood_table",
    "num_configurations",
    "partial_prefix_known",
    "partitioners",
    "prefix_known",
    "random_conditions",
    "random_data",
    "random_labels",
    "repeat_condition",
    "roughen",
    "run_all",
    "sample_histogram",
    "sampler_chi_square",
    "sampling_law",
    "support",
    "support_index",
    "take_conditions",
    "tiny_fractal",
    "uses_orders",
]
