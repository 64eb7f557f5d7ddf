"""Behaviour pinned before the level base took over decoding (issue 11): same numbers today.

``tests/fixtures/make_pinned.py`` recorded, on the code before the refactor and in float64, the
log-probabilities (exact, estimated, explicit masks, step by step), losses and samples from
fixed seeds of ten tiny fractals covering every level, leaf and partitioner kind, plus one file
written by ``Fractal.save`` (format version 1). Here the current code recomputes all of it from
the same weights: likelihoods agree to 1e-12 and samples (and the callback's canvases) are
identical.
"""

from __future__ import annotations

import importlib.util
import json
import math
from pathlib import Path

import pytest
import torch

from fractalkit import Fractal

HERE = Path(__file__).resolve().parent / "fixtures"
_spec = importlib.util.spec_from_file_location("make_pinned", HERE / "make_pinned.py")
make_pinned = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(make_pinned)

REFERENCE = json.loads(make_pinned.REFERENCE.read_text())
CASES = sorted(k for k in REFERENCE if not k.startswith("_"))


def _model(name: str) -> Fractal:
    from safetensors.torch import load_file

    weights = load_file(str(make_pinned.WEIGHTS))
    prefix = name + "/"
    state = {k[len(prefix):]: v for k, v in weights.items() if k.startswith(prefix)}
    model = Fractal.from_config(REFERENCE[name]["config"])
    model.load_state_dict(state)
    return model.double().eval()


def _close(got, want, path: str) -> None:
    if isinstance(want, dict):
        assert set(got) == set(want), path
        for k in want:
            _close(got[k], want[k], f"{path}.{k}")
    elif isinstance(want, list):
        assert len(got) == len(want), path
        for i, (a, b) in enumerate(zip(got, want, strict=True)):
            _close(a, b, f"{path}[{i}]")
    elif isinstance(want, float):
        assert math.isclose(got, want, rel_tol=1e-12, abs_tol=1e-12), f"{path}: {got} != {want}"
    else:
        assert got == want, f"{path}: {got!r} != {want!r}"


def _as_version_1(config: dict) -> dict:
    """A current config without what format 2 added (MAR levels' ``guide_input``, default)."""
    config = json.loads(json.dumps(config))
    assert config["version"] == 2
    config["version"] = 1
    for entry in config["levels"]:
        if entry["level"]["kind"] == "mar":
            assert entry["level"].pop("guide_input") == "rounded"
    return config


@pytest.mark.parametrize("name", CASES)
def test_pinned_behaviour(name):
    model = _model(name)
    assert model.config == type(model.config).from_dict(REFERENCE[name]["config"])
    got = make_pinned.record(model)
    want = {k: v for k, v in REFERENCE[name].items() if k != "config"}
    _close(got, want, name)


def test_format_v1_file_loads():
    """A file written by ``Fractal.save`` before issue 11 loads and scores as it did."""
    model = Fractal.load(make_pinned.FORMAT_V1).double().eval()
    ref = REFERENCE["_format_v1"]
    lp = model.log_prob(torch.tensor(ref["x"]), torch.tensor(ref["y"]), orders="identity")
    assert math.isclose(lp.value.item(), ref["log_prob_identity"], rel_tol=1e-12)
