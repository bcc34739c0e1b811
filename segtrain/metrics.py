"""Dice and IoU per foreground class from TP/FP/FN accumulated over a whole epoch and all ranks.

The nnU-Net convention: counts are summed over every case of the validation set (and every DDP
rank) before the ratio is taken, so a tiny lesion in one case weighs what its voxels weigh, and
the result does not depend on the batch size. A class absent from both the prediction and the
labels of the whole epoch has no score (NaN) and is left out of the mean, not scored 0 or 1.
"""

from __future__ import annotations

import torch
from torch import Tensor
from torchmetrics import Metric


def class_argmax(logits: Tensor) -> Tensor:
    """Hard prediction (B, 1, *S) from logits (B, C, *S): the same as ``argmax(1, keepdim=True)``.

    On CPU, torch's argmax over the (strided) channel axis is 10-30x slower than comparing the few
    channel planes in turn, which made it a visible share of a training step; ties go to the
    lower class index, as with argmax. ``C == 1`` (sigmoid) thresholds at 0.
    """
    if logits.shape[1] == 1:
        return (logits > 0).long()
    best = logits[:, 0]
    index = torch.zeros_like(best, dtype=torch.long)
    for c in range(1, logits.shape[1]):
        plane = logits[:, c]
        index = torch.where(plane > best, c, index)
        best = torch.maximum(best, plane)
    return index.unsqueeze(1)


def confusion_counts(pred: Tensor, target: Tensor, num_classes: int) -> tuple[Tensor, Tensor, Tensor]:
    """TP, FP, FN per foreground class (1..C-1) for hard label maps ``pred`` and ``target`` of equal shape.

    Comparisons and sums per class, on the tensors' device and without a host synchronisation (it runs
    every training step). torchmetrics' ``multiclass_stat_scores`` gives the same counts (the tests
    check it) but its ``torch.bincount`` reads the largest value back to the host on a GPU.
    """
    pred, target = pred.reshape(-1), target.reshape(-1)
    tp, fp, fn = [], [], []
    for c in range(1, num_classes):
        predicted, true = pred == c, target == c
        both = (predicted & true).sum()
        tp.append(both)
        fp.append(predicted.sum() - both)
        fn.append(true.sum() - both)
    return torch.stack(tp), torch.stack(fp), torch.stack(fn)


class OverlapMetrics(Metric):
    """Accumulates TP/FP/FN per foreground class; ``compute()`` gives Dice and IoU per class and their means.

    States are summed across DDP ranks by torchmetrics at ``compute()``.
    """

    full_state_update = False
    higher_is_better = True

    def __init__(self, num_classes: int, **kwargs):
        super().__init__(**kwargs)
        if num_classes < 2:
            raise ValueError(f"OverlapMetrics needs num_classes >= 2 (background + foreground), got {num_classes}")
        self.num_classes = num_classes
        for name in ("tp", "fp", "fn"):
            self.add_state(name, default=torch.zeros(num_classes - 1, dtype=torch.float64), dist_reduce_fx="sum")

    def update(self, pred: Tensor, target: Tensor) -> None:
        """``pred`` and ``target``: hard label maps (B, 1, *S) or (B, *S)."""
        if pred.shape != target.shape:
            raise ValueError(f"prediction shape {tuple(pred.shape)} differs from label shape {tuple(target.shape)}")
        tp, fp, fn = confusion_counts(pred, target, self.num_classes)
        self.tp += tp.to(self.tp.dtype)
        self.fp += fp.to(self.fp.dtype)
        self.fn += fn.to(self.fn.dtype)

    def compute(self) -> dict[str, Tensor]:
        denom = self.tp + self.fp + self.fn
        scored = denom > 0
        nan = torch.full_like(self.tp, float("nan"))
        dice = torch.where(scored, 2 * self.tp / (denom + self.tp).clamp_min(1), nan)
        iou = torch.where(scored, self.tp / denom.clamp_min(1), nan)
        return {"dice": dice, "iou": iou, "mean_dice": dice.nanmean(), "mean_iou": iou.nanmean()}
