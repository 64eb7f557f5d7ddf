"""The examples table covers every component, and every row meets the basic contract:
shapes, dtypes, kinds, training loss and gradients, edge-case batch sizes."""

from __future__ import annotations

import importlib
import math
import pkgutil

import pytest
import torch

import fractalkit.leaves
import fractalkit.levels
from contract.examples import EXAMPLES, Example, labels_for, random_data
from fractalkit.config import CONFIG_REGISTRY, ComponentConfig
from fractalkit.levels import Level
from fractalkit.partition import PARTITIONERS
from fractalkit.testing import check_config_round_trip, check_save_load


def _configs_used(example: Example) -> set[str]:
    config = example.build().config
    found: set[str] = set()

    def visit(cfg: ComponentConfig) -> None:
        found.add(cfg.kind)
        for value in vars(cfg).values():
            if isinstance(value, ComponentConfig):
                visit(value)

    for _, cfg in config.levels:
        visit(cfg)
    visit(config.leaf)
    return found


def _library_config_kinds() -> set[str]:
    """Kinds of every config registered by fractalkit's level and leaf modules (all imported),
    ignoring plug-ins that tests register for themselves."""
    for package in (fractalkit.levels, fractalkit.leaves):
        for info in pkgutil.iter_modules(package.__path__, package.__name__ + "."):
            importlib.import_module(info.name)
    # conditioners have their own table: tests/test_conditioners.py
    packages = ("fractalkit.levels.", "fractalkit.leaves.")
    return {kind for kind, cls in CONFIG_REGISTRY.items() if cls.__module__.startswith(packages)}


def test_every_registered_component_has_a_row() -> None:
    configs = set().union(*(_configs_used(e) for e in EXAMPLES))
    missing = sorted(_library_config_kinds() - configs)
    assert not missing, f"add rows using {missing} to tests/contract/examples.py"
    partitioners = {p.kind for e in EXAMPLES for p, _ in e.build().config.levels}
    library = {k for k, cls in PARTITIONERS.items() if cls.__module__.startswith("fractalkit.")}
    missing = sorted(library - partitioners)
    assert not missing, f"add rows using the partitioners {missing} to tests/contract/examples.py"


def test_rows_cover_conditions_and_depths() -> None:
    assert {bool(e.num_classes) for e in EXAMPLES} == {True, False}
    depths = {len(e.build().levels) - 1 for e in EXAMPLES}
    assert {1, 2, 3, 4} <= depths
    assert len({e.name for e in EXAMPLES}) == len(EXAMPLES)


@pytest.mark.parametrize("example", EXAMPLES, ids=repr)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_log_prob_shape_dtype_and_kind(example: Example, dtype: torch.dtype) -> None:
    model = example.build(dtype)
    n = 3
    x = random_data(model, n, seed=1)
    y = labels_for(example, n, seed=2)
    with torch.no_grad():
        exact = model.log_prob(x, y, orders="identity")
        default = model.log_prob(x, y, num_draws=2, generator=torch.Generator().manual_seed(0))
    assert exact.value.shape == (n,) and exact.value.dtype == dtype
    assert exact.kind == ("bound" if example.bound else "exact")
    assert bool(torch.isfinite(exact.value).all()) and bool((exact.value <= 0).all())
    if "mar" in example.tags:  # random orders: an estimate with a standard error
        assert default.kind == "estimate" and default.stderr is not None
        assert default.stderr.shape == (n,)
    else:
        assert default.kind == exact.kind
        torch.testing.assert_close(default.value, exact.value)
    bpd = model.bits_per_dim(x, y, orders="identity")
    torch.testing.assert_close(bpd.value, -exact.value / (math.prod(model.event_shape) * math.log(2)))


@pytest.mark.parametrize("example", EXAMPLES, ids=repr)
def test_training_loss_and_gradients(example: Example) -> None:
    model = example.build(torch.float32).train()
    n = 4
    x = random_data(model, n, seed=3)
    y = labels_for(example, n, seed=4)
    loss = model.loss(x, y, generator=torch.Generator().manual_seed(5))
    assert loss.total.dim() == 0 and loss.nll.dim() == 0
    nll, total = float(loss.nll.detach()), float(loss.total.detach())
    assert nll > 0 and math.isfinite(total)
    if not loss.aux:  # no auxiliary terms and no channel weights in these rows: total == nll
        assert total == pytest.approx(nll, rel=1e-6)
    loss.total.backward()
    # Every level's network and the leaf receive gradient.
    for level in model.levels:
        own = [
            p.grad
            for name, p in level.named_parameters()
            if not (isinstance(level, Level) and name.startswith("child."))
        ]
        assert any(g is not None and float(g.abs().sum()) > 0 for g in own), type(level).__name__


@pytest.mark.parametrize("example", EXAMPLES, ids=repr)
def test_edge_case_batches(example: Example) -> None:
    model = example.build(torch.float64)
    for n in (0, 1):
        x = random_data(model, n, seed=6)
        y = labels_for(example, n, seed=7)
        with torch.no_grad():
            lp = model.log_prob(x, y, orders="identity")
        assert lp.value.shape == (n,)
    samples = model.sample(0, None if not example.num_classes else torch.zeros(0, dtype=torch.long))
    assert samples.shape == (0, *model.event_shape)


@pytest.mark.parametrize("example", EXAMPLES, ids=repr)
def test_config_and_file_round_trips(example: Example) -> None:
    """The kit's round trips: from_config rebuilds the structure; save + load give the same
    tensors, log-probabilities (bitwise) and samples from a seed."""
    model = example.build(torch.float32)
    check_config_round_trip(model)
    assert check_save_load(model, seed=3).figure == 0
