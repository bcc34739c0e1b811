"""Numerical safety of every loss: empty batches, perfect predictions, bf16 and fp16 autocast on CPU."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from segtrain.losses import available_losses, build_loss
from segtrain.losses.registry import loss_parameters

# boundary with alpha < 1 so that its distance term is exercised too
PARAMS = {"boundary": {"alpha": 0.5}}
LOSSES = available_losses()


def make_loss(name: str):
    return build_loss(name, **PARAMS.get(name, {}))


def value_and_grad(loss, logits, target):
    x = logits.detach().clone().requires_grad_(True)
    value = loss(x, target)
    (grad,) = torch.autograd.grad(value, x)
    return value.detach(), grad


def blobs(shape, count: int, radius: float, classes: int, seed: int = 0) -> torch.Tensor:
    """A label map (1, 1, *shape) with ``count`` balls of foreground classes 1..classes-1."""
    rng = np.random.default_rng(seed)
    grid = np.stack(np.meshgrid(*[np.arange(s) for s in shape], indexing="ij"))
    label = np.zeros(shape, dtype=np.int64)
    for i in range(count):
        centre = rng.uniform(radius, np.array(shape) - radius).reshape(-1, *([1] * len(shape)))
        label[((grid - centre) ** 2).sum(0) <= radius**2] = 1 + i % max(classes - 1, 1)
    return torch.from_numpy(label)[None, None]


def perfect_logits(target: torch.Tensor, channels: int, margin: float = 20.0) -> torch.Tensor:
    if channels == 1:
        return margin * (2.0 * target.float() - 1.0)
    onehot = torch.zeros(target.shape[0], channels, *target.shape[2:]).scatter_(1, target, 1.0)
    return margin * onehot


@pytest.mark.parametrize("channels", [1, 2, 3])
@pytest.mark.parametrize("name", LOSSES)
def test_all_background_batch_is_finite(name, channels):
    logits = torch.randn(2, channels, 6, 7, 8, generator=torch.Generator().manual_seed(0))
    target = torch.zeros(2, 1, 6, 7, 8, dtype=torch.long)
    value, grad = value_and_grad(make_loss(name), logits, target)
    assert torch.isfinite(value) and torch.isfinite(grad).all()
    # a confident all-background prediction scores better than a random one
    better, better_grad = value_and_grad(make_loss(name), perfect_logits(target, channels), target)
    assert torch.isfinite(better) and torch.isfinite(better_grad).all()
    assert better <= value + 1e-6


@pytest.mark.parametrize("channels", [1, 2, 3])
@pytest.mark.parametrize("name", LOSSES)
def test_perfect_prediction_is_finite_and_better_than_random(name, channels):
    target = blobs((10, 12, 12), count=3, radius=2.5, classes=max(channels, 2))
    target = torch.cat([target, torch.zeros_like(target)])  # and one empty sample
    perfect, grad = value_and_grad(make_loss(name), perfect_logits(target, channels), target)
    assert torch.isfinite(perfect) and torch.isfinite(grad).all()
    random = make_loss(name)(torch.randn(2, channels, 10, 12, 12, generator=torch.Generator().manual_seed(1)), target)
    assert perfect < random


REGION_LOSSES = ["dice", "iou", "tversky", "focal_tversky", "generalized_dice", "lovasz", "ce", "wce", "focal"]


@pytest.mark.parametrize("name", REGION_LOSSES)
def test_perfect_prediction_scores_zero(name):
    target = blobs((10, 12, 12), count=3, radius=2.5, classes=3)
    value = make_loss(name)(perfect_logits(target, 3), target)
    assert float(value) == pytest.approx(0.0, abs=1e-4)


@pytest.mark.parametrize("channels", [1, 3])
@pytest.mark.parametrize("name", LOSSES)
def test_bf16_autocast_is_close_to_float32(name, channels):
    # Large enough (and 30% foreground) for a bf16 sum to show: 8 mantissa bits cannot count 16384 voxels.
    generator = torch.Generator().manual_seed(2)
    target = (torch.rand(1, 1, 16, 32, 32, generator=generator) < 0.3).long() * torch.randint(1, max(channels, 2), (1, 1, 16, 32, 32), generator=generator)
    logits = torch.randn(1, channels, 16, 32, 32, generator=generator)
    loss = make_loss(name)
    reference = loss(logits, target)
    low = logits.to(torch.bfloat16).requires_grad_(True)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        value = loss(low, target)
    value.backward()
    assert value.dtype == torch.float32  # reductions in float32
    assert low.grad.dtype == torch.bfloat16 and torch.isfinite(low.grad).all()
    # the same bf16 logits without autocast give the same value: the loss computes in float32
    torch.testing.assert_close(value.detach(), loss(low.detach().float(), target), rtol=1e-5, atol=1e-5)
    # and bf16 rounding of the logits moves the loss by little
    torch.testing.assert_close(value.detach(), reference, rtol=2e-2, atol=2e-2)


@pytest.fixture(scope="module")
def cube():
    target = blobs((128, 128, 128), count=6, radius=6.0, classes=2, seed=3)
    logits = 4 * torch.randn(1, 2, 128, 128, 128, generator=torch.Generator().manual_seed(3))
    return logits.to(torch.float16), target


@pytest.mark.parametrize("name", LOSSES)
def test_fp16_autocast_on_a_128_cube_does_not_overflow(name, cube):
    """Σ over 128³ = 2.1M voxels overflows fp16 (max 65504): the loss must reduce in float32."""
    logits, target = cube
    half = logits.clone().requires_grad_(True)
    loss = make_loss(name)
    with torch.autocast("cpu", dtype=torch.float16):
        value = loss(half, target)
    value.backward()
    assert torch.isfinite(value) and torch.isfinite(half.grad).all()
    expected = loss(half.detach().float(), target)
    torch.testing.assert_close(value.detach().float(), expected, rtol=1e-4, atol=1e-5)


SMOOTHED = [n for n in LOSSES if "smooth" in loss_parameters(n)]


@pytest.mark.parametrize("channels", [1, 2, 3])
@pytest.mark.parametrize("name", SMOOTHED)
def test_smooth_zero_on_an_all_background_batch_is_finite(name, channels):
    """Every ratio's denominator is floored (EPS): smooth=0 on empty classes gives no 0/0 and no log(0)."""
    batches = (False, True) if "batch" in loss_parameters(name) else (False,)
    logits = torch.randn(2, channels, 6, 7, 8, generator=torch.Generator().manual_seed(1))
    target = torch.zeros(2, 1, 6, 7, 8, dtype=torch.long)
    for batch in batches:
        params = {**PARAMS.get(name, {}), "smooth": 0.0, **({"batch": True} if batch else {})}
        value, grad = value_and_grad(build_loss(name, **params), logits, target)
        assert torch.isfinite(value) and torch.isfinite(grad).all(), (name, channels, batch, float(value))


def test_the_per_call_label_check_can_be_turned_off():
    """The label range check reads min/max back to the host on every call; training turns it off (preflight checked)."""
    from segtrain.losses.inputs import LossInputs, label_range_checks

    logits, bad = torch.randn(1, 3, 4, 4), torch.full((1, 1, 4, 4), 7)
    with pytest.raises(ValueError, match=r"label values must lie in \[0, 2\]"):
        LossInputs(logits, bad, "dice")
    with label_range_checks(False):
        LossInputs(logits, bad, "dice")  # not read back: no check, no host synchronisation
        with label_range_checks(True), pytest.raises(ValueError, match="label values"):
            LossInputs(logits, bad, "dice")
    with pytest.raises(ValueError, match="label values"):  # the block restored the default
        LossInputs(logits, bad, "dice")
