"""Bad inputs at the conditioning boundary (issue 21, class 5): a conditioner's output is checked
where the ``Fractal`` receives it, the built-in conditioner configs refuse wrong types and ranges,
and ``SampleOptions`` refuses malformed fields, each with a message naming what was wrong.
"""

from __future__ import annotations

import dataclasses
from typing import Any, ClassVar

import pytest
import torch
from torch import nn

from fractalkit import (
    ARLevelConfig,
    CategoricalLeafConfig,
    ClassLabel,
    Conditioner,
    ConditionerConfig,
    Fractal,
    SampleOptions,
    Sequence,
    SequenceChunks,
    Vector,
    register_config,
)
from fractalkit.config import BuildContext

E, V, WIDTH = 3, 3, 8


class FaultyConditioner(Conditioner):
    """Returns what ``fault`` says instead of a good ``[N, D]`` embedding of a float ``[N]``."""

    def __init__(self, width: int, tokens: int, fault: str) -> None:
        super().__init__(width, tokens, drop=0.0)
        self.fault = fault
        self.null_embedding = nn.Parameter(torch.zeros(1, width))
        self.proj = nn.Linear(1, width)

    def check(self, c: Any, n: int | None) -> int:
        return int(c.shape[0])

    def embed(self, c: Any, *, drop: bool, generator: torch.Generator | None) -> Any:
        e = self.proj(c[:, None].to(self.proj.weight.dtype))  # [N, D]
        n, d = e.shape
        return {
            "width": lambda: e[:, : d - 1],
            "tokens": lambda: e[:, None].expand(n, 3, d),
            "count": lambda: e[:1],
            "rank4": lambda: e[:, None, None],
            "rank1": lambda: e.sum(1),
            "int": lambda: e.long(),
            "bool": lambda: e > 0,
            "nan": lambda: e * float("nan"),
            "inf": lambda: e + float("inf"),
            "numpy": lambda: e.detach().numpy(),
            "none": lambda: None,
        }[self.fault]()


@register_config
@dataclasses.dataclass(frozen=True)
class Faulty(ConditionerConfig):
    kind: ClassVar[str] = "test_boundary_faulty"
    fault: str = "width"

    def build(self, ctx: BuildContext) -> FaultyConditioner:
        return FaultyConditioner(ctx.cond_dim, ctx.cond_tokens, self.fault)


def model_with(fault: str) -> Fractal:
    torch.manual_seed(0)
    return Fractal(
        [(SequenceChunks(E, 1), ARLevelConfig(width=WIDTH, depth=1, heads=2))],
        leaf=CategoricalLeafConfig(num_values=V),
        conditioner=Faulty(fault),
    ).eval()


FAULTS = {  # fault -> (exception, words the message must hold)
    "width": (ValueError, ["[2, 1, 7]", "D=8"]),
    "tokens": (ValueError, ["[2, 3, 8]", "T=1"]),
    "count": (ValueError, ["[1, 8]", "N=2"]),
    "rank4": (ValueError, ["[2, 1, 1, 8]"]),
    "rank1": (ValueError, ["[2]"]),
    "int": (TypeError, ["torch.int64", "floating"]),
    "bool": (TypeError, ["torch.bool", "floating"]),
    "nan": (ValueError, ["non-finite"]),
    "inf": (ValueError, ["non-finite"]),
    "numpy": (TypeError, ["ndarray"]),
    "none": (TypeError, ["NoneType"]),
}
CALLS = {
    "log_prob": lambda m, c: m.log_prob(torch.zeros(2, E, dtype=torch.long), c),
    "loss": lambda m, c: m.loss(torch.zeros(2, E, dtype=torch.long), c),
    "sample": lambda m, c: m.sample(2, c),
}


@pytest.mark.parametrize("call", sorted(CALLS))
@pytest.mark.parametrize("fault", sorted(FAULTS))
def test_a_bad_conditioner_output_is_refused_naming_the_conditioner(fault: str, call: str) -> None:
    exc, words = FAULTS[fault]
    model = model_with(fault)
    with pytest.raises(exc) as info:
        CALLS[call](model, torch.tensor([0.5, 1.5]))
    message = str(info.value)
    assert "FaultyConditioner" in message and "'test_boundary_faulty'" in message, message
    for word in words:
        assert word in message, (word, message)


def test_a_float_output_of_another_dtype_is_cast_to_the_model() -> None:
    """A float64 model whose conditioner returns float32 works as if it returned float64."""
    model = model_with("width").double()  # any fault: replaced below

    class Cast(FaultyConditioner):
        def embed(self, c: Any, *, drop: bool, generator: torch.Generator | None) -> Any:
            return self.proj(c[:, None].to(self.proj.weight.dtype)).float()

    good = Cast(WIDTH, 1, "width").double()
    good.load_state_dict(model.conditioner.state_dict())
    model.conditioner = good
    x, c = torch.zeros(2, E, dtype=torch.long), torch.tensor([0.5, 1.5], dtype=torch.float64)
    lp = model.log_prob(x, c).value
    assert lp.dtype == torch.float64 and torch.isfinite(lp).all()


CONFIG_CASES = [  # (constructor, exception, the argument's name)
    (lambda: Vector("3"), TypeError, "dim"),
    (lambda: Vector(2.0), TypeError, "dim"),
    (lambda: Vector(True), TypeError, "dim"),
    (lambda: Vector(-1), ValueError, "dim"),
    (lambda: Vector(2, drop="0.1"), TypeError, "drop"),
    (lambda: Vector(2, drop=True), TypeError, "drop"),
    (lambda: Vector(2, drop=-0.1), ValueError, "drop"),
    (lambda: Vector(2, drop=float("nan")), ValueError, "drop"),
    (lambda: Vector(2, feature_drop="x"), TypeError, "feature_drop"),
    (lambda: Vector(2, feature_drop=1.0), ValueError, "feature_drop"),
    (lambda: Vector(2, mean="ab"), TypeError, "mean"),
    (lambda: Vector(2, mean=3.0), TypeError, "mean"),
    (lambda: Vector(2, std=("1", "2")), TypeError, "std"),
    (lambda: Vector(2, std=(1.0,)), ValueError, "std"),
    (lambda: Sequence("4", vocab=5), TypeError, "max_len"),
    (lambda: Sequence(4, vocab=2.5), TypeError, "vocab"),
    (lambda: Sequence(4, vocab=True), TypeError, "vocab"),
    (lambda: Sequence(4, vocab=-3, features=2), ValueError, "vocab"),
    (lambda: Sequence(4, features="2"), TypeError, "features"),
    (lambda: Sequence(4, vocab=5, depth="2"), TypeError, "depth"),
    (lambda: Sequence(4, vocab=5, depth=-1), ValueError, "depth"),
    (lambda: Sequence(4, vocab=5, heads=0), ValueError, "heads"),
    (lambda: Sequence(4, vocab=5, heads=2.0), TypeError, "heads"),
    (lambda: Sequence(4, vocab=5, drop="0.1"), TypeError, "drop"),
    (lambda: Sequence(4, vocab=5, drop=1), ValueError, "drop"),
    (lambda: ClassLabel("10"), TypeError, "num_classes"),
    (lambda: ClassLabel(True), TypeError, "num_classes"),
    (lambda: ClassLabel(0), ValueError, "num_classes"),
    (lambda: ClassLabel(10, drop="0.1"), TypeError, "drop"),
    (lambda: ClassLabel(10, drop=-0.5), ValueError, "drop"),
    (lambda: ClassLabel(10, drop=1.5), ValueError, "drop"),
    (lambda: Fractal([(SequenceChunks(E, 1), ARLevelConfig(width=WIDTH, depth=1, heads=2))],
                     leaf=CategoricalLeafConfig(num_values=V), num_classes=3, label_drop="0.1"),
     TypeError, "label_drop"),
]


@pytest.mark.parametrize("case", range(len(CONFIG_CASES)))
def test_conditioner_configs_refuse_bad_arguments(case: int) -> None:
    make, exc, name = CONFIG_CASES[case]
    with pytest.raises(exc, match=rf"\b{name}\b"):
        make()


OPTION_CASES = [  # (fields, exception, the field's name)
    ({"steps": 5}, TypeError, "steps"),
    ({"steps": "64"}, TypeError, "steps"),
    ({"steps": 2.5}, TypeError, "steps"),
    ({"steps": (0,)}, ValueError, "steps"),
    ({"steps": (2.0,)}, ValueError, "steps"),
    ({"kv_cache": "no"}, TypeError, "kv_cache"),
    ({"kv_cache": 0}, TypeError, "kv_cache"),
    ({"callback": "os.system"}, TypeError, "callback"),
    ({"callback": 3}, TypeError, "callback"),
    ({"constraint": "x"}, TypeError, "constraint"),
    ({"temperature": "1.0"}, TypeError, "temperature"),
    ({"temperature": 0}, ValueError, "temperature"),
    ({"guidance": -1.0}, ValueError, "guidance"),
    ({"guidance": float("nan")}, ValueError, "guidance"),
    ({"filter_threshold": 1.0}, ValueError, "filter_threshold"),
    ({"guidance_schedule": "cosine"}, ValueError, "guidance_schedule"),
]


@pytest.mark.parametrize("case", range(len(OPTION_CASES)))
def test_sample_options_refuse_bad_fields(case: int) -> None:
    fields, exc, name = OPTION_CASES[case]
    with pytest.raises(exc, match=rf"\b{name}\b"):
        SampleOptions(**fields)
    with pytest.raises(exc, match=rf"\b{name}\b"):  # the keyword spelling of model.sample
        SampleOptions.make(None, **fields)


def _plain_model() -> Fractal:
    torch.manual_seed(0)
    return Fractal([(SequenceChunks(E, 1), ARLevelConfig(width=WIDTH, depth=1, heads=2))],
                   leaf=CategoricalLeafConfig(num_values=V), num_classes=3).eval()


CALL_CASES = {  # bools and floats where a count belongs (True was 1 sample / 1 draw)
    "sample_num_samples_bool": (lambda m: m.sample(True), TypeError, "num_samples"),
    "sample_num_samples_float": (lambda m: m.sample(2.0), TypeError, "num_samples"),
    "sample_num_samples_bool_with_labels": (lambda m: m.sample(True, y=torch.tensor([1])), TypeError, "num_samples"),
    "log_prob_num_draws_bool": (lambda m: m.log_prob(torch.zeros(1, E, dtype=torch.long), num_draws=True),
                                ValueError, "num_draws"),
}


@pytest.mark.parametrize("case", sorted(CALL_CASES))
def test_fractal_calls_refuse_bools_as_counts(case: str) -> None:
    call, exc, name = CALL_CASES[case]
    with pytest.raises(exc, match=rf"\b{name}\b"):
        call(_plain_model())
