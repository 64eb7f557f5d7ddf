"""Training: a small 3-level image fractal learns natural-image crops.

16x16 RGB crops -> 4x4 patches (AR) -> pixels (AR) -> RGB leaf, about 190k parameters, AdamW.
Held-out bits/dim are exact (AR levels) and must drop clearly from the untrained model's
(about 8.0 bits/dim, the uniform 8 bits) within a short run.
"""

from __future__ import annotations

import math

import pytest
import torch

from fractalkit import ARLevelConfig, Fractal, ImagePatches, RGBLeafConfig
from fractalkit.data import PHOTOS, natural_image_crops


def small_image_fractal() -> Fractal:
    """16x16 -> 4x4 patches -> pixels -> RGB leaf (exact likelihood: AR levels)."""
    return Fractal(
        [
            (ImagePatches(16, 4), ARLevelConfig(width=64, depth=2, heads=4)),
            (ImagePatches(4, 1), ARLevelConfig(width=32, depth=1, heads=2)),
        ],
        leaf=RGBLeafConfig(width=16, depth=1, heads=2),
        label_drop=0.0,
    )


def heldout_bits_per_dim(model: Fractal, x: torch.Tensor) -> float:
    """Mean exact bits/dim of ``x`` (eval mode, no gradients)."""
    was_training = model.training
    model.eval()
    with torch.no_grad():
        bpd = model.bits_per_dim(x)
    model.train(was_training)
    assert bpd.kind == "exact"
    return bpd.mean()[0]


def train(steps: int, *, seed: int = 0, lr: float = 8e-3, batch: int = 32) -> tuple[float, float]:
    """Train from scratch; returns held-out bits/dim (before, after)."""
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        model = small_image_fractal()
    train_set = natural_image_crops(16, 2048, seed=seed).long()  # [2048, 3, 16, 16]
    heldout = natural_image_crops(16, 64, seed=1000 + seed).long()  # other crops, other seed
    opt = torch.optim.AdamW(model.parameters(), lr=lr, betas=(0.9, 0.95), weight_decay=0.05)
    g = torch.Generator().manual_seed(seed)
    before = heldout_bits_per_dim(model, heldout)
    model.train()
    for _ in range(steps):
        idx = torch.randint(0, len(train_set), (batch,), generator=g)
        loss = model.loss(train_set[idx], generator=g)
        opt.zero_grad(set_to_none=True)
        loss.total.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 3.0)
        opt.step()
    return before, heldout_bits_per_dim(model, heldout)


def test_natural_image_crops_are_seeded_uint8_crops() -> None:
    a = natural_image_crops(16, 8, seed=3)
    assert a.shape == (8, 3, 16, 16) and a.dtype == torch.uint8
    assert torch.equal(a, natural_image_crops(16, 8, seed=3))
    assert not torch.equal(a, natural_image_crops(16, 8, seed=4))
    assert float(a.float().std()) > 5  # real pictures, not constant
    assert natural_image_crops(300, 1).shape == (1, 3, 300, 300)
    assert natural_image_crops(4, 0).shape == (0, 3, 4, 4)
    assert len(PHOTOS) == 5


def test_natural_image_crops_bad_arguments() -> None:
    with pytest.raises(ValueError, match="size"):
        natural_image_crops(0, 4)
    with pytest.raises(ValueError, match="size"):
        natural_image_crops(301, 4)
    with pytest.raises(ValueError, match="count"):
        natural_image_crops(8, -1)
    with pytest.raises(TypeError, match="size"):
        natural_image_crops(8.0, 4)  # type: ignore[arg-type]


def test_short_training_run_lowers_heldout_bits_per_dim() -> None:
    # Measured: 8.006 -> 6.024 bits/dim (-24.8%) in 45 steps, about 8 s of CPU (60 steps gave
    # -28.6% in 11 s; fewer steps keep the default run as fast as it was).
    before, after = train(steps=45)
    assert 7.5 < before < 8.5  # an untrained model is about uniform over 256 values
    assert after < 0.8 * before, (before, after)  # at least 20% lower


@pytest.mark.slow
def test_longer_training_run_lowers_heldout_bits_per_dim_by_30_percent() -> None:
    # Measured: 8.006 -> 4.869 bits/dim (-39.2%) in 200 steps, about 45 s of CPU.
    before, after = train(steps=200)
    assert after < 0.7 * before, (before, after)
    assert math.isfinite(after)


# ---- optimizer steps inside the backward pass (peak memory) -----------------------------------


def test_optimizer_in_backward_matches_one_optimizer_and_frees_gradients() -> None:
    import copy

    from fractalkit.training import OptimizerInBackward

    torch.manual_seed(0)
    a = torch.nn.Sequential(torch.nn.Linear(6, 8), torch.nn.GELU(), torch.nn.Linear(8, 3))
    b = copy.deepcopy(a)
    make = {"lr": 1e-2, "betas": (0.9, 0.95), "weight_decay": 0.05}
    whole = torch.optim.AdamW(a.parameters(), **make)
    split = OptimizerInBackward(b.parameters(), lambda ps: torch.optim.AdamW(ps, **make))
    x = torch.randn(5, 6)
    seen = []
    for _ in range(3):
        a(x).square().mean().backward()
        whole.step()
        whole.zero_grad(set_to_none=True)
        b(x).square().mean().backward()
        seen.append([p.grad for p in b.parameters()])
    assert all(g is None for grads in seen for g in grads)  # freed inside backward
    for pa, pb in zip(a.parameters(), b.parameters(), strict=True):
        assert torch.equal(pa, pb)  # AdamW is element-wise: the same update
    split.set_lr(0.0)
    before = [p.detach().clone() for p in b.parameters()]
    state = split.state_dict()
    split.load_state_dict(state)
    with pytest.raises(ValueError, match="one per parameter"):
        split.load_state_dict({"optimizers": state["optimizers"][:1]})
    split.remove()
    b(x).sum().backward()  # hooks removed: gradients accumulate, nothing steps
    assert all(p.grad is not None for p in b.parameters())
    assert all(torch.equal(p, q) for p, q in zip(b.parameters(), before, strict=True))
