"""bfloat16 autocast on the CPU: which matrix-product form runs, the KV caches' dtype, and
likelihoods within a stated tolerance of float32.

The model is small but wide (width 512), so its products take ``fractalkit.nn.Linear``'s
large-weight path, and decoding (``stepwise_log_prob``) runs its skinny, KV-cached steps.
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from fractalkit import Fractal, ImagePatches, RGBLeafConfig
from fractalkit.config import BuildContext
from fractalkit.levels.ar import ARLevelConfig
from fractalkit.levels.mar import MARLevelConfig
from fractalkit.nn import Linear
from fractalkit.nn.blocks import Backbone
from fractalkit.nn.linear import LARGE_WEIGHT, SKINNY_ROWS

#: Stated tolerance of log-likelihoods under bf16 autocast against float32, per dimension
#: (nats per sub-pixel): bfloat16 keeps 8 significant bits. Measured on this untrained wide
#: model: at most 1.1e-4 (AR) and 1.8e-4 (MAR) nats per dimension, teacher-forced and stepwise.
BF16_NATS_PER_DIM = 2e-3

autocast = torch.autocast("cpu", dtype=torch.bfloat16)


def _wide_model(kind: str) -> Fractal:
    torch.manual_seed(0)
    level = (ARLevelConfig(width=512, depth=1, heads=8) if kind == "ar"
             else MARLevelConfig(width=512, depth=1, heads=8))
    model = Fractal([(ImagePatches(4, 1, channels=3), level)],
                    RGBLeafConfig(width=32, depth=1, heads=4), num_classes=3, label_drop=0.1)
    return model.eval()


def test_skinny_products_under_autocast_take_the_usual_form() -> None:
    layer = Linear(1024, 512)
    assert layer.weight.numel() >= LARGE_WEIGHT
    x = torch.randn(2, 1, 1024)
    with torch.no_grad():
        want32 = F.linear(x, layer.weight, layer.bias)
        got32 = layer(x)
        with autocast:
            got = layer(x)
            want = F.linear(x, layer.weight, layer.bias)
    assert got.dtype == torch.bfloat16
    assert torch.equal(got, want)  # bf16: x @ W^T, the faster form there
    torch.testing.assert_close(got32, want32, rtol=1e-5, atol=1e-5)  # fp32: W @ x^T, same values
    torch.testing.assert_close(got.float(), want32, rtol=0.02, atol=0.02)
    bf16 = Linear(1024, 512).to(torch.bfloat16)  # bf16 weights: the usual form too
    xb = torch.randn(SKINNY_ROWS, 1024, dtype=torch.bfloat16)
    with torch.no_grad():
        assert torch.equal(bf16(xb), F.linear(xb, bf16.weight, bf16.bias))


def test_cpu_kv_caches_stay_wide_under_autocast() -> None:
    """On the CPU a 16-bit attention step is 3-6x slower than a float32 one: the caches keep
    the weights' dtype under autocast (its bf16 keys and values are stored exactly) and each
    step attends in it (``tests/test_bf16_decoding.py``)."""
    backbone = Backbone("llama", 64, 2, 4)
    like = torch.zeros(1)
    assert {c.keys.dtype for c in backbone.new_caches(2, 8, like)} == {torch.float32}
    with autocast:
        caches = backbone.new_caches(2, 8, like)
    assert {c.keys.dtype for c in caches} | {c.values.dtype for c in caches} == {torch.float32}
    double = torch.zeros(1, dtype=torch.float64)
    with autocast:  # autocast leaves float64 alone, so do the caches
        assert backbone.new_caches(2, 8, double)[0].keys.dtype == torch.float64


@pytest.mark.parametrize("kind", ["ar", "mar"])
def test_bf16_likelihoods_within_the_stated_tolerance(kind: str) -> None:
    model = _wide_model(kind)
    g = torch.Generator().manual_seed(1)
    x = torch.randint(0, 256, (3, 3, 4, 4), generator=g)
    y = torch.tensor([0, 1, 2])
    dims = x[0].numel()
    with torch.no_grad():
        ref = model.log_prob(x, y, orders="identity").value
        ref_steps = model.stepwise_log_prob(x, y)
        torch.testing.assert_close(ref_steps, ref, rtol=1e-5, atol=1e-3)
        with autocast:
            teacher = model.log_prob(x, y, orders="identity").value
            steps = model.stepwise_log_prob(x, y)  # KV-cached (AR) decoding path
    for got in (teacher, steps):
        assert got.dtype == torch.float32 and bool(torch.isfinite(got).all())
        assert float((got - ref).abs().max()) <= BF16_NATS_PER_DIM * dims, (got, ref)
    assert float((steps - teacher).abs().max()) <= BF16_NATS_PER_DIM * dims


def test_leaf_decodes_in_its_weights_dtype_under_cpu_autocast() -> None:
    """The leaf's decoding is overhead-bound: under autocast it runs as in float32, bit for bit."""
    from fractalkit import SampleOptions
    from fractalkit.protocol import DecodeContext

    torch.manual_seed(0)
    leaf = RGBLeafConfig(width=32, depth=1, heads=4).build(BuildContext(16, 5, (3,))).eval()
    cond = torch.randn(6, 5, 16)
    x = torch.zeros(6, 3, dtype=torch.long)
    known = torch.zeros(6, 3, dtype=torch.bool)

    def draw() -> tuple[torch.Tensor, torch.Tensor]:
        ctx = DecodeContext(SampleOptions(), torch.Generator().manual_seed(3), guided=False, scale=1.0)
        with torch.no_grad():
            return leaf.decode(x, known, cond, ctx)

    want = draw()
    with autocast:
        got = draw()
    assert torch.equal(got[0], want[0]) and torch.equal(got[1], want[1])


@pytest.mark.parametrize("kind", ["ar", "mar"])
def test_bf16_training_loss_and_gradients_within_tolerance(kind: str, monkeypatch) -> None:
    """A training step under bf16 autocast (the attention of the level's 17-21 keys and the
    leaf's 3 now take the explicit form with float32 scores): the loss within the stated
    per-dimension tolerance of float32's, every gradient within 5% of float32's in norm."""
    from fractalkit.nn import attention

    calls = []
    real = attention.explicit_attention
    monkeypatch.setattr(attention, "explicit_attention",
                        lambda q, *a, **k: calls.append(q.dtype) or real(q, *a, **k))
    model = _wide_model(kind).train()
    g = torch.Generator().manual_seed(1)
    x = torch.randint(0, 256, (3, 3, 4, 4), generator=g)
    y = torch.tensor([0, 1, 2])

    def step(bf16: bool) -> tuple[torch.Tensor, list[torch.Tensor]]:
        model.zero_grad(set_to_none=True)
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
            loss = model.loss(x, y, generator=torch.Generator().manual_seed(5)).total
        loss.backward()
        return loss.detach(), [p.grad.clone() for p in model.parameters() if p.grad is not None]

    ref, ref_grads = step(False)
    calls.clear()
    got, grads = step(True)
    assert torch.bfloat16 in calls  # the bf16 training path was taken
    assert got.dtype == torch.float32 and bool(torch.isfinite(got))
    assert float((got - ref).abs()) <= BF16_NATS_PER_DIM, (got, ref)  # the loss is a mean per dim
    assert len(grads) == len(ref_grads)
    for a, b in zip(grads, ref_grads, strict=True):
        assert float((a - b).norm()) <= 0.05 * float(b.norm()) + 1e-6
