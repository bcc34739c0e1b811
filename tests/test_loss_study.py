"""scripts/loss_study.py: the degradation protocol and its outputs, on a few losses and a small image."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def study():
    spec = importlib.util.spec_from_file_location("loss_study", ROOT / "scripts" / "loss_study.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules["loss_study"] = module  # dataclasses look their module up
    spec.loader.exec_module(module)
    return module


def test_each_step_adds_as_many_false_positives_as_false_negatives(study):
    mask = study.disc(32, 5)
    fn_order, fp_order = study.degradation_orders(mask)
    pixels = int(mask.sum())
    counts = study.step_counts(pixels, 11)
    assert counts[0] == 0 and counts[-1] == pixels and counts == sorted(set(counts))
    previous = None
    for n in counts:
        pred = study.degraded(mask, n, fn_order, fp_order)
        assert (pred & ~mask).sum() == n and (~pred & mask).sum() == n
        assert study.hard_dice(pred, mask) == pytest.approx(1 - n / pixels)
        if previous is not None:  # nested: errors only grow
            assert not (previous & ~mask & ~pred).any() and not (~previous & mask & pred).any()
        previous = pred


def test_soft_prediction_is_confident_away_from_the_border(study):
    import torch

    pred = study.disc(32, 6)
    probs = torch.softmax(study.logits_for(pred, 0.9), dim=1)[0, 1].numpy()
    assert probs.shape == (32, 32)
    assert np.all(probs[pred] >= 0.9 - 1e-6) and np.all(probs[~pred] <= 0.1 + 1e-6)
    assert probs[0, 0] < 1e-6  # far background: almost certainly background


def test_study_reports_dice_losses_as_monotonic(study, tmp_path):
    curves = study.run_study(["dice", "ce", "boundary"], image_size=48, steps=6)
    labels = {c.loss for c in curves}
    assert {"dice", "ce", "boundary"} <= labels and any(label.startswith("boundary@end") for label in labels)
    dice_small = next(c for c in curves if c.loss == "dice" and c.size == "small")
    assert dice_small.dice[0] == pytest.approx(1.0) and dice_small.dice[-1] == pytest.approx(0.0)
    assert dice_small.monotonic() and all(g > 0 for g in dice_small.grad_norm)
    study.plot(curves, tmp_path / "study.png")
    text = study.markdown(curves, "python scripts/loss_study.py --out x", 48, 0.9)
    assert (tmp_path / "study.png").read_bytes()[:4] == b"\x89PNG"
    assert "| `dice` | yes | yes |" in text and "python scripts/loss_study.py --out x" in text


def test_committed_study_covers_every_registered_loss():
    from segtrain.losses import available_losses

    text = (ROOT / "docs" / "loss_study.md").read_text()
    assert "python scripts/loss_study.py" in text and (ROOT / "docs" / "loss_study.png").is_file()
    missing = [name for name in available_losses() if f"| `{name}` |" not in text]
    assert not missing, f"re-run the command in docs/loss_study.md: {missing} not in the study"
