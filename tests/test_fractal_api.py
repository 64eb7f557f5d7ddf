"""The Fractal user API: invariances, dtypes, config and file round trips, and bad input.

The generic exactness properties (decomposition, normalisation, chi-square, ...) run over the
table in ``tests/contract``; this file checks the API around them on a few small models.

Shape letters: N instances, K classes, C channels, H/W image size.
"""

from __future__ import annotations

import json
import math

import pytest
import torch

from fractalkit import (
    ARLevelConfig,
    CategoricalLeafConfig,
    Fractal,
    ImagePatches,
    MARLevelConfig,
    RGBLeafConfig,
    SampleOptions,
    SequenceChunks,
    SummaryConfig,
)

# ---- small models ------------------------------------------------------------------------------


def _ar() -> Fractal:
    # 2x4 RGB images -> two 2x2 patches -> pixels -> RGB leaf, 3 classes.
    return Fractal(
        [
            (ImagePatches((2, 4), 2), ARLevelConfig(width=16, depth=1, heads=2)),
            (ImagePatches(2, 1), ARLevelConfig(width=16, depth=1, heads=2, block="vit")),
        ],
        leaf=RGBLeafConfig(width=8, depth=1, heads=2, num_values=16),
        num_classes=3,
    )


def _mar() -> Fractal:
    return Fractal(
        [
            (ImagePatches((2, 4), 2), MARLevelConfig(width=16, depth=1, heads=2)),
            (ImagePatches(2, 1), MARLevelConfig(width=16, depth=1, heads=2, neighbours=False)),
        ],
        leaf=RGBLeafConfig(width=8, depth=1, heads=2, num_values=16),
        num_classes=3,
        value_mean=(0.485, 0.456, 0.406),
        value_std=(0.229, 0.224, 0.225),
    )


def _mixed() -> Fractal:
    return Fractal(
        [
            (ImagePatches((2, 4), 2), MARLevelConfig(width=16, depth=1, heads=2)),
            (ImagePatches(2, 1), ARLevelConfig(width=16, depth=1, heads=2)),
        ],
        leaf=RGBLeafConfig(width=8, depth=1, heads=2, num_values=16),
    )


def _guided_pixel() -> Fractal:
    guide = RGBLeafConfig(width=8, depth=1, heads=2, num_values=16)
    return Fractal(
        [
            (ImagePatches((2, 4), 2), MARLevelConfig(width=16, depth=1, heads=2)),
            (
                ImagePatches(2, 1),
                MARLevelConfig(width=16, depth=1, heads=2, summary=SummaryConfig(guide)),
            ),
        ],
        leaf=RGBLeafConfig(width=8, depth=1, heads=2, num_values=16),
        num_classes=3,
    )


def _chunks() -> Fractal:
    return Fractal(
        [
            (SequenceChunks(8, 4), ARLevelConfig(width=16, depth=1, heads=2, embed="table")),
            (SequenceChunks(4, 1), MARLevelConfig(width=16, depth=1, heads=2, embed="table")),
        ],
        leaf=CategoricalLeafConfig(num_values=5),
    )


BUILDERS = {"ar": _ar, "mar": _mar, "mixed": _mixed, "guiding_pixel": _guided_pixel, "chunks": _chunks}


def build(name: str, seed: int = 0) -> Fractal:
    """A seeded, eval-mode model from :data:`BUILDERS`."""
    torch.manual_seed(seed)
    return BUILDERS[name]().eval()


def data(model: Fractal, n: int, seed: int = 0) -> torch.Tensor:
    """Seeded int64 data ``[n, *event_shape]``."""
    gen = torch.Generator().manual_seed(seed)
    return torch.randint(0, model.num_values, (n, *model.event_shape), generator=gen)


def labels(model: Fractal, n: int, seed: int = 0) -> torch.Tensor | None:
    """Seeded labels ``[n]`` or None for an unconditional model."""
    if not model.num_classes:
        return None
    return torch.randint(0, model.num_classes, (n,), generator=torch.Generator().manual_seed(seed))


def exact_orders(model: Fractal):
    """``"identity"`` where some level is a MAR level (exact mode), else None."""
    return "identity" if model._has_orders() else None


# ---- kinds and units ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("name", "orders", "kind"),
    [
        ("ar", None, "exact"),
        ("mar", "identity", "exact"),
        ("mar", "random", "exact"),
        ("mar", None, "estimate"),
        ("mixed", None, "estimate"),
        ("guiding_pixel", "identity", "bound"),
        ("guiding_pixel", None, "estimate"),
        ("chunks", "identity", "exact"),
    ],
)
def test_log_prob_kind_and_bits_per_dim(name, orders, kind):
    model = build(name)
    x, y = data(model, 3), labels(model, 3)
    with torch.no_grad():
        lp = model.log_prob(x, y, orders=orders, num_draws=2, generator=torch.Generator().manual_seed(0))
        bpd = model.bits_per_dim(x, y, orders=orders, num_draws=2, generator=torch.Generator().manual_seed(0))
    assert lp.kind == kind and bpd.kind == kind
    assert lp.value.shape == (3,) and bool(torch.isfinite(lp.value).all())
    assert bool((lp.value < 0).all())
    torch.testing.assert_close(bpd.value, -lp.value / (model.num_dims * math.log(2)))
    if kind == "estimate":
        assert lp.stderr is not None and lp.stderr.shape == (3,) and lp.num_draws == 2
        assert "estimate" in str(bpd) and "±" in str(bpd)
    else:
        assert lp.stderr is None


def test_estimate_draws_follow_the_generator():
    model = build("mar")
    x, y = data(model, 2), labels(model, 2)
    draw = lambda seed: model.log_prob(  # noqa: E731
        x, y, num_draws=3, generator=torch.Generator().manual_seed(seed)
    ).value.detach()
    assert torch.equal(draw(0), draw(0))
    assert not torch.equal(draw(0), draw(1))


# ---- invariances ---------------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["ar", "mar", "mixed", "guiding_pixel", "chunks"])
def test_log_prob_does_not_depend_on_batch_composition(name):
    model = build(name)
    x, y = data(model, 6), labels(model, 6)
    orders = exact_orders(model)
    with torch.no_grad():
        together = model.log_prob(x, y, orders=orders).value
        alone = torch.cat(
            [model.log_prob(x[i : i + 1], None if y is None else y[i : i + 1], orders=orders).value for i in range(6)]
        )
        perm = torch.tensor([3, 5, 0, 1, 4, 2])
        shuffled = model.log_prob(x[perm], None if y is None else y[perm], orders=orders).value
    torch.testing.assert_close(alone, together, rtol=1e-5, atol=1e-4)
    torch.testing.assert_close(shuffled, together[perm], rtol=1e-5, atol=1e-4)


@pytest.mark.parametrize("name", ["ar", "mar", "guiding_pixel"])
def test_dtype_follows_the_model(name):
    model = build(name)
    x, y = data(model, 2), labels(model, 2)
    orders = exact_orders(model)
    with torch.no_grad():
        lp32 = model.log_prob(x, y, orders=orders)
        lp64 = model.double().log_prob(x, y, orders=orders)
        step64 = model.stepwise_log_prob(x, y, orders=orders or "identity")
    assert lp32.value.dtype == torch.float32
    assert lp64.value.dtype == torch.float64 and step64.dtype == torch.float64
    torch.testing.assert_close(lp64.value.float(), lp32.value, rtol=1e-5, atol=1e-4)
    samples = model.sample(2, y, generator=torch.Generator().manual_seed(0))
    assert samples.dtype == torch.int64


@pytest.mark.parametrize("name", ["ar", "mar", "mixed"])
def test_bfloat16_autocast_runs_on_cpu(name):
    model = build(name)
    x, y = data(model, 2), labels(model, 2)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        lp = model.log_prob(x, y, orders=exact_orders(model))
        loss = model.train().loss(x, y, generator=torch.Generator().manual_seed(0))
        loss.total.backward()
        samples = model.eval().sample(2, y, generator=torch.Generator().manual_seed(0))
    # The library keeps likelihood reductions in float32 under autocast.
    assert lp.value.dtype == torch.float32 and bool(torch.isfinite(lp.value).all())
    assert bool(torch.isfinite(loss.total))
    assert all(p.grad is None or bool(torch.isfinite(p.grad).all()) for p in model.parameters())
    assert samples.shape == x.shape and samples.dtype == torch.int64
    with torch.no_grad():  # bfloat16 is close to float32 (a loose check that the path is sane)
        ref = model.log_prob(x, y, orders=exact_orders(model)).value
    assert float((lp.value.detach() - ref).abs().max() / ref.abs().max()) < 0.05


def test_empty_batch():
    model = build("mar")
    x = data(model, 0)
    with torch.no_grad():
        assert model.log_prob(x, orders="identity").value.shape == (0,)
    assert model.sample(0).shape == (0, *model.event_shape)


# ---- configs and files --------------------------------------------------------------------------


@pytest.mark.parametrize("name", list(BUILDERS))
def test_config_round_trip_reproduces_log_prob_exactly(name):
    model = build(name, seed=1)
    config = json.loads(json.dumps(model.config.to_dict()))  # a plain JSON document
    assert config == model.config.to_dict()
    clone = Fractal.from_config(config).eval()
    assert clone.config == model.config
    clone.load_state_dict(model.state_dict())
    x, y = data(model, 4), labels(model, 4)
    with torch.no_grad():
        a = model.log_prob(x, y, orders=exact_orders(model)).value
        b = clone.log_prob(x, y, orders=exact_orders(model)).value
    assert torch.equal(a, b)
    # A fresh model from the same config (other weights) differs: the check above has teeth.
    torch.manual_seed(123)
    other = Fractal.from_config(config).eval()
    with torch.no_grad():
        assert not torch.equal(other.log_prob(x, y, orders=exact_orders(model)).value, a)


@pytest.mark.parametrize("name", ["mar", "guiding_pixel", "chunks"])
def test_save_load_round_trip(name, tmp_path):
    model = build(name, seed=2).double()
    path = tmp_path / "model.safetensors"
    model.save(path)
    loaded = Fractal.load(path).eval()
    assert loaded.config == model.config
    assert next(loaded.parameters()).dtype == torch.float64  # weights keep their dtype
    x, y = data(model, 3), labels(model, 3)
    with torch.no_grad():
        assert torch.equal(
            model.log_prob(x, y, orders="identity").value, loaded.log_prob(x, y, orders="identity").value
        )
    a = model.sample(3, y, generator=torch.Generator().manual_seed(5))
    b = loaded.sample(3, y, generator=torch.Generator().manual_seed(5))
    assert torch.equal(a, b)
    assert not (tmp_path / "model.safetensors.tmp").exists()


def test_load_rejects_truncated_and_foreign_files(tmp_path):
    model = build("ar")
    path = tmp_path / "model.safetensors"
    model.save(path)
    raw = path.read_bytes()
    truncated = tmp_path / "truncated.safetensors"
    truncated.write_bytes(raw[: len(raw) // 2])
    with pytest.raises(ValueError, match=r"truncated\.safetensors"):
        Fractal.load(truncated)
    garbage = tmp_path / "garbage.safetensors"
    garbage.write_bytes(b"not a safetensors file at all")
    with pytest.raises(ValueError, match=r"garbage\.safetensors"):
        Fractal.load(garbage)
    from safetensors.torch import save_file

    foreign = tmp_path / "foreign.safetensors"
    save_file({"w": torch.zeros(2)}, str(foreign))
    with pytest.raises(ValueError, match=r"foreign\.safetensors has no fractalkit config"):
        Fractal.load(foreign)
    with pytest.raises(FileNotFoundError, match=r"missing\.safetensors"):
        Fractal.load(tmp_path / "missing.safetensors")


@pytest.mark.parametrize(
    ("change", "match"),
    [
        (lambda c: c.update(format="other"), "format"),
        (lambda c: c.update(version=99), "version 99"),
        (lambda c: c.update(extra=1), r"unknown keys \['extra'\]"),
        (lambda c: c["leaf"].update(kind="nonsense"), "unknown kind 'nonsense'"),
        (lambda c: c["levels"][0]["level"].update(widht=3), "unknown field"),
    ],
)
def test_from_config_rejects_bad_configs(change, match):
    config = build("ar").config.to_dict()
    change(config)
    with pytest.raises(ValueError, match=match):
        Fractal.from_config(config)


# ---- sampling API --------------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["ar", "mar", "guiding_pixel", "chunks"])
def test_sample_shapes_seeds_and_ranges(name):
    model = build(name)
    y = labels(model, 3)
    draw = lambda seed, **kw: model.sample(  # noqa: E731
        3, y, generator=torch.Generator().manual_seed(seed), **kw
    )
    a = draw(0)
    assert a.shape == (3, *model.event_shape) and a.dtype == torch.int64
    assert int(a.min()) >= 0 and int(a.max()) < model.num_values
    assert torch.equal(a, draw(0))
    assert not torch.equal(a, draw(1))
    if model._has_orders():
        few = draw(0, steps=(2, 1))  # parallel decoding (cosine schedule)
        assert few.shape == a.shape


def test_sample_progress_callback_reports_every_top_step():
    model = build("mar")
    seen = []
    model.sample(2, labels(model, 2), steps=(3, None), callback=seen.append)
    assert [p.step for p in seen] == [1, 2, 3] and {p.num_steps for p in seen} == {3}
    assert bool(seen[-1].decided.all()) and not bool(seen[0].decided.all())
    assert seen[-1].canvas.shape == (2, *model.event_shape)


# ---- bad input ---------------------------------------------------------------------------------


def test_float_data_raises_type_error():
    model = build("ar")
    x = data(model, 2).float()
    for call in (
        lambda: model.log_prob(x),
        lambda: model.loss(x),
        lambda: model.stepwise_log_prob(x),
        lambda: model.complete(x, torch.ones_like(x, dtype=torch.bool)),
    ):
        with pytest.raises(TypeError, match="x must hold integers"):
            call()


@pytest.mark.parametrize(
    ("make_x", "match"),
    [
        (lambda m: torch.zeros(2, 3, 4, dtype=torch.long), r"x must have shape \[N, 3, 2, 4\]"),
        (lambda m: torch.zeros(2, 3, 4, 5, dtype=torch.long), r"x must have shape"),
        (lambda m: torch.full((2, 3, 2, 4), m.num_values), r"x values must lie in \[0, 16\)"),
        (lambda m: torch.full((2, 3, 2, 4), -1), r"x values must lie in \[0, 16\)"),
    ],
)
def test_bad_data_raises_value_error_naming_x(make_x, match):
    model = build("ar")
    with pytest.raises(ValueError, match=match):
        model.log_prob(make_x(model))
    with pytest.raises(ValueError, match=match):
        model.loss(make_x(model))


@pytest.mark.parametrize(
    ("y", "error", "match"),
    [
        (torch.tensor([0, 3]), ValueError, r"labels must lie in \[0, 3\)"),
        (torch.tensor([-1, 0]), ValueError, r"labels must lie in \[0, 3\)"),
        (torch.tensor([0, 1, 2]), ValueError, r"y must have shape \[2\]"),
        (torch.tensor([[0, 1]]), ValueError, r"y must have shape"),
        (torch.tensor([0.0, 1.0]), TypeError, "y must be an integer tensor"),
    ],
)
def test_bad_labels_raise(y, error, match):
    model = build("ar")
    x = data(model, 2)
    with pytest.raises(error, match=match):
        model.log_prob(x, y)
    with pytest.raises(error, match=match):
        model.sample(2, y)


def test_labels_for_an_unconditional_model_raise():
    model = build("mixed")
    with pytest.raises(ValueError, match="unconditional"):
        model.log_prob(data(model, 2), torch.tensor([0, 1]))


def test_sampling_option_errors():
    model = build("mar")
    y = labels(model, 2)
    with pytest.raises(TypeError, match=r"unknown sampling option\(s\) \['temprature'\]"):
        model.sample(2, y, temprature=0.9)
    with pytest.raises(ValueError, match="steps: expected at most one entry per level"):
        model.sample(2, y, steps=(2, 2, 2))
    with pytest.raises(ValueError, match="guidance needs a class-conditional model"):
        model.sample(2, guidance=2.0)
    with pytest.raises(ValueError, match="guidance needs a class-conditional model"):
        build("mixed").sample(2, guidance=2.0)
    with pytest.raises(ValueError, match="num_samples"):
        model.sample()
    with pytest.raises(ValueError, match=r"y must have shape \[3\]"):
        model.sample(3, y)


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"temperature": 0}, "temperature: expected > 0"),
        ({"temperature": -1.0}, "temperature: expected > 0"),
        ({"guidance": -0.5}, "guidance: expected >= 0"),
        ({"guidance_schedule": "cosine"}, "guidance_schedule"),
        ({"filter_threshold": 1.0}, "filter_threshold"),
        ({"steps": (4, 0)}, "steps: expected positive integers"),
        ({"steps": (4, 2.5)}, "steps: expected positive integers"),
    ],
)
def test_sample_options_validation(kwargs, match):
    with pytest.raises(ValueError, match=match):
        SampleOptions(**kwargs)


def test_order_and_draw_errors():
    mar, ar = build("mar"), build("ar")
    x = data(mar, 2)
    with pytest.raises(ValueError, match=r"orders must have one entry per level \(2\)"):
        mar.log_prob(x, orders=["identity"])
    with pytest.raises(ValueError, match=r"orders\[0\] is given but level 0 \(ARLevel\)"):
        ar.log_prob(x, orders=[torch.arange(4), None])
    with pytest.raises(ValueError, match=r"orders: expected a permutation of shape \[2\]"):
        mar.log_prob(x, orders=torch.arange(3))
    with pytest.raises(ValueError, match="permutation of range"):
        mar.log_prob(x, orders=torch.tensor([1, 1]))
    with pytest.raises(ValueError, match="num_draws must be a positive integer"):
        mar.log_prob(x, num_draws=0)


def test_complete_rejects_a_bad_mask():
    model = build("mar")
    x = data(model, 2)
    with pytest.raises(ValueError, match="known must be a bool tensor"):
        model.complete(x, torch.ones_like(x))
    with pytest.raises(ValueError, match="known must be a bool tensor"):
        model.complete(x, torch.ones(2, 3, 4, dtype=torch.bool))


def test_mismatched_levels_raise_at_construction():
    with pytest.raises(ValueError, match=r"level 0 hands down children of shape \[3, 4, 4\].*\[3, 2, 2\]"):
        Fractal(
            [
                (ImagePatches(8, 4), ARLevelConfig(width=16, depth=1, heads=2)),
                (ImagePatches(2, 1), ARLevelConfig(width=16, depth=1, heads=2)),
            ],
            leaf=RGBLeafConfig(width=8, depth=1, heads=2),
        )
    with pytest.raises(ValueError, match="levels must hold at least one"):
        Fractal([], leaf=RGBLeafConfig())
    with pytest.raises(TypeError, match=r"levels\[0\]\[0\] must be a Partitioner"):
        Fractal([((3, 4, 4), ARLevelConfig())], leaf=RGBLeafConfig())
    with pytest.raises(ValueError, match="value_mean has 2 entries"):
        Fractal(
            [(ImagePatches(2, 1), ARLevelConfig(width=16, depth=1, heads=2))],
            leaf=RGBLeafConfig(width=8, depth=1, heads=2),
            value_mean=(0.5, 0.5),
        )
    with pytest.raises(ValueError, match="label_drop"):
        Fractal(
            [(ImagePatches(2, 1), ARLevelConfig(width=16, depth=1, heads=2))],
            leaf=RGBLeafConfig(width=8, depth=1, heads=2),
            label_drop=1.0,
        )


@pytest.mark.parametrize(
    ("make", "match"),
    [
        (lambda: ARLevelConfig(width=10, heads=4), "not divisible by heads"),
        (lambda: ARLevelConfig(width=24, heads=4), "divisible by 4"),
        (lambda: MARLevelConfig(width=0), "width must be a positive integer"),
        (lambda: MARLevelConfig(attn_dropout=1.5), "attn_dropout"),
        (lambda: ARLevelConfig(block="gpt"), "block must be 'vit' or 'llama'"),
        (
            lambda: MARLevelConfig(summary=SummaryConfig(RGBLeafConfig()), embed="table"),
            "a summary needs embed='linear'",
        ),
    ],
)
def test_level_config_validation(make, match):
    with pytest.raises(ValueError, match=match):
        make()


# ---- training objective --------------------------------------------------------------------------


def test_loss_parts_and_channel_weights_apply_in_training_only():
    torch.manual_seed(0)
    model = Fractal(
        [(ImagePatches(2, 1), ARLevelConfig(width=16, depth=1, heads=2))],
        leaf=RGBLeafConfig(width=8, depth=1, heads=2, num_values=16, channel_weights=(5.0, 1.0, 1.0)),
    ).eval()
    x = data(model, 4)
    loss = model.loss(x)
    with torch.no_grad():
        lp = model.log_prob(x).value
    # nll: mean NLL per dimension in nats, unweighted: equals -log_prob / dims.
    torch.testing.assert_close(loss.nll.detach(), -lp.sum() / (4 * model.num_dims))
    assert loss.bits_per_dim == pytest.approx(float(loss.nll.detach()) / math.log(2))
    assert not torch.allclose(loss.total.detach(), loss.nll.detach())  # red weighted 5
    assert loss.aux == {}


def test_guiding_pixel_loss_reports_its_auxiliary_term():
    model = build("guiding_pixel").train()
    loss = model.loss(data(model, 2), labels(model, 2), generator=torch.Generator().manual_seed(0))
    assert set(loss.aux) == {"guiding_pixel_nll"}
    torch.testing.assert_close(loss.total, loss.nll + loss.aux["guiding_pixel_nll"])
