"""fractalkit.testing: the contract-test kit for your own levels, leaves and partitioners.

Build a small model around your component and call the checks from your own tests; each
returns what it measured and raises :class:`ContractError` (an ``AssertionError``) with the
figure, the tolerance and the likely cause when the contract is broken::

    from fractalkit.testing import check_component
    check_component(level=MyLevelConfig(width=16))   # every check, on small models

or one at a time, on any :class:`fractalkit.Fractal`::

    check_normalisation(model)           # sum of exp(log_prob) over the support is 1
    check_decomposition(model)           # log_prob == stepwise_log_prob (decoding path)
    check_sampler(model, temperature=0.7)  # chi-square against the tempered law

Modules: ``likelihood`` (normalisation, decomposition, order dependence), ``decoding`` (KV
cache, seeds, callback, completion), ``samplers`` (chi-square against exact laws), ``files``
(config and save/load round trips), ``suite`` (``run_all``, ``check_component``,
``tiny_fractal``), ``laws`` (exact sampling laws), ``support`` (supports, orders, data),
``stats`` (the pooled chi-square), ``report`` (``CheckResult``, ``ContractError``).

Only torch and the standard library are imported: no pytest, no numpy, no scipy.
"""

from fractalkit.testing.decoding import (
    check_callback,
    check_completion,
    check_kv_cache,
    check_seeded_sampling,
)
from fractalkit.testing.files import check_config_round_trip, check_save_load
from fractalkit.testing.laws import likelihood_law, log_likelihood_table, sampling_law
from fractalkit.testing.likelihood import (
    check_decomposition,
    check_normalisation,
    check_orders_reach_levels,
    is_bound,
)
from fractalkit.testing.report import ALPHA, CheckResult, ContractError
from fractalkit.testing.samplers import (
    check_completion_law,
    check_sampler,
    completion_chi_square,
    prefix_known,
    sample_histogram,
    sampler_chi_square,
)
from fractalkit.testing.stats import ChiSquare, chi_square, chi_square_p_value
from fractalkit.testing.suite import check_component, run_all, tiny_fractal
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
    "MAX_ENUMERABLE",
    "CheckResult",
    "ChiSquare",
    "ContractError",
    "check_callback",
    "check_completion",
    "check_completion_law",
    "check_component",
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
    "enumerable",
    "fixed_orders",
    "float64_copy",
    "is_bound",
    "likelihood_law",
    "log_likelihood_table",
    "num_configurations",
    "partitioners",
    "prefix_known",
    "random_data",
    "random_labels",
    "roughen",
    "run_all",
    "sample_histogram",
    "sampler_chi_square",
    "sampling_law",
    "support",
    "support_index",
    "tiny_fractal",
    "uses_orders",
]
