"""Dice/IoU from TP/FP/FN accumulated over the epoch: hand-computed counts, pooling, absent classes."""

import math

import pytest
import torch

from segtrain.metrics import OverlapMetrics, confusion_counts


def test_confusion_counts_by_hand():
    target = torch.tensor([[0, 1, 1, 2], [2, 2, 0, 0]])
    pred = torch.tensor([[0, 1, 0, 2], [2, 1, 0, 1]])
    tp, fp, fn = confusion_counts(pred, target, 3)
    # class 1: predicted at 3 places (one right), labelled at 2 places
    # class 2: predicted at 2 places (both right), labelled at 3 places
    assert tp.tolist() == [1, 2]
    assert fp.tolist() == [2, 0]
    assert fn.tolist() == [1, 1]


def test_counts_match_monai_confusion_matrix():
    from monai.metrics import get_confusion_matrix
    from monai.networks.utils import one_hot

    g = torch.Generator().manual_seed(0)
    target = torch.randint(0, 3, (2, 1, 8, 8, 8), generator=g)
    pred = torch.randint(0, 3, (2, 1, 8, 8, 8), generator=g)
    tp, fp, fn = confusion_counts(pred, target, 3)
    cm = get_confusion_matrix(one_hot(pred, 3), one_hot(target, 3), include_background=False)  # (B, C, 4)
    summed = cm.sum(0)
    assert tp.tolist() == summed[:, 0].tolist()
    assert fp.tolist() == summed[:, 1].tolist()
    assert fn.tolist() == summed[:, 3].tolist()
    from torchmetrics.functional.classification import multiclass_stat_scores

    stats = multiclass_stat_scores(pred.flatten(), target.flatten(), 3, average=None)
    assert (tp.tolist(), fp.tolist(), fn.tolist()) == (stats[1:, 0].tolist(), stats[1:, 1].tolist(), stats[1:, 3].tolist())


def test_epoch_dice_pools_counts_instead_of_averaging_batches():
    metric = OverlapMetrics(num_classes=2)
    # batch 1: a large object found perfectly (TP 90); batch 2: a tiny object missed (FN 10), one FP.
    t1 = torch.zeros(1, 1, 10, 10, dtype=torch.long); t1[0, 0, :9] = 1
    metric.update(t1.clone(), t1)
    t2 = torch.zeros(1, 1, 10, 10, dtype=torch.long); t2[0, 0, 0, :10] = 1
    p2 = torch.zeros_like(t2); p2[0, 0, 5, 5] = 1
    metric.update(p2, t2)
    out = metric.compute()
    tp, fp, fn = 90, 1, 10
    assert float(out["mean_dice"]) == pytest.approx(2 * tp / (2 * tp + fp + fn))
    assert float(out["mean_iou"]) == pytest.approx(tp / (tp + fp + fn))
    # the mean of per-batch Dice would be (1 + 0) / 2 = 0.5: clearly different
    assert abs(float(out["mean_dice"]) - 0.5) > 0.3


def test_class_absent_everywhere_is_ignored_not_scored():
    metric = OverlapMetrics(num_classes=3)
    target = torch.zeros(1, 1, 4, 4, dtype=torch.long); target[0, 0, 0, 0] = 1
    metric.update(target.clone(), target)  # class 2 never labelled nor predicted
    out = metric.compute()
    assert float(out["dice"][0]) == 1.0
    assert math.isnan(float(out["dice"][1]))
    assert float(out["mean_dice"]) == 1.0  # not (1 + 0) / 2, not (1 + 1) / 2


def test_missed_class_scores_zero():
    metric = OverlapMetrics(num_classes=2)
    target = torch.zeros(1, 1, 4, 4, dtype=torch.long); target[0, 0, 0, 0] = 1
    metric.update(torch.zeros_like(target), target)
    assert float(metric.compute()["mean_dice"]) == 0.0


def test_shape_mismatch_raises():
    metric = OverlapMetrics(num_classes=2)
    with pytest.raises(ValueError, match="shape"):
        metric.update(torch.zeros(1, 1, 4, 4, dtype=torch.long), torch.zeros(1, 1, 4, 5, dtype=torch.long))


@pytest.mark.parametrize("channels", [1, 2, 3, 5])
def test_class_argmax_equals_torch_argmax(channels):
    from segtrain.metrics import class_argmax

    logits = torch.randn(2, channels, 6, 7, 5, generator=torch.Generator().manual_seed(channels))
    logits[0, :, 0, 0, 0] = 1.0  # a tie: the lower index wins, as with argmax
    expected = (logits > 0).long() if channels == 1 else logits.argmax(1, keepdim=True)
    assert torch.equal(class_argmax(logits), expected)
