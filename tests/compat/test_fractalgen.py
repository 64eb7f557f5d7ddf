"""The FractalGen converter against tensors the official code produced (tests/fixtures/fractalgen).

- Each tiny fixture model converts and reproduces the official teacher-forced forward: every leaf
  logit (conditional and unconditional) within 1e-5, the conditions handed down within 1e-5, the
  loss within 1e-6, in float32 on the CPU.
- Each released state dict's names and shapes (the manifests) convert on the meta device with no
  unmatched tensor, to a model with the original's parameter count and the preset's config.
- Files that are not FractalGen checkpoints, and state dicts with a missing, unexpected or
  mis-shaped tensor, fail with an error naming the tensor.
"""

from __future__ import annotations

import argparse
import copy
import json
import math
import re
from pathlib import Path

import pytest
import torch

from fractalkit import ARLevelConfig, Fractal, ImagePatches, MARLevelConfig, RGBLeafConfig
from fractalkit.imagenet import convert as fg

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures" / "fractalgen"  # in the repository
TINY = ("tiny_ar_16", "tiny_mar_16")
TINY_HEADS = (4, 4, 2)  # num_heads_list of both fixtures (config.json); not in the shapes
MANIFESTS = {
    "fractalar-in64": "fractalar_in64.json",
    "fractalmar-in64": "fractalmar_in64.json",
    "fractalmar-base-in256": "fractalmar_base_in256.json",
    "fractalmar-large-in256": "fractalmar_large_in256.json",
    "fractalmar-huge-in256": "fractalmar_huge_in256.json",
}


def _need(path: Path) -> Path:
    # the fixtures are part of the repository: a missing one is a failure, never a skip
    assert path.exists(), f"fixture file missing: {path} (tests/fixtures/fractalgen/README.md)"
    return path


def _load_fixture(name: str):
    from safetensors.torch import load_file

    folder = FIXTURES / name
    state = load_file(str(_need(folder / "state_dict.safetensors")))
    io = load_file(str(_need(folder / "io.safetensors")))
    return state, io


@pytest.fixture(scope="module", params=TINY)
def tiny(request):
    state, io = _load_fixture(request.param)
    model = fg.load_fractalgen(state, heads=TINY_HEADS)
    return request.param, model, io


def _masks(io, model):
    return [io.get(f"mask_level{i}") for i in range(len(model.levels) - 1)]


# ---- the official forward, reproduced ---------------------------------------------------------


def test_tiny_model_structure(tiny):
    """The architecture read from the fixture's shapes is the one its config.json describes."""
    name, model, _ = tiny
    cfg = json.loads((FIXTURES / name / "config.json").read_text())
    assert sum(p.numel() for p in model.parameters()) == cfg["weights"]["num_params"]
    if name == "tiny_ar_16":
        configs = [ARLevelConfig(width=w, depth=2, heads=4, block="llama", rope=True) for w in (64, 32)]
    else:
        configs = [MARLevelConfig(width=w, depth=2, heads=4, neighbours=True) for w in (64, 32)]
    expected = Fractal(
        [(ImagePatches(16, 4), configs[0]), (ImagePatches(4, 1), configs[1])],
        leaf=RGBLeafConfig(width=16, depth=1, heads=2, channel_weights=(5.0, 1.0, 1.0)),
        num_classes=10,
        value_mean=(0.485, 0.456, 0.406),
        value_std=(0.229, 0.224, 0.225),
    )
    assert model.config == expected.config
    assert model.top_tokens == (1 if name == "tiny_ar_16" else 5)  # AR reads 1 token, MAR all 5
    assert not model.training


@pytest.mark.parametrize("conditional", [False, True], ids=["uncond", "cond"])
def test_tiny_leaf_logits_and_loss(tiny, conditional):
    """All leaf logits within 1e-5 and the loss within 1e-6 of the official forward."""
    _, model, io = tiny
    suffix = "_cond" if conditional else ""
    y = io["labels"] if conditional else None  # the official eval forward uses fake_latent
    lp, logits = fg.teacher_forced_leaf_logits(model, io["images"], y, _masks(io, model))
    ref = io["leaf_logits" + suffix]
    assert logits.shape == ref.shape
    assert logits.dtype == torch.float32
    assert (logits - ref).abs().max().item() < 1e-5
    # The official loss: mean over leaf rows of (CE_R + CE_G + CE_B) / 3, from fractalkit's own
    # per-image log-likelihoods (summed over exactly those leaves).
    loss = -lp.value.double().sum() / ref[..., 0].numel()
    assert abs(loss.item() - io["loss" + suffix].item()) < 1e-6
    # The logits score the fixture's targets: the leaf saw the images' own 8-bit values.
    ce = torch.nn.functional.cross_entropy(logits.double().flatten(0, 1), io["leaf_targets"].flatten())
    assert abs(ce.item() - io["loss" + suffix].item()) < 1e-6


def test_ar_fixture_loss_is_log_prob():
    """For AR levels the official loss is the images' exact NLL: ``Fractal.log_prob`` gives it."""
    state, io = _load_fixture("tiny_ar_16")
    model = fg.load_fractalgen(state, heads=TINY_HEADS)
    with torch.no_grad():
        for y, suffix in [(None, ""), (io["labels"], "_cond")]:
            lp = model.log_prob(io["images"], y)
            assert lp.kind == "exact"
            nats_per_dim = -lp.value.double().sum() / io["images"].numel()
            assert abs(nats_per_dim.item() - io["loss" + suffix].item()) < 1e-6


def test_tiny_float64_agrees(tiny):
    """In float64 the model follows its dtype and stays within the official float32 noise
    (the fixture README measured the official code's float64-vs-float32 gap at <= 4.3e-7)."""
    _, model, io = tiny
    model64 = copy.deepcopy(model).double()
    lp, logits = fg.teacher_forced_leaf_logits(model64, io["images"], None, _masks(io, model))
    assert logits.dtype == lp.value.dtype == torch.float64
    assert (logits - io["leaf_logits"].double()).abs().max().item() < 1e-6
    loss = -lp.value.sum() / logits[..., 0].numel()
    assert abs(loss.item() - io["loss"].item()) < 1e-6


def test_tiny_conditions_handed_down(tiny):
    """The conditions level 0 hands level 1, and level 1 the leaf, match the official ones."""
    _, model, io = tiny
    seen = {}
    child, leaf = model.root.child, model.leaf
    inner_score, inner_logits = child.score, leaf.element_logits

    def score(x, cond, ctx):
        seen["level0"] = cond
        return inner_score(x, cond, ctx)

    def element_logits(x, cond):
        seen["level1"] = cond
        return inner_logits(x, cond)

    child.score, leaf.element_logits = score, element_logits
    try:
        with torch.no_grad():
            fg.teacher_forced(model, io["images"], None, _masks(io, model))
    finally:
        del child.score, leaf.element_logits
    for level in ("level0", "level1"):
        ref = io[f"cond_{level}"]
        assert seen[level].shape == ref.shape, level
        assert (seen[level] - ref).abs().max().item() < 1e-5, level


def test_convert_cli_roundtrip(tmp_path):
    """A .pth with the original layout (state dict under "model" beside an argparse Namespace)
    converts through the command line; ``Fractal.load`` of the result gives the same logits."""
    state, io = _load_fixture("tiny_mar_16")
    src, dst = tmp_path / "checkpoint-last.pth", tmp_path / "tiny.safetensors"
    torch.save({"model": state, "args": argparse.Namespace(model="tiny", cfg=1.0)}, src)
    assert fg.main(["convert", str(src), str(dst), "--heads", "4,4,2"]) == 0
    model = Fractal.load(dst).eval()
    _, logits = fg.teacher_forced_leaf_logits(model, io["images"], None, _masks(io, model))
    assert (logits - io["leaf_logits"]).abs().max().item() < 1e-5
    with pytest.raises(fg.FractalGenFormatError, match=r"converted already.*Fractal\.load"):
        fg.load_fractalgen(dst)


def test_pickle_with_code_is_refused_unless_trusted(tmp_path):
    """An object the restricted loader does not allow is refused, naming the escape hatch."""
    state, _ = _load_fixture("tiny_ar_16")
    src = tmp_path / "odd.pth"
    torch.save({"model": state, "args": _Opaque()}, src)
    with pytest.raises(fg.FractalGenFormatError, match="trust_pickle"):
        fg.load_state_dict(src)
    with pytest.warns(UserWarning, match="arbitrary code"):
        loaded = fg.load_state_dict(src, trust_pickle=True)
    assert set(loaded) == set(state)


class _Opaque:
    """A class torch's weights-only unpickler does not know."""


# ---- the released checkpoints' names and shapes -------------------------------------------------


def _manifest(name: str) -> tuple[dict, dict[str, torch.Tensor]]:
    data = json.loads(_need(FIXTURES / "manifests" / MANIFESTS[name]).read_text())
    state = {k: torch.empty(shape, device="meta") for k, shape in data["tensors"].items()}
    return data, state


@pytest.mark.parametrize("name", sorted(MANIFESTS))
def test_manifest_converts_completely(name):
    """Every released tensor maps to a parameter (and back); the counts match the original."""
    data, state = _manifest(name)
    assert fg.identify(state) == name
    with torch.device("meta"):
        model = Fractal.from_config(fg.config_from_state_dict(state))
    converted = fg.convert_state_dict(state, model)
    assert set(converted) == set(model.state_dict())
    assert sum(p.numel() for p in model.parameters()) == data["num_params"]
    assert fg.RELEASED[name].num_params == data["num_params"]
    table = fg.name_table(model)
    assert set(table) == set(state)
    for orig, (target, _) in table.items():  # the name-only map agrees with the model's
        assert fg.fractalkit_name(orig) == target


@pytest.mark.parametrize("name", sorted(MANIFESTS))
def test_manifest_matches_preset(name):
    """The architecture read from the shapes is exactly the preset's config."""
    presets = pytest.importorskip("fractalkit.imagenet.presets")
    _, state = _manifest(name)
    assert fg.config_from_state_dict(state) == presets.PRESETS[name].config
    assert fg.published_options(name) == presets.PRESETS[name].sampling


def test_published_options_invert_temperature():
    """The original multiplies logits by T; fractalkit divides: 1.02 there is 1/1.02 here."""
    opts = fg.published_options("fractalmar-in64")
    assert math.isclose(opts.temperature, 1 / 1.02)
    assert (opts.guidance, opts.guidance_schedule, opts.steps) == (6.5, "linear", (64, 16))
    assert opts.filter_threshold == 1e-4
    assert math.isclose(fg.published_options("fractalar-in64").temperature, 1 / 1.03)
    large = fg.published_options("fractalmar-large-in256")
    assert (large.guidance, large.steps) == (21.0, (64, 16, 16))
    with pytest.raises(KeyError, match="fractalmar-xl-in256"):
        fg.published_options("fractalmar-xl-in256")


def test_huge_and_base_settings_from_the_original_readme():
    """FractalMAR-H-256: the README's "Evaluate pre-trained FractalMAR-Huge" command (cfg 19.0,
    linear, T 1.1, 64,16,16); FractalMAR-B-256: its FID-optimal guidance 29.0, the rest assumed
    as for L and H, and labelled so. Not Large's 21.0 any more."""
    huge = fg.published_options("fractalmar-huge-in256")
    assert (huge.guidance, huge.guidance_schedule, huge.steps) == (19.0, "linear", (64, 16, 16))
    assert math.isclose(huge.temperature, 1 / 1.1)
    base = fg.published_options("fractalmar-base-in256")
    assert (base.guidance, base.guidance_schedule, base.steps) == (29.0, "linear", (64, 16, 16))
    assert math.isclose(base.temperature, 1 / 1.1)
    sources = fg.RELEASED["fractalmar-huge-in256"].sampling.sources
    assert all("Evaluate pre-trained FractalMAR-Huge" in sources[k]
               for k in ("guidance", "schedule", "temperature", "steps"))
    assert "--cfg 19.0" in sources["guidance"]
    base_rec = fg.RELEASED["fractalmar-base-in256"].sampling
    assert "`29.0` for FractalMAR-Base" in base_rec.sources["guidance"]
    assert set(base_rec.assumed) == {"schedule", "temperature", "steps"}
    for name, rec in fg.RELEASED.items():  # every figure of every model names its source
        assert set(rec.sampling.sources) == {"guidance", "schedule", "temperature", "steps",
                                             "filter_threshold"} - ({"steps"} if rec.kind == "ar" else set())
        assert rec.sampling.assumed == (() if name != "fractalmar-base-in256" else base_rec.assumed)


# ---- bad input ---------------------------------------------------------------------------------


def test_not_a_checkpoint(tmp_path):
    garbage = tmp_path / "notes.pth"
    garbage.write_bytes(b"these are not the weights you are looking for")
    with pytest.raises(fg.FractalGenFormatError, match=r"notes\.pth"):
        fg.load_state_dict(garbage)
    other = tmp_path / "other.pth"
    torch.save({"state_dict": {"encoder.weight": torch.zeros(2)}, "epoch": 3}, other)
    with pytest.raises(fg.FractalGenFormatError, match="no 'model' entry"):
        fg.load_state_dict(other)
    with pytest.raises(fg.FractalGenFormatError, match=r"encoder\.weight"):
        fg.load_fractalgen({"encoder.weight": torch.zeros(2)})
    with pytest.raises(FileNotFoundError):
        fg.load_state_dict(tmp_path / "absent.pth")


def _tiny_state() -> dict[str, torch.Tensor]:
    return _load_fixture("tiny_ar_16")[0]


@pytest.mark.parametrize(
    "drop",
    [
        "next_fractal.generator.blocks.1.attention.wo.weight",
        "next_fractal.next_fractal.g_mlm.bias",
        "fake_latent",
        "generator.pos_embed_learned",
    ],
)
def test_missing_tensor_is_named(drop):
    state = _tiny_state()
    del state[drop]
    with pytest.raises(fg.FractalGenFormatError, match=re.escape(drop)):
        fg.load_fractalgen(state, heads=TINY_HEADS)


def test_misshaped_and_unexpected_tensors_are_named():
    state = _tiny_state()
    state["next_fractal.generator.cond_emb.weight"] = torch.zeros(32, 63)
    with pytest.raises(fg.FractalGenFormatError, match=r"next_fractal\.generator\.cond_emb\.weight.*\[32, 63\]"):
        fg.load_fractalgen(state, heads=TINY_HEADS)
    state = _tiny_state()
    state["next_fractal.next_fractal.r_mlm.bias"] = torch.zeros(256)
    with pytest.raises(fg.FractalGenFormatError, match=r"r_mlm\.bias.*\[1, 256\]"):
        fg.load_fractalgen(state, heads=TINY_HEADS)
    state = _tiny_state()
    state["generator.blocks.0.attention.extra"] = torch.zeros(3)
    with pytest.raises(fg.FractalGenFormatError, match=r"generator\.blocks\.0\.attention\.extra"):
        fg.load_fractalgen(state, heads=TINY_HEADS)


@pytest.mark.parametrize(
    ("name", "shape"),
    [
        ("generator.patch_emb.weight", (65, 48)),  # a width the other level-0 tensors outvote
        ("next_fractal.next_fractal.ln.weight", (17,)),  # a leaf width likewise
        ("generator.pos_embed_learned", (1, 18, 64)),  # 17 children: not a square grid
        ("next_fractal.generator.patch_emb.weight", (32, 47)),  # not an RGB patch
        ("class_emb.weight", (10, 63)),
    ],
)
def test_misshaped_structural_tensor_is_named(name, shape):
    """Tensors the architecture is read from are named too when their shape is off."""
    state = _tiny_state()
    state[name] = torch.zeros(shape)
    with pytest.raises(fg.FractalGenFormatError, match=re.escape(name)):
        fg.load_fractalgen(state, heads=TINY_HEADS)


def test_heads_are_required_for_unreleased_architectures():
    with pytest.raises(fg.FractalGenFormatError, match="heads"):
        fg.load_fractalgen(_tiny_state())
    with pytest.raises(fg.FractalGenFormatError, match="not 'fractalmar-in64'"):
        fg.load_fractalgen(_tiny_state(), preset="fractalmar-in64")


# ---- the old import path ---------------------------------------------------------------------


def test_old_module_path_is_a_deprecated_alias_that_still_runs(tmp_path):
    """``fractalkit.compat.fractalgen`` re-exports the converter with a DeprecationWarning on
    import, and ``python -m fractalkit.compat.fractalgen convert ...`` runs the same main()."""
    import importlib
    import os
    import subprocess
    import sys

    sys.modules.pop("fractalkit.compat.fractalgen", None)
    with pytest.warns(DeprecationWarning, match="fractalkit.imagenet.convert"):
        old = importlib.import_module("fractalkit.compat.fractalgen")
    assert old.main is fg.main and old.published_options is fg.published_options
    env = {**os.environ, "PYTHONPATH": str(Path(fg.__file__).resolve().parents[2])}
    for module in ("fractalkit.compat.fractalgen", "fractalkit.imagenet.convert"):
        done = subprocess.run(
            [sys.executable, "-W", "error", "-m", module, "convert", str(tmp_path / "none.pth"),
             str(tmp_path / "out.safetensors")],
            capture_output=True, text=True, env=env, timeout=300,
        )
        assert done.returncode == 1, done.stderr
        assert "no file at" in done.stderr and "Warning" not in done.stderr
