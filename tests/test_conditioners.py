"""Conditioners (issue 12): every built-in and a user one normalise, guide, drop, save and refuse
bad conditions with clear errors; class-label models keep their names and numbers
(``tests/test_pinned.py`` pins those against the code before conditioners).

The chi-square helper comes from ``tests/contract/stats.py`` (moving to
``fractalkit.testing.stats`` with the contract kit).
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any, ClassVar

import pytest
import torch
from contract.examples import roughen
from torch import nn

from fractalkit import (
    ARLevelConfig,
    CategoricalLeafConfig,
    ClassLabel,
    Conditioner,
    ConditionerConfig,
    Fractal,
    MARLevelConfig,
    Sequence,
    SequenceChunks,
    Vector,
    register_config,
)
from fractalkit.conditioners import Padded, check_instances
from fractalkit.config import BuildContext
from fractalkit.data import all_configurations, configuration_index
from fractalkit.sampling.guidance import guided_logits
from fractalkit.testing import chi_square

E, V = 3, 3  # three elements of three values: 27 configurations


class ScalarConditioner(Conditioner):
    """A user conditioner: one float per instance -> sinusoidal features -> a linear map."""

    def __init__(self, width: int, tokens: int, config: Scalar) -> None:
        super().__init__(width, tokens, drop=config.drop)
        self.frequencies = config.frequencies
        self.null_embedding = nn.Parameter(torch.randn(1, width) * 0.02) if config.null else None
        self.proj = nn.Linear(2 * config.frequencies, width)

    def check(self, c: Any, n: int | None) -> int:
        if not isinstance(c, torch.Tensor) or not c.dtype.is_floating_point or c.dim() != 1:
            raise TypeError(f"Scalar: expected a float tensor [N], got {c!r:.60}")
        if not bool(torch.isfinite(c).all()):
            raise ValueError("Scalar: non-finite values")
        return check_instances(c, n, "Scalar")

    def embed(self, c: Any, *, drop: bool, generator: torch.Generator | None) -> torch.Tensor:
        k = torch.arange(1, self.frequencies + 1, dtype=self.proj.weight.dtype)
        phase = c.to(self.proj.weight.dtype)[:, None] * k
        return self.proj(torch.cat([phase.sin(), phase.cos()], -1))


@register_config
@dataclasses.dataclass(frozen=True)
class Scalar(ConditionerConfig):
    kind: ClassVar[str] = "test_scalar"
    frequencies: int = 3
    drop: float = 0.1
    null: bool = True

    def build(self, ctx: BuildContext) -> ScalarConditioner:
        return ScalarConditioner(ctx.cond_dim, ctx.cond_tokens, self)


def conditions(kind: str, n: int, seed: int = 0) -> Any:
    """``n`` conditions of each conditioner kind (deterministic)."""
    g = torch.Generator().manual_seed(seed)
    if kind == "class_label":
        return torch.randint(0, 4, (n,), generator=g)
    if kind == "vector":
        return torch.randn(n, 2, generator=g, dtype=torch.float64) * 2
    if kind == "vector_missing":
        values = torch.randn(n, 2, generator=g, dtype=torch.float64)
        missing = torch.rand(n, 2, generator=g) < 0.5
        return values.masked_fill(missing, float("nan")), missing
    if kind == "tokens":
        return [torch.randint(0, 5, (int(torch.randint(1, 5, (1,), generator=g)),), generator=g) for _ in range(n)]
    if kind == "frames":
        return [torch.randn(int(torch.randint(1, 5, (1,), generator=g)), 2, generator=g, dtype=torch.float64) for _ in range(n)]
    if kind == "user":
        return torch.rand(n, generator=g, dtype=torch.float64) * 6
    raise AssertionError(kind)


CONFIGS = {
    "class_label": ClassLabel(4),
    "vector": Vector(2, mean=(0.5, -1.0), std=(2.0, 0.5), feature_drop=0.2),
    "vector_missing": Vector(2, feature_drop=0.2),
    "tokens": Sequence(4, vocab=5),
    "frames": Sequence(4, features=2, depth=2),
    "user": Scalar(),
}
KINDS = list(CONFIGS)


def test_every_built_in_conditioner_has_a_row() -> None:
    from fractalkit.config import CONFIG_REGISTRY

    built_in = {
        kind for kind, cls in CONFIG_REGISTRY.items()
        if cls.__module__.startswith("fractalkit.conditioners.") and kind != "unconditional"
    }
    covered = {cfg.kind for cfg in CONFIGS.values()}
    assert built_in <= covered, f"add rows using {sorted(built_in - covered)} to CONFIGS"


def build(kind: str, *, level: str = "ar", dtype=torch.float64, seed: int = 0) -> Fractal:
    """A tiny roughened model over 3 elements of 3 values conditioned by ``kind``."""
    config = ARLevelConfig if level == "ar" else MARLevelConfig
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        model = Fractal(
            [(SequenceChunks(E, 1), config(width=8, depth=1, heads=2))],
            leaf=CategoricalLeafConfig(num_values=V),
            conditioner=CONFIGS[kind],
        )
        roughen(model, seed=seed, scale=0.8)
    return model.to(dtype).eval()


def every_x(n_conditions: int) -> torch.Tensor:
    return all_configurations((E,), V).repeat(n_conditions, 1)


def repeat_condition(c: Any, times: int) -> Any:
    """Each of the N conditions repeated ``times`` times in a row (instance-major)."""
    if isinstance(c, tuple):
        return tuple(t.repeat_interleave(times, 0) for t in c)
    if isinstance(c, list):
        return [s for s in c for _ in range(times)]
    return c.repeat_interleave(times, 0)


@pytest.mark.parametrize("level", ["ar", "mar"])
@pytest.mark.parametrize("kind", KINDS)
def test_every_condition_normalises_in_float64(kind: str, level: str) -> None:
    """sum_x p(x | c) = 1 for several conditions c and for the null condition."""
    model = build(kind, level=level)
    n, cells = 4, V**E
    c = conditions(kind, n)
    x = all_configurations((E,), V).repeat(n, 1)
    c_rows = repeat_condition(c, cells)
    orders = None if level == "ar" else "identity"
    with torch.no_grad():
        lp = model.log_prob(x, c_rows, orders=orders).value.view(n, cells)
        null = model.log_prob(all_configurations((E,), V), orders=orders).value
    total = lp.logsumexp(1)
    assert float(total.abs().max()) < 1e-12, total
    assert abs(float(null.logsumexp(0))) < 1e-12
    # the condition matters: different conditions give different laws
    assert float((lp[0] - lp[1]).abs().max()) > 1e-3


def guided_law(model: Fractal, c: Any, w: float, filter_threshold: float) -> torch.Tensor:
    """P_w(x) for every x: per element, the leaf draws from softmax(guided_logits(l_c, l_u)),
    where l_c, l_u are log p(x_<i, v) under c and under the null condition (marginals of the
    enumerated float64 law; guided_logits is shift-invariant per row)."""
    xs = all_configurations((E,), V)
    cells = xs.shape[0]
    with torch.no_grad():
        lc = model.log_prob(xs, repeat_condition(c, cells)).value
        lu = model.log_prob(xs).value

    def prefix(lp: torch.Tensor, i: int) -> torch.Tensor:  # log p(x_<=i) per x
        key = configuration_index(xs[:, : i + 1], V)
        out = torch.full((V ** (i + 1),), -math.inf, dtype=lp.dtype)
        out = out.scatter_reduce(0, key, lp.exp(), reduce="sum", include_self=False).log()
        return out[key]

    law = torch.zeros(cells, dtype=torch.float64)
    for i in range(E):
        pc, pu = prefix(lc, i), prefix(lu, i)
        # the logits over v given x_<i, for every x: indices of x with element i set to v
        cand = torch.stack([_with_value(xs, i, v) for v in range(V)], 1)  # [cells, V] indices into xs
        l_c, l_u = pc[cand], pu[cand]
        g = guided_logits(torch.cat([l_c, l_u]), guided=True, scale=w, temperature=1.0,
                          filter_threshold=filter_threshold).log_softmax(-1)
        law += g.gather(1, xs[:, i : i + 1]).squeeze(1)
    return law.exp()


def _with_value(xs: torch.Tensor, i: int, v: int) -> torch.Tensor:
    """Index (into ``xs``) of each configuration with element i set to v."""
    y = xs.clone()
    y[:, i] = v
    return configuration_index(y, V)


@pytest.mark.parametrize("w", [3.0])
def test_guided_samples_follow_the_guided_law_for_a_vector_condition(w: float) -> None:
    model = build("vector", seed=3)  # a law spread over many cells, far from the unguided one
    c = torch.tensor([[1.5, -0.5]], dtype=torch.float64)
    law = guided_law(model, c, w, filter_threshold=1e-4)
    assert abs(float(law.sum()) - 1) < 1e-12
    n = 6000
    sampler = model.float()
    samples = sampler.sample(c=c.float().expand(n, -1), guidance=w, generator=torch.Generator().manual_seed(0))
    counts = torch.bincount(configuration_index(samples, V), minlength=V**E)
    fit = chi_square(counts, law)
    assert fit.p_value > 1e-3, fit
    print(f"guided chi-square: {fit}")
    # power: the same samples reject the unguided conditional law
    with torch.no_grad():
        plain = model.double().log_prob(all_configurations((E,), V), repeat_condition(c, V**E)).value.exp()
    assert chi_square(counts, plain).p_value < 1e-6


@pytest.mark.parametrize("kind", KINDS)
def test_guidance_uses_the_null_condition_for_the_unconditional_half(kind: str, monkeypatch) -> None:
    model = build(kind)
    n = 3
    c = conditions(kind, n)
    seen = []
    decode = model.root.decode

    def spy(x, known, cond, ctx):
        seen.append(cond.detach().clone())
        return decode(x, known, cond, ctx)

    monkeypatch.setattr(model.root, "decode", spy)
    model.sample(c=c, guidance=2.0, generator=torch.Generator().manual_seed(0))
    (cond,) = seen
    assert cond.shape == (2 * n, model.top_tokens, 8)
    with torch.no_grad():
        torch.testing.assert_close(cond[:n], model.top_condition(c, n), rtol=0, atol=0)
        null = model.conditioner.null(n)
        null = null[:, None].expand(n, model.top_tokens, 8) if null.dim() == 2 else null
        torch.testing.assert_close(cond[n:], null, rtol=0, atol=0)


@pytest.mark.parametrize("kind", KINDS)
def test_condition_dropout_in_training_mode_only(kind: str, monkeypatch) -> None:
    model = build(kind, dtype=torch.float32)
    n = 4000 if kind != "frames" and kind != "tokens" else 1000
    c = conditions(kind, n)
    with torch.no_grad():
        kept = model.top_condition(c, n)
        null = model.top_condition(None, n)
        dropped = model.top_condition(c, n, drop=True, generator=torch.Generator().manual_seed(1))
    is_null = (dropped == null).flatten(1).all(1)
    rate = float(is_null.float().mean())
    p = model.conditioner.drop
    assert abs(rate - p) < 4 * math.sqrt(p * (1 - p) / n), (rate, p)
    # without drop the conditions are the embedded ones, never the null one
    assert not bool((kept == null).flatten(1).all(1).any())
    if kind != "vector" and kind != "vector_missing":
        torch.testing.assert_close(dropped[~is_null], kept[~is_null], rtol=0, atol=0)
    # Fractal.loss asks for dropout exactly in training mode
    calls = []
    forward = type(model.conditioner).forward

    def spy(self, c, n, *, drop=False, generator=None):
        calls.append(drop)
        return forward(self, c, n, drop=drop, generator=generator)

    monkeypatch.setattr(type(model.conditioner), "forward", spy)
    x = torch.randint(0, V, (n, E))
    model.eval()
    model.loss(x, c)
    model.train()
    model.loss(x, c)
    model.eval()
    model.log_prob(x[:2], repeat_condition(conditions(kind, 1), 2))
    assert calls == [False, True, False]


def test_vector_feature_dropout_in_training_mode_only() -> None:
    model = build("vector", dtype=torch.float32)
    conditioner = model.conditioner
    n = 4000
    c = conditions("vector", n).float()
    with torch.no_grad():
        eval_embedding = conditioner.embed(c, drop=False, generator=None)
        again = conditioner.embed(c, drop=False, generator=None)
        train_embedding = conditioner.embed(c, drop=True, generator=torch.Generator().manual_seed(0))
        # each pattern of missing features, embedded directly
        patterns = {}
        for m0 in (False, True):
            for m1 in (False, True):
                missing = torch.tensor([[m0, m1]]).expand(n, 2)
                patterns[(m0, m1)] = conditioner.embed((c, missing), drop=False, generator=None)
    torch.testing.assert_close(eval_embedding, again, rtol=0, atol=0)
    which = torch.stack([(train_embedding - e).abs().amax(1) < 1e-6 for e in patterns.values()], 1)
    assert bool((which.sum(1) >= 1).all())  # every row is one of the four patterns
    per_feature = 0.2
    for j, (pattern, _) in enumerate(patterns.items()):
        expected = math.prod(per_feature if m else 1 - per_feature for m in pattern)
        rate = float(which[:, j].float().mean())
        assert abs(rate - expected) < 4 * math.sqrt(expected * (1 - expected) / n) + 1e-3, (pattern, rate)


def test_missing_features_ignore_their_values() -> None:
    model = build("vector_missing")
    values, missing = conditions("vector_missing", 6)
    other = torch.where(missing, torch.full_like(values, 123.0), values)
    x = torch.randint(0, V, (6, E))
    with torch.no_grad():
        a = model.log_prob(x, (values, missing)).value
        b = model.log_prob(x, (other, missing)).value
    torch.testing.assert_close(a, b, rtol=0, atol=0)


def test_sequences_padded_or_listed_agree_and_padding_is_ignored() -> None:
    model = build("tokens")
    seqs = conditions("tokens", 4)
    values = torch.nn.utils.rnn.pad_sequence(seqs, batch_first=True, padding_value=3)
    valid = torch.arange(values.shape[1])[None] < torch.tensor([len(s) for s in seqs])[:, None]
    x = torch.randint(0, V, (4, E))
    with torch.no_grad():
        a = model.log_prob(x, seqs).value
        b = model.log_prob(x, Padded(values, valid)).value
    torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("kind", KINDS)
def test_every_conditioner_saves_loads_and_runs_the_whole_api(kind: str, tmp_path) -> None:
    model = build(kind)
    n = 3
    c = conditions(kind, n)
    x = torch.randint(0, V, (n, E))
    path = tmp_path / "m.safetensors"
    model.save(path)
    loaded = Fractal.load(path).eval()
    assert loaded.config == model.config
    assert loaded.config.to_dict()["version"] == 4  # one version for every model
    with torch.no_grad():
        torch.testing.assert_close(loaded.log_prob(x, c).value, model.log_prob(x, c).value, rtol=0, atol=0)
        bpd = loaded.bits_per_dim(x, c)
    assert bpd.value.shape == (n,)
    g = lambda: torch.Generator().manual_seed(3)  # noqa: E731
    torch.testing.assert_close(loaded.sample(c=c, generator=g()), model.sample(c=c, generator=g()))
    known = torch.tensor([[True, False, False]]).expand(n, E)
    done = loaded.complete(x, known, c, guidance=1.5, guidance_schedule="linear", generator=g())
    assert bool((done[:, 0] == x[:, 0]).all())
    loss = loaded.train().loss(x, c, generator=g())
    loss.total.backward()


def test_class_labels_are_an_ordinary_submodule_and_keep_their_spellings() -> None:
    model = build("class_label")
    names = {"conditioner.null_embedding", "conditioner.class_embedding.weight"}
    assert names <= set(model.state_dict()) and names <= dict(model.named_parameters()).keys()
    assert model.conditioner is model.get_submodule("conditioner")
    # The names files used before (top level) load through the one key map.
    old_names = {k.removeprefix("conditioner."): v for k, v in model.state_dict().items()}
    again = Fractal.from_config(model.config)
    again.load_state_dict(old_names)
    assert all(torch.equal(again.state_dict()[k], v) for k, v in model.state_dict().items())
    y = torch.tensor([0, 3])
    x = torch.randint(0, V, (2, E))
    with torch.no_grad():
        torch.testing.assert_close(model.log_prob(x, y=y).value, model.log_prob(x, y).value, rtol=0, atol=0)
    old = Fractal([(SequenceChunks(E, 1), ARLevelConfig(width=8, depth=1, heads=2))],
                  leaf=CategoricalLeafConfig(num_values=V), num_classes=4, label_drop=0.2)
    assert old.config.conditioner == ClassLabel(4, drop=0.2) and old.num_classes == 4
    assert old.conditioner.drop == 0.2


def test_compiled_model_reads_every_condition() -> None:
    torch._dynamo.reset()
    try:
        for kind in ("vector", "tokens"):
            eager = build(kind, dtype=torch.float32)
            compiled = build(kind, dtype=torch.float32).compile(backend="eager")
            c = conditions(kind, 3)
            x = torch.randint(0, V, (3, E))
            with torch.no_grad():
                torch.testing.assert_close(compiled.log_prob(x, c).value, eager.log_prob(x, c).value)
    finally:
        torch._dynamo.reset()


def _no_null_model() -> Fractal:
    return Fractal([(SequenceChunks(E, 1), ARLevelConfig(width=8, depth=1, heads=2))],
                   leaf=CategoricalLeafConfig(num_values=V), conditioner=Scalar(null=False, drop=0.0))


BAD = [
    ("class_label", lambda: torch.tensor([0, 1, 2]), ValueError, r"y must have shape \[2\]"),
    ("vector", lambda: torch.zeros(3, 2), ValueError, r"for 3 instances but 2 were given"),
    ("vector", lambda: torch.zeros(2, 5), ValueError, r"\[N, 2\] \(2 features\), got \[2, 5\]"),
    ("vector", lambda: torch.tensor([[0.0, math.nan], [0.0, 0.0]]), ValueError, "non-finite values.*instance 0, feature 1"),
    ("vector", lambda: torch.tensor([[0.0, math.inf], [0.0, 0.0]]), ValueError, "non-finite"),
    ("vector", lambda: torch.zeros(2, 2, dtype=torch.long), TypeError, "float tensor"),
    ("vector", lambda: (torch.zeros(2, 2), torch.zeros(2, 1, dtype=torch.bool)), ValueError, "missing must be a bool tensor"),
    ("tokens", lambda: [torch.tensor([1, 2])] * 3, ValueError, "holds 3 sequences but 2"),
    ("tokens", lambda: [torch.tensor([1, 2, 3, 4, 0]), torch.tensor([1])], ValueError, "5 entries.*max_len=4"),
    ("tokens", lambda: [torch.tensor([1, 7]), torch.tensor([1])], ValueError, r"outside \[0, 5\)"),
    ("tokens", lambda: [torch.tensor([], dtype=torch.long), torch.tensor([1])], ValueError, "0 entries"),
    ("frames", lambda: [torch.tensor([[0.0, math.nan]]), torch.zeros(1, 2)], ValueError, "non-finite"),
    ("frames", lambda: [torch.zeros(2, 3), torch.zeros(1, 2)], ValueError, r"expected float frames \[L, 2\]"),
    ("frames", lambda: torch.zeros(2, 2, 2), TypeError, "list of N tensors"),
    ("user", lambda: torch.zeros(3), ValueError, "for 3 instances but 2"),
    (None, lambda: torch.zeros(2, 2), ValueError, "this model is unconditional"),
]


@pytest.mark.parametrize(("kind", "make", "error", "match"), BAD, ids=[f"{k}-{m[:24]}" for k, _, _, m in BAD])
@pytest.mark.parametrize("method", ["log_prob", "loss", "sample", "complete"])
def test_bad_conditions_raise_clear_errors(kind, make, error, match, method) -> None:
    if kind is None:
        model = Fractal([(SequenceChunks(E, 1), ARLevelConfig(width=8, depth=1, heads=2))],
                        leaf=CategoricalLeafConfig(num_values=V))
    else:
        model = build(kind, dtype=torch.float32)
    x = torch.zeros(2, E, dtype=torch.long)
    with pytest.raises(error, match=match):
        if method == "sample":
            model.sample(2, make())
        elif method == "complete":
            model.complete(x, torch.zeros_like(x, dtype=torch.bool), make())
        else:
            getattr(model, method)(x, make())


@pytest.mark.parametrize(
    ("call", "match"),
    [
        (lambda m, x: m.log_prob(x), "has no null condition: pass a condition c"),
        (lambda m, x: m.sample(2), "has no null condition"),
        (lambda m, x: m.sample(c=torch.zeros(2), guidance=2.0), "guidance needs"),
    ],
)
def test_a_conditioner_without_null_needs_a_condition(call, match) -> None:
    model = _no_null_model()
    with pytest.raises(ValueError, match=match):
        call(model, torch.zeros(2, E, dtype=torch.long))


@pytest.mark.parametrize(
    ("make", "error", "match"),
    [
        (lambda: {"conditioner": Vector(2), "num_classes": 3}, ValueError, "either conditioner= or num_classes"),
        (lambda: {"conditioner": Vector(2), "label_drop": 0.2}, ValueError, "either conditioner= or num_classes"),
        (lambda: {"conditioner": "vector"}, TypeError, "must be a ConditionerConfig"),
        (lambda: {"conditioner": Vector(0)}, ValueError, "dim must be an integer >= 1"),
        (lambda: {"conditioner": Vector(2, std=(1.0, 0.0))}, ValueError, "std must be positive"),
        (lambda: {"conditioner": Sequence(4)}, ValueError, "exactly one of vocab"),
        (lambda: {"conditioner": Sequence(4, vocab=3, heads=3)}, ValueError, "not divisible by heads=3"),
    ],
)
def test_bad_conditioner_configs_raise(make, error, match) -> None:
    with pytest.raises(error, match=match):
        Fractal([(SequenceChunks(E, 1), ARLevelConfig(width=8, depth=1, heads=2))],
                leaf=CategoricalLeafConfig(num_values=V), **make())


def test_y_is_for_class_labels_only() -> None:
    model = build("vector")
    with pytest.raises(ValueError, match="y= is the spelling for class labels"):
        model.log_prob(torch.zeros(2, E, dtype=torch.long), y=torch.tensor([0, 1]))


def test_vector_fitted_normalisation() -> None:
    values = torch.tensor([[1.0, 5.0], [3.0, 5.0], [math.nan, 5.0]])
    cfg = Vector.fitted(values, drop=0.2)
    assert cfg.mean == (2.0, 5.0) and cfg.std == (1.0, 1.0) and cfg.drop == 0.2


@pytest.mark.parametrize("kind", ["vector", "tokens"])
def test_conditions_pass_through_ddp_training(kind: str, tmp_path) -> None:
    """The training loop's DDP wrapper around the ImageNet example's loss (one gloo process)
    trains a vector- or sequence-conditioned model: every conditioner parameter gets a gradient."""
    import importlib.util
    from pathlib import Path

    import torch.distributed as dist

    from fractalkit.training.loop import LossModule

    path = Path(__file__).resolve().parents[1] / "examples" / "imagenet_pixels" / "train.py"
    spec = importlib.util.spec_from_file_location("imagenet_train_for_ddp", path)
    example = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(example)
    model = build(kind, dtype=torch.float32).train()
    dist.init_process_group("gloo", store=dist.FileStore(str(tmp_path / "store"), 1), rank=0, world_size=1)
    try:
        wrapped = nn.parallel.DistributedDataParallel(LossModule(model, example.fractal_loss))
        c = conditions(kind, 8)
        c = c.float() if isinstance(c, torch.Tensor) else c
        total, _ = wrapped((torch.randint(0, V, (8, E)), c), torch.Generator().manual_seed(0))
        total.backward()
    finally:
        dist.destroy_process_group()
    grads = {name: p.grad for name, p in model.conditioner.named_parameters()}
    assert grads and all(g is not None and bool(torch.isfinite(g).all()) for g in grads.values()), grads.keys()


@pytest.mark.parametrize("old_names", [False, True])
def test_class_label_parameters_are_used_after_assign_loads_and_conversions(old_names) -> None:
    model = build("class_label")
    state = {k: v.clone() + 1 for k, v in model.state_dict().items()}
    if old_names:  # as files written before the conditioner became a submodule name them
        state = {k.removeprefix("conditioner."): v for k, v in state.items()}
    model.load_state_dict(state, assign=True)
    assert model.conditioner.class_embedding.weight is model.state_dict(keep_vars=True)[
        "conditioner.class_embedding.weight"]
    key = "class_embedding.weight" if old_names else "conditioner.class_embedding.weight"
    y = torch.tensor([1, 2])
    with torch.no_grad():
        torch.testing.assert_close(model.top_condition(y, 2)[:, 0], state[key][y])
    torch.__future__.set_overwrite_module_params_on_conversion(True)
    try:
        model = model.float()
    finally:
        torch.__future__.set_overwrite_module_params_on_conversion(False)
    null = model.state_dict(keep_vars=True)["conditioner.null_embedding"]
    assert model.conditioner.null_embedding is null and null.dtype == torch.float32


def test_training_checkpoints_keep_the_conditioner(tmp_path) -> None:
    from fractalkit.training import load_checkpoint, save_checkpoint

    model = build("frames", dtype=torch.float32)
    save_checkpoint(tmp_path / "ckpt", model, step=3)
    loaded = load_checkpoint(tmp_path / "ckpt").model.eval()
    c = conditions("frames", 2)
    x = torch.randint(0, V, (2, E))
    with torch.no_grad():
        torch.testing.assert_close(loaded.log_prob(x, c).value, model.log_prob(x, c).value, rtol=0, atol=0)
    assert loaded.config.conditioner == CONFIGS["frames"]


@pytest.mark.parametrize("kind", ["class_label", "vector"])
def test_models_pickle_whole(kind: str, tmp_path) -> None:
    model = build(kind)
    torch.save(model, tmp_path / "m.pt")
    again = torch.load(tmp_path / "m.pt", weights_only=False)
    c = conditions(kind, 2)
    x = torch.randint(0, V, (2, E))
    with torch.no_grad():
        torch.testing.assert_close(again.log_prob(x, c).value, model.log_prob(x, c).value, rtol=0, atol=0)
    if kind == "class_label":
        assert again.conditioner.null_embedding is again.get_parameter("conditioner.null_embedding")
