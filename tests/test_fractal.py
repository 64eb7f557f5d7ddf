"""Fractal: guided sampling, invariances (batch composition, dtypes, autocast, configs, files)
and the errors bad input must raise."""

from __future__ import annotations

import json
import re

import pytest
import torch
from contract.examples import BY_NAME, EXAMPLES, Example, ar, labels_for, mar, random_data

from fractalkit import (
    CategoricalLeafConfig,
    Channels,
    Fractal,
    ImagePatches,
    Progress,
    RGBLeafConfig,
    SampleOptions,
    SummaryConfig,
)

COND = BY_NAME["mar_mar_cond"]  # class-conditional, MAR over pixels, MAR over channels
AR_COND = BY_NAME["ar_ar_cond"]


# ---- guidance ----------------------------------------------------------------------------------


@pytest.mark.parametrize("example", [AR_COND, COND, BY_NAME["mar_guide_rgb"]], ids=repr)
@pytest.mark.parametrize("schedule", ["constant", "linear"])
def test_guided_sampling_shapes_and_reproducibility(example: Example, schedule: str) -> None:
    model = example.build(torch.float32)
    y = labels_for(example, 5, seed=1)

    def draw(seed: int) -> torch.Tensor:
        return model.sample(
            y=y, guidance=3.0, guidance_schedule=schedule, temperature=0.9,
            generator=torch.Generator().manual_seed(seed),
        )

    a = draw(0)
    assert a.shape == (5, *model.event_shape) and a.dtype == torch.int64
    assert int(a.min()) >= 0 and int(a.max()) < model.num_values
    assert torch.equal(a, draw(0))
    assert not torch.equal(torch.cat([draw(1), draw(2)]), torch.cat([a, a]))


def test_guidance_raises_the_class_likelihood_ratio() -> None:
    """Classifier-free guidance favours samples that the condition explains better than the
    null condition does: mean log p(x|y) - log p(x|null) grows with the scale."""
    model = AR_COND.build(torch.float32)
    n = 400
    y = torch.full((n,), 1)

    def ratio(scale: float) -> float:
        x = model.sample(y=y, guidance=scale, generator=torch.Generator().manual_seed(7))
        with torch.no_grad():
            return float((model.log_prob(x, y).value - model.log_prob(x).value).mean())

    assert ratio(4.0) > ratio(1.0) + 0.05


def test_progress_callback_sees_every_top_level_step() -> None:
    model = COND.build(torch.float32)
    seen: list[Progress] = []
    y = torch.tensor([0, 2])
    model.sample(y=y, steps=(2,), callback=seen.append, generator=torch.Generator().manual_seed(0))
    assert [p.step for p in seen] == [1, 2] and all(p.num_steps == 2 for p in seen)
    assert seen[-1].canvas.shape == (2, *model.event_shape) and bool(seen[-1].decided.all())
    assert not bool(seen[0].decided.all())


def test_parallel_mar_decoding_fills_everything() -> None:
    model = BY_NAME["mar_ar_mar"].build(torch.float32)
    for steps in [(1,), (2, None, 1), (None, None, 2)]:
        x = model.sample(6, steps=steps, generator=torch.Generator().manual_seed(1))
        assert x.shape == (6, *model.event_shape)


# ---- invariances -------------------------------------------------------------------------------


@pytest.mark.parametrize("example", [AR_COND, COND, BY_NAME["ar_mar_ar_mar_4level"]], ids=repr)
def test_log_prob_does_not_depend_on_batch_composition(example: Example) -> None:
    model = example.build(torch.float32)
    x = random_data(model, 7, seed=2)
    y = labels_for(example, 7, seed=3)
    with torch.no_grad():
        whole = model.log_prob(x, y, orders="identity").value
        alone = torch.cat([
            model.log_prob(x[i : i + 1], None if y is None else y[i : i + 1], orders="identity").value
            for i in range(7)
        ])
        perm = torch.randperm(7, generator=torch.Generator().manual_seed(4))
        shuffled = model.log_prob(x[perm], None if y is None else y[perm], orders="identity").value
    torch.testing.assert_close(alone, whole, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(shuffled, whole[perm], rtol=1e-5, atol=1e-5)


def test_float64_model_gives_float64_log_prob_and_agrees_with_float32() -> None:
    x = random_data(COND.build(), 4, seed=5)
    y = torch.tensor([0, 1, 2, 0])
    with torch.no_grad():
        lp64 = COND.build(torch.float64).log_prob(x, y, orders="identity").value
        lp32 = COND.build(torch.float32).log_prob(x, y, orders="identity").value
    assert lp64.dtype == torch.float64 and lp32.dtype == torch.float32
    torch.testing.assert_close(lp32.double(), lp64, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("example", [AR_COND, COND, BY_NAME["mar_guide_rgb"]], ids=repr)
def test_bfloat16_autocast_runs_on_cpu(example: Example) -> None:
    model = example.build(torch.float32)
    x = random_data(model, 3, seed=6)
    y = labels_for(example, 3, seed=7)
    with torch.no_grad():
        reference = model.log_prob(x, y, orders="identity").value
    with torch.autocast("cpu", dtype=torch.bfloat16):
        with torch.no_grad():
            lp = model.log_prob(x, y, orders="identity").value
        loss = model.loss(x, y, generator=torch.Generator().manual_seed(0))
        samples = model.sample(3, y, generator=torch.Generator().manual_seed(0))
    loss.total.backward()
    assert lp.dtype == torch.float32  # reductions stay in float32 under autocast
    assert bool(torch.isfinite(lp).all())
    torch.testing.assert_close(lp, reference, rtol=0.05, atol=0.5)  # bfloat16 has 8 bits
    assert samples.shape == (3, *model.event_shape)


def test_bfloat16_model_reduces_in_float32() -> None:
    model = AR_COND.build(torch.bfloat16)
    x = random_data(model, 3, seed=8)
    with torch.no_grad():
        lp = model.log_prob(x, torch.tensor([0, 1, 2])).value
    assert lp.dtype == torch.float32 and bool(torch.isfinite(lp).all())


@pytest.mark.parametrize("example", EXAMPLES, ids=repr)
def test_config_round_trip_reproduces_log_prob_exactly(example: Example) -> None:
    model = example.build(torch.float32)
    config = json.loads(json.dumps(model.config.to_dict()))  # plain JSON
    rebuilt = Fractal.from_config(config)
    rebuilt.load_state_dict(model.state_dict())
    rebuilt.eval()
    assert rebuilt.config == model.config
    x = random_data(model, 4, seed=9)
    y = labels_for(example, 4, seed=10)
    with torch.no_grad():
        assert torch.equal(
            rebuilt.log_prob(x, y, orders="identity").value,
            model.log_prob(x, y, orders="identity").value,
        )


def test_save_load_round_trip(tmp_path) -> None:
    model = COND.build(torch.float32)
    path = tmp_path / "model.safetensors"
    model.save(path)
    loaded = Fractal.load(path).eval()
    x = random_data(model, 4, seed=11)
    y = torch.tensor([2, 1, 0, 1])
    with torch.no_grad():
        assert torch.equal(loaded.log_prob(x, y, orders="identity").value, model.log_prob(x, y, orders="identity").value)
    g = torch.Generator
    assert torch.equal(loaded.sample(y=y, generator=g().manual_seed(3)), model.sample(y=y, generator=g().manual_seed(3)))


def test_load_rejects_truncated_foreign_and_missing_files(tmp_path) -> None:
    model = AR_COND.build(torch.float32)
    path = tmp_path / "model.safetensors"
    model.save(path)
    truncated = tmp_path / "truncated.safetensors"
    truncated.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    with pytest.raises(ValueError, match=re.escape(str(truncated))):
        Fractal.load(truncated)
    garbage = tmp_path / "garbage.safetensors"
    garbage.write_bytes(b"not a safetensors file at all")
    with pytest.raises(ValueError, match=re.escape(str(garbage))):
        Fractal.load(garbage)
    from safetensors.torch import save_file

    foreign = tmp_path / "foreign.safetensors"
    save_file({"w": torch.zeros(2)}, str(foreign))
    with pytest.raises(ValueError, match=re.escape(str(foreign))):
        Fractal.load(foreign)
    with pytest.raises(FileNotFoundError):
        Fractal.load(tmp_path / "missing.safetensors")


# ---- bad input ---------------------------------------------------------------------------------


def test_float_data_raises_type_error() -> None:
    model = COND.build(torch.float32)
    x = random_data(model, 2, seed=0)
    y = torch.tensor([0, 1])
    for call in (
        lambda: model.log_prob(x.float(), y),
        lambda: model.loss(x.float(), y),
        lambda: model.complete(x.float(), torch.ones_like(x, dtype=torch.bool), y),
        lambda: model.stepwise_log_prob(x.double(), y),
    ):
        with pytest.raises(TypeError, match="x must hold integers"):
            call()


def test_bad_shapes_values_and_labels_raise_value_errors() -> None:
    model = COND.build(torch.float32)
    x = random_data(model, 2, seed=0)
    y = torch.tensor([0, 1])
    with pytest.raises(ValueError, match=r"x must have shape \[N, 2, 2, 2\]"):
        model.log_prob(x[:, :1], y)
    with pytest.raises(ValueError, match="x must have shape"):
        model.log_prob(x[0], y)
    with pytest.raises(ValueError, match=r"x values must lie in \[0, 2\)"):
        model.log_prob(x + 1, y)
    with pytest.raises(ValueError, match="x values"):
        model.loss(x - 1, y)
    with pytest.raises(ValueError, match=r"labels must lie in \[0, 3\)"):
        model.log_prob(x, torch.tensor([0, 3]))
    with pytest.raises(ValueError, match="labels"):
        model.sample(y=torch.tensor([-1]))
    with pytest.raises(ValueError, match="y must have shape"):
        model.log_prob(x, torch.tensor([0, 1, 2]))
    with pytest.raises(TypeError, match="y must be an integer tensor"):
        model.log_prob(x, torch.tensor([0.0, 1.0]))
    with pytest.raises(ValueError, match="num_draws"):
        model.log_prob(x, y, num_draws=0)
    with pytest.raises(ValueError, match="known"):
        model.complete(x, torch.ones(2, 2, 2, 2, dtype=torch.long), y)
    unconditional = BY_NAME["ar_ar"].build(torch.float32)
    with pytest.raises(ValueError, match="unconditional"):
        unconditional.log_prob(x, y)
    with pytest.raises(ValueError, match="guidance"):
        unconditional.sample(2, guidance=2.0)
    with pytest.raises(ValueError, match="num_samples"):
        unconditional.sample()


def test_bad_orders_raise_value_errors() -> None:
    model = BY_NAME["mar_ar_mar"].build(torch.float32)
    x = random_data(model, 2, seed=0)
    with pytest.raises(ValueError, match="one entry per level"):
        model.log_prob(x, orders=["identity", None])
    with pytest.raises(ValueError, match="permutation"):
        model.log_prob(x, orders=[torch.tensor([0, 0]), None, "identity"])
    with pytest.raises(ValueError, match="orders"):
        model.log_prob(x, orders=[torch.tensor([0, 1, 2]), None, "identity"])
    with pytest.raises(ValueError, match=r"orders\[1\]"):
        model.log_prob(x, orders=["identity", torch.tensor([1, 0]), "identity"])
    with pytest.raises(ValueError, match="orders"):
        model.log_prob(x, orders="backwards")


def test_bad_sampling_options_raise() -> None:
    model = COND.build(torch.float32)
    y = torch.tensor([0])
    with pytest.raises(TypeError, match="unknown sampling option"):
        model.sample(y=y, temprature=0.9)
    with pytest.raises(ValueError, match="temperature"):
        SampleOptions(temperature=0)
    with pytest.raises(ValueError, match="temperature"):
        model.sample(y=y, temperature=-1.0)
    with pytest.raises(ValueError, match="guidance_schedule"):
        SampleOptions(guidance_schedule="cosine")
    with pytest.raises(ValueError, match="filter_threshold"):
        SampleOptions(filter_threshold=1.0)
    with pytest.raises(ValueError, match="steps"):
        SampleOptions(steps=(0,))
    with pytest.raises(ValueError, match="steps"):
        model.sample(y=y, steps=(2, 2, 2))  # the model has 2 levels


def test_mismatched_level_configurations_raise_at_construction() -> None:
    with pytest.raises(ValueError, match=r"children of shape \[3, 4, 4\].*\[3, 2, 2\]"):
        Fractal(
            [(ImagePatches(8, 4), ar()), (ImagePatches(2, 1), ar())],
            RGBLeafConfig(width=8, depth=1, heads=2),
        )
    with pytest.raises(ValueError, match="not divisible"):
        ar(width=10, heads=4)
    with pytest.raises(ValueError, match="divisible by 4"):
        ar(width=8, heads=4)  # head dim 2: no room for 2-D rotary embeddings
    with pytest.raises(ValueError, match="a summary needs embed='linear'"):
        mar(summary=SummaryConfig(RGBLeafConfig(width=8, depth=1, heads=2)), embed="table")
    with pytest.raises(ValueError, match="at least one"):
        Fractal([], CategoricalLeafConfig(num_values=2))
    with pytest.raises(TypeError, match="Partitioner"):
        Fractal([("patches", ar())], CategoricalLeafConfig(num_values=2))
    with pytest.raises(ValueError, match="label_drop"):
        Fractal([(Channels((2,)), ar())], CategoricalLeafConfig(num_values=2), label_drop=1.0)
    with pytest.raises(ValueError, match="from_config"):
        Fractal.from_config({"format": "something else"})
