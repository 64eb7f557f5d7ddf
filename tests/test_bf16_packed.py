"""The prepacked bfloat16 path of ``fractalkit.nn.Linear`` (``packed_weights``): skinny bf16
products under bf16 CPU autocast, or with bf16 weights, read a oneDNN-packed bf16 copy of the
weight made once per decoding call. Agreement with float32 within the bf16 tolerance, never a
stale copy, gradients untouched, and sampling packs each large weight once.
"""

from __future__ import annotations

import contextlib

import pytest
import torch
import torch.nn.functional as F
from test_bf16 import _wide_model, autocast

from fractalkit.nn import Linear
from fractalkit.nn import linear as linear_module
from fractalkit.nn.linear import LARGE_WEIGHT, SKINNY_ROWS, packed_weights, packing_available

#: the tolerance of a bf16 product against float32 used above (8 significant bits)
BF16_PRODUCT = {"rtol": 0.02, "atol": 0.02}


def _packed_count() -> int:
    """Packed weights held now (bias copies aside)."""
    return sum(1 for entry in linear_module._packed.entries.values() if entry[2].is_mkldnn)


@pytest.mark.parametrize("mode", ["autocast", "bf16-weights"])
@pytest.mark.parametrize("bias", [True, False])
@pytest.mark.parametrize(("features", "shape"), [
    ((1024, 512), (2, 1024)),
    ((1024, 512), (2, 1, 1024)),
    ((512, 1536), (6, 512)),
    ((1536, 512), (1, 1536)),
    ((1024, 1024), (SKINNY_ROWS, 1024)),
    ((512, 512), (3, 1, 512)),
])
def test_packed_bf16_products_match_float32(mode, bias, features, shape) -> None:
    """Skinny bf16 products inside ``packed_weights`` read a packed copy and agree with float32
    within the bf16 tolerance (and with ``F.linear``'s own bf16 product)."""
    torch.manual_seed(sum(shape))
    layer = Linear(*features, bias=bias)
    assert layer.weight.numel() >= LARGE_WEIGHT
    x = torch.randn(*shape)
    with torch.no_grad():
        want32 = F.linear(x, layer.weight, layer.bias)
        if mode == "bf16-weights":
            layer = layer.to(torch.bfloat16)
            x = x.bfloat16()
            context = contextlib.nullcontext()
        else:
            context = torch.autocast("cpu", dtype=torch.bfloat16)
        with context:
            usual = F.linear(x, layer.weight, layer.bias)
            with packed_weights():
                got = layer(x)
                assert _packed_count() == (1 if packing_available() else 0)
                again = layer(x)  # the packed copy is reused
                assert _packed_count() == (1 if packing_available() else 0)
        assert not linear_module._packed.entries  # dropped with the context
    assert got.dtype == torch.bfloat16 and got.shape == want32.shape
    assert torch.equal(got, again)
    torch.testing.assert_close(got.float(), want32, **BF16_PRODUCT)
    torch.testing.assert_close(got, usual)  # bf16's default tolerance


def _sgd_step(layer: Linear) -> None:
    with torch.enable_grad():
        layer(torch.randn(4, layer.in_features)).square().sum().backward()
    torch.optim.SGD(layer.parameters(), lr=0.5).step()


CHANGES = {
    "mul_": lambda layer: layer.weight.mul_(-2.0),
    "bias add_": lambda layer: layer.bias.add_(1.0),
    "load_state_dict": lambda layer: layer.load_state_dict(
        {"weight": torch.randn_like(layer.weight), "bias": torch.randn_like(layer.bias)}),
    "optimizer step": _sgd_step,
    "new parameter": lambda layer: setattr(layer, "weight", torch.nn.Parameter(torch.randn_like(layer.weight))),
}


@pytest.mark.parametrize("change", sorted(CHANGES))
def test_packed_weights_are_never_stale(change) -> None:
    """A weight changed inside the context (in place or replaced) gives the new weight's product."""
    torch.manual_seed(0)
    layer = Linear(1024, 512)
    x = torch.randn(2, 1024)
    with torch.no_grad(), autocast, packed_weights():
        before = layer(x)
        CHANGES[change](layer)
        after = layer(x)
    with torch.no_grad():  # not under the same autocast: its own weight cache would be stale
        want = F.linear(x.bfloat16(), layer.weight.bfloat16(), layer.bias.bfloat16())
    assert not torch.equal(after, before)
    torch.testing.assert_close(after, want)


def test_packed_weights_nest_and_leave_gradients_alone() -> None:
    torch.manual_seed(0)
    layer = Linear(1024, 512)
    x = torch.randn(2, 1024, requires_grad=True)
    with autocast, packed_weights():
        with packed_weights(), torch.no_grad():
            layer(x)
        assert _packed_count() == (1 if packing_available() else 0)  # the outer context holds it
        out = layer(x)  # gradients wanted: the differentiable product
        ref = F.linear(x, layer.weight, layer.bias)
    assert torch.equal(out, ref)
    (g_out,) = torch.autograd.grad(out.float().sum(), x)
    (g_ref,) = torch.autograd.grad(ref.float().sum(), x)
    assert torch.equal(g_out, g_ref)
    assert not linear_module._packed.entries


@pytest.mark.parametrize("kind", ["ar", "mar"])
def test_sampling_under_bf16_autocast_packs_once_per_call(kind, monkeypatch) -> None:
    """Decoding under bf16 autocast takes the packed path, packs each large weight once, and
    drops the copies when the call returns; float32 sampling never packs."""
    model = _wide_model(kind)
    packs: list[torch.Tensor] = []  # the weights packed, in order

    class Recording(dict):
        def __setitem__(self, key, entry):
            if entry[2].is_mkldnn:
                packs.append(entry[0])
            super().__setitem__(key, entry)

    monkeypatch.setattr(linear_module._packed, "entries", Recording())
    y = torch.tensor([0, 1])
    fp32 = model.sample(y=y, generator=torch.Generator().manual_seed(0), guidance=2.0)
    assert packs == []
    with autocast:
        bf16 = model.sample(y=y, generator=torch.Generator().manual_seed(0), guidance=2.0)
    assert not linear_module._packed.entries
    large = sum(1 for m in model.modules() if isinstance(m, Linear) and m.weight.numel() >= LARGE_WEIGHT)
    if packing_available() and kind == "ar":  # MAR's products are not skinny at batch 2
        params = {id(p) for p in model.parameters()}
        assert 0 < len(packs) <= large and len({id(w) for w in packs}) == len(packs)
        assert {id(w) for w in packs} <= params
    assert bf16.shape == fp32.shape and bf16.dtype == fp32.dtype
