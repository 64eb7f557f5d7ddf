"""Issue 14, classes 1, 2 and 5: non-finite values, integer types and bounded, explained loading.

Each test is a family over every instance found in the code; each failed before the change
(values passed silently, floats were truncated, loading allocated first and raised
RuntimeError/KeyError/JSONDecodeError without the file's name).
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch

from fractalkit import (
    CategoricalLeafConfig,
    Fractal,
    ImagePatches,
    MARLevelConfig,
    RGBLeafConfig,
    SampleOptions,
)
from fractalkit.config import BuildContext

NAN, INF = float("nan"), float("inf")


def tiny(num_classes: int = 4, **kwargs) -> Fractal:
    """A 4x4 RGB model with one MAR level over 2x2 patches."""
    torch.manual_seed(0)
    return Fractal(
        [(ImagePatches(4, 2), MARLevelConfig(width=16, depth=1, heads=2))],
        RGBLeafConfig(width=16, depth=1, heads=2),
        num_classes=num_classes,
        **kwargs,
    ).eval()


# ---- class 1: non-finite values ----------------------------------------------------------------


@pytest.mark.parametrize(
    "option, value",
    [("guidance", INF), ("guidance", NAN), ("temperature", INF), ("temperature", NAN),
     ("filter_threshold", NAN), ("filter_threshold", -INF)],
)
def test_non_finite_sampling_options_raise(option: str, value: float) -> None:
    with pytest.raises(ValueError, match=option):
        SampleOptions(**{option: value})
    with pytest.raises(ValueError, match=option):
        tiny().sample(2, torch.tensor([0, 1]), **{option: value})


def _schedule(**kwargs):
    from fractalkit.training import WarmupCosine

    opt = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=1.0)
    return WarmupCosine(opt, **({"peak_lr": 1e-3, "warmup_steps": 2, "total_steps": 10} | kwargs))


def _budget(**kwargs):
    from fractalkit.training import train_for_budget

    model = tiny(num_classes=0)
    return train_for_budget(model, lambda g: torch.zeros(1, 3, 4, 4, dtype=torch.long),
                            generator=torch.Generator(), **({"budget_s": 1.0, "max_steps": 0} | kwargs))


@pytest.mark.parametrize(
    "make, name",
    [(lambda: _schedule(peak_lr=INF), "peak_lr"), (lambda: _schedule(peak_lr=NAN), "peak_lr"),
     (lambda: _schedule(min_lr=NAN), "min_lr"), (lambda: _budget(lr=INF), "lr")],
)
def test_non_finite_training_options_raise(make, name: str) -> None:
    with pytest.raises(ValueError, match=f"{name} must be"):
        make()


@pytest.mark.parametrize(
    "name, value, message",
    [("value_mean", NAN, "non-finite"), ("value_mean", INF, "non-finite"),
     ("value_mean", [0.5, NAN, 0.5], "non-finite"), ("value_std", INF, "non-finite"),
     ("value_std", NAN, "non-finite"), ("value_std", 0.0, "positive"),
     ("value_std", [0.5, -0.1, 0.5], "positive")],
)
def test_bad_normalisation_constants_raise(name: str, value, message: str) -> None:
    with pytest.raises(ValueError, match=f"{name}.*{message}|{name} must be {message}"):
        tiny(**{name: value})


@pytest.mark.parametrize("weights", [(NAN, 1.0, 1.0), (INF, 1.0, 1.0)])
def test_non_finite_channel_weights_raise(weights) -> None:
    with pytest.raises(ValueError, match="finite positive"):
        RGBLeafConfig(width=16, depth=1, heads=2, channel_weights=weights).build(BuildContext(16, 1, (3,)))


@pytest.mark.parametrize("bad", [NAN, INF, -INF])
@pytest.mark.parametrize("which", ["level", "leaf"])
def test_non_finite_conditions_to_public_log_prob_and_sample_raise(bad: float, which: str) -> None:
    model = tiny()
    gen = model.root if which == "level" else model.leaf
    x = torch.randint(0, 256, (2, *gen.event_shape))
    cond = torch.zeros(2, gen.cond_tokens, gen.cond_dim)
    cond[1, 0, 3] = bad
    with pytest.raises(ValueError, match="cond holds 1 non-finite"):
        gen.log_prob(x, cond)
    with pytest.raises(ValueError, match="cond holds 1 non-finite"):
        gen.sample(cond)


@pytest.mark.parametrize("bad", [NAN, INF])
@pytest.mark.parametrize("where", ["level", "leaf"])
def test_diverged_weights_raise_instead_of_garbage(bad: float, where: str) -> None:
    """NaN/inf weights: sampling names the level instead of drawing value 0; log_prob names the
    parameters instead of returning NaN labelled exact."""
    model = tiny()
    module = model.root if where == "level" else model.leaf
    param = next(p for p in module.parameters() if p.ndim == 2)
    with torch.no_grad():
        param.fill_(bad)
    x = torch.randint(0, 256, (2, 3, 4, 4))
    with pytest.raises(ValueError, match=r"RGBLeaf \(level 1\): the probabilities"):
        model.sample(2, torch.tensor([0, 1]))
    with pytest.raises(ValueError, match=r"log-likelihood is NaN or infinite.*parameter"):
        model.log_prob(x, torch.tensor([0, 1]), orders="identity")
    with pytest.raises(ValueError, match="log-likelihood is NaN or infinite"):
        model.log_prob(x, torch.tensor([0, 1]))


# ---- class 2: integer-meaning arguments ---------------------------------------------------------


@pytest.mark.parametrize(
    "call",
    [
        lambda m, x: m.log_prob(x, orders=torch.tensor([0.0, 1.9, 2.0, 3.0])),
        lambda m, x: m.log_prob(x, orders=torch.tensor([0.0, 1.0, 2.0, 3.0])),
        lambda m, x: m.sample(2, orders=torch.tensor([3.0, 2.0, 1.0, 0.0])),
        lambda m, x: m.complete(x, torch.ones_like(x, dtype=torch.bool),
                                orders=torch.arange(4).double()),
        lambda m, x: m.stepwise_log_prob(x, orders=torch.tensor([True, False, True, True])),
        lambda m, x: CategoricalLeafConfig(num_values=256.7).build(BuildContext(16, 1, (3,))),
        lambda m, x: _graphs().permute(torch.tensor([[1.0, 0.0, 2.0]])),
    ],
    ids=["log_prob-fractional", "log_prob-whole-floats", "sample", "complete", "stepwise-bool",
         "leaf-num_values", "graph-permute"],
)
def test_integer_arguments_given_as_floats_raise(call) -> None:
    model = tiny(num_classes=0)
    x = torch.randint(0, 256, (2, 3, 4, 4))
    with pytest.raises(TypeError, match="must be an int"):
        call(model, x)


def _graphs():
    from fractalkit.graphs import Graph

    return Graph(torch.zeros(1, 3, dtype=torch.long), torch.zeros(1, 3, 3, dtype=torch.long),
                 torch.ones(1, 3, dtype=torch.bool))


@pytest.mark.parametrize(
    "make",
    [lambda: SampleOptions(steps=(True,)), lambda: tiny(num_classes=True),
     lambda: SampleOptions(steps=(4.0,))],
    ids=["steps-bool", "num_classes-bool", "steps-float"],
)
def test_integer_options_refuse_bools_and_floats(make) -> None:
    with pytest.raises(ValueError, match=r"steps|num_classes"):
        make()


@pytest.mark.parametrize(
    "make, name",
    [(lambda: _schedule(warmup_steps=2.5), "warmup_steps"),
     (lambda: _schedule(total_steps=10.7), "total_steps"),
     (lambda: _budget(max_steps=3.5), "max_steps"), (lambda: _budget(warmup_steps=1.5), "warmup_steps")],
)
def test_integer_training_arguments_given_as_floats_raise(make, name: str) -> None:
    with pytest.raises(TypeError, match=f"{name} must be an int"):
        make()


# ---- class 5: bounded, explained loading --------------------------------------------------------


def _write(path: Path, tensors: dict, config) -> Path:
    from safetensors.torch import save_file

    meta = {"fractalkit_config": config if isinstance(config, str) else json.dumps(config)}
    save_file(tensors, str(path), metadata=meta)
    return path


def _big_config() -> dict:
    """A config declaring ~180M parameters (about 720 MB of float32)."""
    return Fractal(
        [(ImagePatches(4, 2), MARLevelConfig(width=16, depth=1, heads=2))],
        RGBLeafConfig(width=16, depth=1, heads=2),
    ).config.to_dict() | {"levels": [{"partitioner": ImagePatches(64, 4).config(),
                            "level": MARLevelConfig(width=2048, depth=3, heads=16).to_dict()},
                           {"partitioner": ImagePatches(4, 1).config(),
                            "level": MARLevelConfig(width=512, depth=2, heads=8).to_dict()}]}


def test_crafted_file_does_not_allocate_the_declared_model(tmp_path, monkeypatch) -> None:
    """A 1 KB file declaring a huge model is refused before any real allocation: every model
    building during the load happens on the meta device."""
    path = _write(tmp_path / "crafted.safetensors", {"null_embedding": torch.zeros(1, 4)}, _big_config())
    assert path.stat().st_size < 4096
    devices = []
    real = Fractal.from_config.__func__

    def spy(cls, config):
        devices.append(torch.empty(0).device.type)
        return real(cls, config)

    monkeypatch.setattr(Fractal, "from_config", classmethod(spy))
    with pytest.raises(ValueError, match=r"crafted\.safetensors.*do not fit the config"):
        Fractal.load(path)
    assert devices == ["meta"]


def _good(tmp_path: Path) -> tuple[dict, dict]:
    model = tiny()
    model.save(tmp_path / "good.safetensors")
    return {k: v.contiguous() for k, v in model.state_dict().items()}, model.config.to_dict()


@pytest.mark.parametrize(
    "case, message",
    [
        ("not-json", "config is not valid JSON"),
        ("missing-leaf", "lacks the required key 'leaf'"),
        ("missing-levels", "lacks the required key 'levels'"),
        ("wrong-type", "does not describe a model"),
        ("missing-tensor", "missing"),
        ("extra-tensor", "unexpected"),
        ("wrong-shape", "shapes differ"),
        ("nan-weights", "NaN/inf"),
    ],
)
def test_every_load_failure_is_a_value_error_naming_the_file(tmp_path, case: str, message: str) -> None:
    state, config = _good(tmp_path)
    if case == "not-json":
        config = "{levels: oops"
    elif case.startswith("missing-") and case[8:] in config:
        del config[case[8:]]
    elif case == "wrong-type":
        config["levels"] = 7
    elif case == "missing-tensor":
        del state["conditioner.null_embedding"]
    elif case == "extra-tensor":
        state["stray"] = torch.zeros(2)
    elif case == "wrong-shape":
        state["conditioner.null_embedding"] = torch.zeros(1, 8)
    elif case == "nan-weights":
        state["conditioner.null_embedding"] = torch.full_like(state["conditioner.null_embedding"], NAN)
    path = _write(tmp_path / f"{case}.safetensors", state, config)
    with pytest.raises(ValueError, match=message) as info:
        Fractal.load(path)
    assert f"{case}.safetensors" in str(info.value)


def test_good_file_still_loads_bit_identically(tmp_path) -> None:
    model = tiny()
    model.save(tmp_path / "m.safetensors")
    again = Fractal.load(tmp_path / "m.safetensors")
    for (k, a), (_, b) in zip(model.state_dict().items(), again.state_dict().items(), strict=True):
        assert torch.equal(a, b), k
    assert math.isfinite(float(again.log_prob(torch.randint(0, 256, (1, 3, 4, 4)), torch.tensor([1]),
                                              orders="identity").value.detach()))
