"""Files written before issue 20's redesign load and give the numbers they gave then.

``tests/fixtures/legacy/recording.py`` wrote one ``Fractal.save`` file per conditioner kind
(class labels, none, a vector, a token sequence), a guiding-pixel model and two graph models
(slot kinds; graph-neighbour MAR) at commit 686a446, with float64 log-probabilities under
identity orders and a sample drawn from a seed. Today's code must load each through its one
load-time conversion (:mod:`fractalkit.legacy`) and reproduce both: likelihoods to 1e-12,
samples identical.
"""

from __future__ import annotations

import importlib.util
import json
import math
from pathlib import Path

import pytest
import torch

from fractalkit import Fractal

HERE = Path(__file__).resolve().parent / "fixtures" / "legacy"
_spec = importlib.util.spec_from_file_location("recording", HERE / "recording.py")
recording = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(recording)

REFERENCE = json.loads((HERE / "reference.json").read_text())


@pytest.mark.parametrize("name", sorted(REFERENCE))
def test_legacy_file_loads_with_its_numbers(name):
    ref = REFERENCE[name]
    model = Fractal.load(HERE / f"{name}.safetensors")
    x = torch.tensor(ref["x"])
    c = recording.condition_from_json(ref["c"])
    got = recording.record(model, x, c)
    for a, b in zip(got["log_prob_identity"], ref["log_prob_identity"], strict=True):
        assert math.isclose(a, b, rel_tol=1e-12, abs_tol=1e-12), (name, a, b)
    assert got["sample"] == ref["sample"], name


@pytest.mark.parametrize("name", sorted(REFERENCE))
def test_legacy_state_dict_loads_into_a_model_built_from_its_config(name):
    """``load_state_dict`` of an old-named dict (as tests/test_pinned.py does) works too."""
    from safetensors import safe_open
    from safetensors.torch import load_file

    path = HERE / f"{name}.safetensors"
    with safe_open(str(path), framework="pt") as f:
        config = json.loads(f.metadata()["fractalkit_config"])
    model = Fractal.from_config(config)
    model.load_state_dict(load_file(str(path)))
    loaded = Fractal.load(path)
    mine, theirs = model.state_dict(), loaded.state_dict()
    assert mine.keys() == theirs.keys()
    assert all(torch.equal(mine[k], theirs[k]) for k in mine)
