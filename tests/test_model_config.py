"""The model's one description (FractalConfig), the one registry and build context, older
config versions through the one conversion, and plug-in discovery.

- ``FractalConfig.to_dict()`` / ``from_dict()`` round-trip exactly (hypothesis, through JSON).
- Versions 1, 2 and 3 of the config dict read as today's (fractalkit.legacy).
- A saved file records the module of each plug-in kind; loading without the plug-in names it;
  ``Fractal.load(path, import_plugins=True)`` imports installed plug-ins declared under the
  entry-point group ``fractalkit.components`` (a fake distribution on ``sys.path``), never by itself.
"""

from __future__ import annotations

import dataclasses
import json
import sys
import textwrap

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

from fractalkit import (
    ARLevelConfig,
    BuildContext,
    CategoricalLeafConfig,
    ClassLabel,
    Fractal,
    FractalConfig,
    ImagePatches,
    LevelConfig,
    MARLevelConfig,
    RGBLeafConfig,
    SequenceChunks,
    Vector,
    register,
)
from fractalkit.conditioners import Unconditional
from fractalkit.config import CONFIG_REGISTRY, FORMAT_VERSION, UnknownKindError, load_entry_points
from fractalkit.leaves.categorical import CategoricalLeaf
from fractalkit.levels.ar import ARLevel
from fractalkit.partition import PARTITIONERS, Channels, Partitioner
from fractalkit.registry import REGISTRY

# ---- round trips ---------------------------------------------------------------------------------


def _level(kind: str, width: int, neighbours: bool) -> LevelConfig:
    if kind == "ar":
        return ARLevelConfig(width=width, depth=1, heads=2)
    return MARLevelConfig(width=width, depth=1, heads=2, neighbours=neighbours)


@st.composite
def configs(draw) -> FractalConfig:
    """Small valid model descriptions: image or sequence levels, every conditioner kind."""
    kinds = draw(st.lists(st.sampled_from(["ar", "mar"]), min_size=1, max_size=3))
    widths = draw(st.lists(st.sampled_from([8, 16, 32]), min_size=len(kinds), max_size=len(kinds)))
    neighbours = draw(st.booleans())
    image = draw(st.booleans())
    if image:  # 2^len x 2^len images, halved per level
        size = 2 ** len(kinds)
        parts = [ImagePatches(size >> i, size >> (i + 1)) for i in range(len(kinds))]
        leaf = draw(st.sampled_from([
            RGBLeafConfig(width=8, depth=1, heads=2),
            CategoricalLeafConfig(num_values=256, channel_weights=(2.0, 1.0, 1.0)),
        ]))
        mean = draw(st.sampled_from([0.5, (0.485, 0.456, 0.406), 0.25]))
    else:
        length = 2 ** len(kinds)
        parts = [SequenceChunks(length >> i, length >> (i + 1)) for i in range(len(kinds))]
        leaf = CategoricalLeafConfig(num_values=draw(st.integers(2, 7)))
        mean = draw(st.sampled_from([0.5, 0.0]))
    conditioner = draw(st.sampled_from([
        None, Unconditional(), ClassLabel(draw(st.integers(1, 20)), drop=draw(st.sampled_from([0.0, 0.1, 0.3]))),
        Vector(draw(st.integers(1, 4))),
    ]))
    levels = tuple((p, _level(k, w, neighbours)) for p, k, w in zip(parts, kinds, widths, strict=True))
    return FractalConfig(levels, leaf, conditioner, value_mean=mean, value_std=0.5)


@given(configs())
def test_config_round_trips_exactly_through_json(config: FractalConfig) -> None:
    data = config.to_dict()
    again = FractalConfig.from_dict(json.loads(json.dumps(data)))
    assert again == config
    assert again.to_dict() == data
    assert data["version"] == FORMAT_VERSION and data["plugins"] == {}
    assert hash(again.levels[0][0]) == hash(config.levels[0][0])


def test_short_spellings_are_sugar_over_the_config() -> None:
    levels = [(SequenceChunks(4, 2), ARLevelConfig(width=8, depth=1, heads=2)),
              (SequenceChunks(2, 1), MARLevelConfig(width=8, depth=1, heads=2))]
    leaf = CategoricalLeafConfig(num_values=3)
    torch.manual_seed(0)
    short = Fractal(levels, leaf=leaf, num_classes=5, label_drop=0.2, value_mean=0.25)
    config = FractalConfig(tuple(levels), leaf, ClassLabel(5, drop=0.2), value_mean=0.25)
    assert short.config == config
    torch.manual_seed(0)
    for again in (Fractal(config), Fractal(config=config), Fractal.from_config(config),
                  Fractal.from_config(config.to_dict())):
        assert again.config == config
    torch.manual_seed(0)
    same = Fractal(config)
    assert all(torch.equal(a, b) for a, b in zip(short.state_dict().values(), same.state_dict().values(), strict=True))
    with pytest.raises(ValueError, match="either a FractalConfig or the short spellings"):
        Fractal(config, num_classes=3)
    with pytest.raises(TypeError, match="give levels and leaf"):
        Fractal()
    with pytest.raises(dataclasses.FrozenInstanceError):
        config.leaf = leaf  # type: ignore[misc]
    # unconditional: None and Unconditional() are the same description
    assert FractalConfig(tuple(levels), leaf).conditioner == Unconditional()
    assert Fractal(levels, leaf).config.conditioner == Unconditional()


def test_old_dict_access_warns_and_reads_the_dict() -> None:
    model = Fractal([(SequenceChunks(2, 1), ARLevelConfig(width=8, depth=1, heads=2))],
                    CategoricalLeafConfig(num_values=3))
    with pytest.warns(DeprecationWarning, match="FractalConfig now"):
        assert model.config["leaf"] == {"kind": "categorical", "num_values": 3, "channel_weights": None}


# ---- older versions through the one conversion ---------------------------------------------------


def _v4() -> dict:
    return FractalConfig(
        ((ImagePatches(4, 2), MARLevelConfig(width=8, depth=1, heads=2)),
         (ImagePatches(2, 1), ARLevelConfig(width=8, depth=1, heads=2))),
        RGBLeafConfig(width=8, depth=1, heads=2),
        ClassLabel(7, drop=0.2),
    ).to_dict()


def test_versions_1_2_3_read_as_today() -> None:
    today = _v4()
    v3 = json.loads(json.dumps({k: v for k, v in today.items() if k != "plugins"})) | {"version": 3}
    # MAR levels before issue 20's summary setting wrote the guiding-pixel fields (default leaf).
    mar = {k: v for k, v in v3["levels"][0]["level"].items() if k != "summary"}
    v3["levels"][0]["level"] = mar | {"guiding_pixel": False, "guide_input": "rounded", "guide": {
        "kind": "rgb", "width": 128, "depth": 3, "heads": 4, "num_values": 256,
        "channel_weights": [5.0, 1.0, 1.0]}}
    v2 = {k: v for k, v in v3.items() if k != "conditioner"} | {"version": 2, "num_classes": 7, "label_drop": 0.2}
    v1 = json.loads(json.dumps(v2)) | {"version": 1}
    del v1["levels"][0]["level"]["guide_input"]  # what version 2 added (default "rounded")
    for old in (v1, v2, v3):
        assert FractalConfig.from_dict(old).to_dict() == today
    uncond = v2 | {"num_classes": 0, "label_drop": 0.3}
    assert FractalConfig.from_dict(uncond).conditioner == Unconditional()
    with pytest.raises(ValueError, match="unknown keys"):
        FractalConfig.from_dict(v3 | {"num_classes": 7})
    with pytest.raises(ValueError, match="lacks the required key 'label_drop'"):
        FractalConfig.from_dict({k: v for k, v in v2.items() if k != "label_drop"})
    with pytest.raises(ValueError, match="version 99"):
        FractalConfig.from_dict(today | {"version": 99})
    with pytest.raises(ValueError, match="'plugins' must map kinds to module names"):
        FractalConfig.from_dict(today | {"plugins": ["x"]})


def test_old_parameter_names_load_on_every_path(tmp_path) -> None:
    from safetensors.torch import save_file

    model = Fractal.from_config(_v4()).double()
    new = model.state_dict()
    assert {"conditioner.null_embedding", "conditioner.class_embedding.weight"} <= set(new)
    old = {k.removeprefix("conditioner."): v.clone() for k, v in new.items()}
    # load_state_dict of old names
    again = Fractal.from_config(_v4()).double()
    again.load_state_dict(old)
    assert all(torch.equal(again.state_dict()[k], v) for k, v in new.items())
    # a file with old names and a version-2 config (what class-label models wrote before)
    v2 = {k: v for k, v in _v4().items() if k not in ("conditioner", "plugins")}
    v2 |= {"version": 2, "num_classes": 7, "label_drop": 0.2}
    path = tmp_path / "old.safetensors"
    save_file({k: v.contiguous() for k, v in old.items()}, str(path),
              metadata={"fractalkit_config": json.dumps(v2)})
    loaded = Fractal.load(path)
    assert loaded.config == model.config
    assert all(torch.equal(loaded.state_dict()[k], v) for k, v in new.items())
    # what is written now: version 4, the conditioner's names
    model.save(tmp_path / "new.safetensors")
    from safetensors import safe_open

    with safe_open(str(tmp_path / "new.safetensors"), framework="pt") as f:
        assert json.loads(f.metadata()["fractalkit_config"])["version"] == FORMAT_VERSION
        assert "conditioner.null_embedding" in set(f.keys())


# ---- one registry, one build context ------------------------------------------------------------


class _Halves(Partitioner):
    """Two halves of a sequence (registered with the one decorator below)."""

    def __init__(self, length: int) -> None:
        self.length = length
        self.event_shape, self.child_shape, self.grid = (length,), (length // 2,), (1, 2)

    def _split(self, x):
        return x.reshape(len(x), 2, -1)

    def _merge(self, c):
        return c.reshape(len(c), -1)

    def config(self):
        return {"kind": self.kind, "length": self.length}


def test_one_registry_for_partitioners_and_configs() -> None:
    halves = register("model_config_tests_halves")(_Halves)
    try:
        assert PARTITIONERS["model_config_tests_halves"] is halves and halves.kind == "model_config_tests_halves"
        assert "model_config_tests_halves" not in CONFIG_REGISTRY
        assert CONFIG_REGISTRY["ar"] is ARLevelConfig and "ar" not in PARTITIONERS
        model = Fractal([(halves(4), ARLevelConfig(width=8, depth=1, heads=2))], CategoricalLeafConfig(num_values=3))
        assert Fractal.from_config(model.config.to_dict()).config == model.config
        with pytest.raises(ValueError, match="already registered"):
            register("ar")(type("Other", (ARLevelConfig,), {}))
    finally:
        del PARTITIONERS["model_config_tests_halves"]


def test_a_subclass_that_inherits_a_kind_is_not_saved_as_its_parent() -> None:
    @dataclasses.dataclass(frozen=True)
    class Louder(ARLevelConfig):  # would load back as a plain ARLevelConfig
        pass

    model = Fractal([(SequenceChunks(2, 1), Louder(width=8, depth=1, heads=2))], CategoricalLeafConfig(num_values=3))
    with pytest.raises(ValueError, match=r"inherits the kind 'ar'.*Register the subclass"):
        model.config.to_dict()


def test_every_build_gets_one_context_and_old_signatures_still_build() -> None:
    seen = []

    @dataclasses.dataclass(frozen=True)
    class Spy(ARLevelConfig):
        def build(self, ctx: BuildContext):
            seen.append(ctx)
            return super().build(ctx)

    part = SequenceChunks(4, 2)
    Fractal([(part, Spy(width=8, depth=1, heads=2))], CategoricalLeafConfig(num_values=3))
    (ctx,) = seen
    assert (ctx.partitioner, ctx.event_shape, ctx.cond_dim, ctx.cond_tokens) == (part, (4,), 8, 1)
    assert ctx.child.num_values == 3 and ctx.normalisation is not None

    @dataclasses.dataclass(frozen=True)
    class OldLevel(ARLevelConfig):
        def build(self, partitioner, child, *, cond_dim, cond_tokens, normalisation):
            return ARLevel(partitioner, child, self, cond_dim=cond_dim, cond_tokens=cond_tokens,
                           normalisation=normalisation)

    @dataclasses.dataclass(frozen=True)
    class OldLeaf(CategoricalLeafConfig):
        def build(self, event_shape, cond_dim, cond_tokens):
            return CategoricalLeaf(event_shape, cond_dim, cond_tokens, self.num_values)

    with pytest.warns(DeprecationWarning, match="before the one build context"):
        model = Fractal([(part, OldLevel(width=8, depth=1, heads=2))], OldLeaf(num_values=3))
    assert isinstance(model.root, ARLevel) and isinstance(model.leaf, CategoricalLeaf)


# ---- plug-ins: the module record and entry points ------------------------------------------------

PLUGIN = '''
import dataclasses
from fractalkit import ARLevelConfig, register


@register("{kind}")
@dataclasses.dataclass(frozen=True)
class PluginLevelConfig(ARLevelConfig):
    """An AR level config defined by an installed plug-in package."""
'''


@pytest.fixture
def plugin(tmp_path, monkeypatch):
    """A fake installed distribution on ``sys.path``: a module registering kind
    ``model_config_tests_plugin`` and a dist-info declaring it under ``fractalkit.components``."""
    kind, module = "model_config_tests_plugin", "fk_fake_plugin_mod"
    (tmp_path / f"{module}.py").write_text(PLUGIN.format(kind=kind))
    info = tmp_path / "fk_fake_plugin-0.1.dist-info"
    info.mkdir()
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: fk-fake-plugin\nVersion: 0.1\n")
    (info / "entry_points.txt").write_text(textwrap.dedent(f"""\
        [fractalkit.components]
        fake = {module}
        """))
    monkeypatch.syspath_prepend(str(tmp_path))
    yield kind, module
    REGISTRY.pop(kind, None)
    sys.modules.pop(module, None)


def test_saved_files_record_plugin_modules_and_name_them_when_missing(plugin, tmp_path) -> None:
    kind, module = plugin
    mod = __import__(module)
    model = Fractal([(SequenceChunks(2, 1), mod.PluginLevelConfig(width=8, depth=1, heads=2))],
                    CategoricalLeafConfig(num_values=3))
    data = model.config.to_dict()
    assert data["plugins"] == {kind: module}  # built-in kinds are not listed
    path = tmp_path / "plugin.safetensors"
    model.save(path)
    # a fresh process: the plug-in is not imported
    del REGISTRY[kind]
    sys.modules.pop(module)
    with pytest.raises(ValueError, match=rf"plugin\.safetensors.*unknown kind '{kind}'.*module '{module}'.*import {module}") as info:
        Fractal.load(path)
    message = str(info.value)
    assert "import_plugins=True" in message and "fractalkit.components" in message
    assert "runs that code" in message
    assert module not in sys.modules  # nothing was imported behind the user's back
    with pytest.raises(UnknownKindError, match=module):
        FractalConfig.from_dict(data)
    # the explicit opt-in discovers the installed plug-in through its entry point
    loaded = Fractal.load(path, import_plugins=True)
    assert module in sys.modules and loaded.config.to_dict() == data
    x = torch.randint(0, 3, (2, 2))
    with torch.no_grad():
        assert torch.equal(loaded.log_prob(x).value, model.log_prob(x).value)


def test_load_entry_points_imports_declared_modules(plugin) -> None:
    kind, module = plugin
    assert kind not in REGISTRY
    assert "fake" in load_entry_points()
    assert REGISTRY[kind].__module__ == module


def test_a_failing_plugin_is_named(plugin, tmp_path) -> None:
    _, module = plugin
    (tmp_path / f"{module}.py").write_text("raise RuntimeError('broken plug-in')\n")
    with pytest.raises(ImportError, match=r"entry point 'fake'.*broken plug-in"):
        load_entry_points()


def test_unregistered_kinds_and_partitioners_fail_clearly() -> None:
    data = _v4()
    data["levels"][0]["partitioner"]["kind"] = "voxels"
    with pytest.raises(UnknownKindError, match=r"levels\[0\]\.partitioner: unknown kind 'voxels'"):
        FractalConfig.from_dict(data)
    assert isinstance(FractalConfig.from_dict(_v4()).levels[0][0], ImagePatches)
    assert Channels((3, 2)).to_dict() == Channels((3, 2)).config()


def test_optimizer_state_of_an_older_checkpoint_is_renumbered() -> None:
    """Older class-label models enumerated ``null_embedding`` first and ``class_embedding``
    last; a one-group optimizer state saved then lines up with today's parameters."""
    from fractalkit.legacy import upgrade_optimizer_state

    model = Fractal.from_config(_v4())
    names = [n for n, _ in model.named_parameters()]
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    model.loss(torch.randint(0, 256, (2, 3, 4, 4)), torch.tensor([1, 2])).total.backward()
    opt.step()
    today = opt.state_dict()
    old_order = ["conditioner.null_embedding", *names[:-2], "conditioner.class_embedding.weight"]
    assert names[-2:] == ["conditioner.null_embedding", "conditioner.class_embedding.weight"]
    # what the older version saved: positions in its own order
    old = {"param_groups": today["param_groups"],
           "state": {i: today["state"][names.index(n)] for i, n in enumerate(old_order)}}
    got = upgrade_optimizer_state(old, names, 2)
    assert got["state"].keys() == today["state"].keys()
    for i in today["state"]:
        assert torch.equal(got["state"][i]["exp_avg"], today["state"][i]["exp_avg"])
    assert upgrade_optimizer_state(today, names, 4) is today  # today's checkpoints: unchanged
    fresh = torch.optim.Adam(model.parameters(), lr=1e-3)
    fresh.load_state_dict(got)
    fresh.step()  # shapes line up


def test_a_checkpoint_written_before_the_change_resumes(tmp_path) -> None:
    """A training checkpoint as older versions wrote it (version-2 manifest config, old names in
    the model and EMA files, optimizer positions in the old order) loads with everything in place."""
    import hashlib

    from safetensors.torch import save_file

    from fractalkit.training import EMA, load_checkpoint, save_checkpoint

    model = Fractal.from_config(_v4())
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    model.loss(torch.randint(0, 256, (2, 3, 4, 4)), torch.tensor([1, 2])).total.backward()
    opt.step()
    ema = EMA(model, decay=0.5)
    folder = save_checkpoint(tmp_path / "ck", model, step=1, optimizer=opt, ema=ema)
    names = [n for n, _ in model.named_parameters()]
    old_order = ["conditioner.null_embedding", *names[:-2], "conditioner.class_embedding.weight"]
    v2 = {k: v for k, v in _v4().items() if k not in ("conditioner", "plugins")}
    v2 |= {"version": 2, "num_classes": 7, "label_drop": 0.2}

    def old_names(state):
        return {k.removeprefix("conditioner."): v.contiguous() for k, v in state.items()}

    meta = {"fractalkit_config": json.dumps(v2)}
    save_file(old_names(model.state_dict()), str(folder / "model.safetensors"), metadata=meta)
    with ema.applied(model):
        save_file(old_names(model.state_dict()), str(folder / "ema.safetensors"), metadata=meta)
    trainer = torch.load(folder / "trainer.pt", weights_only=True)
    today = trainer["optimizer"]
    trainer["optimizer"] = {"param_groups": today["param_groups"],
                            "state": {i: today["state"][names.index(n)] for i, n in enumerate(old_order)}}
    torch.save(trainer, folder / "trainer.pt")
    manifest = json.loads((folder / "MANIFEST.json").read_text())
    manifest["config"] = v2
    for name in manifest["files"]:
        data = (folder / name).read_bytes()
        manifest["files"][name] = {"bytes": len(data), "sha256": hashlib.sha256(data).hexdigest()}
    (folder / "MANIFEST.json").write_text(json.dumps(manifest))

    ck = load_checkpoint(folder)
    assert ck.config == model.config.to_dict()
    assert all(torch.equal(ck.model.state_dict()[k], v) for k, v in model.state_dict().items())
    assert set(ck.ema) == set(names) and torch.equal(
        ck.ema["conditioner.null_embedding"], ema.shadow["conditioner.null_embedding"])
    for i in today["state"]:
        assert torch.equal(ck.optimizer["state"][i]["exp_avg"], today["state"][i]["exp_avg"])


def test_a_hub_folder_written_before_the_change_loads(tmp_path) -> None:
    from safetensors.torch import save_file

    model = Fractal.from_config(_v4()).eval()
    folder = model.save_pretrained(tmp_path / "m")
    v2 = {k: v for k, v in _v4().items() if k not in ("conditioner", "plugins")}
    v2 |= {"version": 2, "num_classes": 7, "label_drop": 0.2}
    state = {k.removeprefix("conditioner."): v.contiguous() for k, v in model.state_dict().items()}
    save_file(state, str(folder / "model.safetensors"), metadata={"fractalkit_config": json.dumps(v2)})
    (folder / "config.json").write_text(json.dumps(v2, indent=2))
    loaded = Fractal.from_pretrained(folder)
    assert loaded.config == model.config
    assert all(torch.equal(loaded.state_dict()[k], v) for k, v in model.state_dict().items())
