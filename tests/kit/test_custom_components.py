"""The kit over plug-ins defined here, outside the package: a custom leaf and a custom
partitioner run through every check (save, load, sampling with a callback and a linear guidance
schedule included); register_partitioner makes a user's partitioner load."""

from __future__ import annotations

import pytest
import torch

from fractalkit import (
    ARLevelConfig,
    Fractal,
    MARLevelConfig,
    SequenceChunks,
    register_partitioner,
)
from fractalkit.partition import PARTITIONERS, Partitioner, partitioner_from_config
from fractalkit.testing import (
    check_callback,
    check_component,
    check_save_load,
    run_all,
    tiny_fractal,
)
from kit.components import MarkovLeafConfig, Strided

ALL_CHECKS = {
    "normalisation", "decomposition", "kv_cache", "seeded_sampling", "callback", "completion",
    "sampler", "sampler_temperature", "sampler_guidance", "completion_law", "config_round_trip",
    "save_load",
}


def test_custom_leaf_passes_every_check() -> None:
    results = check_component(leaf=MarkovLeafConfig(num_values=3), num_samples=3000)
    ran = set(results["top"]) - {"skipped"}
    assert ran >= ALL_CHECKS, results["top"]["skipped"]
    assert results["top"]["normalisation"].figure < 1e-9
    assert results["top"]["sampler_guidance"].p_value > 1e-3


def test_custom_partitioner_passes_every_check() -> None:
    results = check_component(partitioner=Strided(4, 2), num_samples=3000)
    assert set(results["top"]) - {"skipped"} >= ALL_CHECKS


def test_custom_leaf_and_partitioner_under_a_mar_level() -> None:
    """Both plug-ins together below an order-taking level (orders, exact-mode MAR laws)."""
    model = tiny_fractal(
        MARLevelConfig(width=16, depth=1, heads=2), MarkovLeafConfig(num_values=3), Strided(4, 2),
        seed=3,
    )
    results = run_all(model, num_samples=3000)
    assert ALL_CHECKS | {"orders_reach_levels"} <= set(results) - {"skipped"}


def test_custom_components_save_load_and_sample_with_callbacks(tmp_path) -> None:
    """Written to a file, loaded by kind, and sampled with a callback on a linear schedule."""
    model = tiny_fractal(leaf=MarkovLeafConfig(num_values=3), partitioner=Strided(4, 2))
    check_save_load(model, directory=tmp_path)
    loaded = Fractal.load(tmp_path / "model.safetensors").eval()
    assert isinstance(partitioner_from_config(loaded.config.to_dict()["levels"][0]["partitioner"]), Strided)
    result = check_callback(loaded, guidance=2.0, guidance_schedule="linear")
    assert result.figure == 2  # one report per top-level child


def test_an_unregistered_partitioner_saves_but_does_not_load(tmp_path) -> None:
    """What register_partitioner fixes: without it, Fractal.load cannot find the kind."""

    class Unregistered(Strided):
        kind = "kit_test_unregistered"

    model = Fractal([(Unregistered(4, 2), ARLevelConfig(width=16, depth=1, heads=2))], MarkovLeafConfig())
    model.save(tmp_path / "m.safetensors")
    with pytest.raises(ValueError, match="unknown kind 'kit_test_unregistered'"):
        Fractal.load(tmp_path / "m.safetensors")


def test_register_partitioner_refuses_duplicates_and_non_partitioners() -> None:
    assert PARTITIONERS["kit_test_strided"] is Strided
    assert register_partitioner(Strided) is Strided  # the same class again: harmless

    class Impostor(Strided):
        kind = "kit_test_strided"

    with pytest.raises(ValueError, match=r"already registered to .*Strided"):
        register_partitioner(Impostor)
    with pytest.raises(ValueError, match="'sequence_chunks' is already registered"):
        register_partitioner(type("Chunks2", (SequenceChunks,), {}))  # inherits the kind
    with pytest.raises(TypeError, match="Partitioner subclass"):
        register_partitioner(dict)  # type: ignore[arg-type]

    class NoKind(Partitioner):
        kind = ""

    with pytest.raises(ValueError, match="non-empty string class attribute 'kind'"):
        register_partitioner(NoKind)
    assert PARTITIONERS["kit_test_strided"] is Strided


@pytest.mark.slow
@pytest.mark.parametrize(
    "level",
    [ARLevelConfig(width=16, depth=1, heads=2), MARLevelConfig(width=16, depth=1, heads=2)],
    ids=["ar", "mar"],
)
def test_check_component_on_builtin_levels(level) -> None:
    """The whole kit on each built-in level, at the top and below another level."""
    results = check_component(level=level)
    assert set(results) == {"top", "below"}


def test_kit_imports_neither_pytest_nor_numpy_itself() -> None:
    import ast
    from pathlib import Path

    import fractalkit.testing

    for path in Path(fractalkit.testing.__file__).parent.glob("*.py"):
        tree = ast.parse(path.read_text(encoding="utf-8"))
        names = {
            alias.name.split(".")[0]
            for node in ast.walk(tree)
            if isinstance(node, ast.Import | ast.ImportFrom)
            for alias in (node.names if isinstance(node, ast.Import) else [ast.alias(node.module or "")])
        }
        assert not names & {"pytest", "numpy", "scipy", "hypothesis"}, (path.name, names)
    assert torch.__name__ == "torch"
