"""Lovász losses: a convex surrogate of the Jaccard index (IoU), optimised directly (Berman et al. 2018)."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from segtrain.losses.base import LossInputs, SegmentationLoss
from segtrain.losses.registry import register


@register("lovasz")
class LovaszLoss(SegmentationLoss):
    """Lovász-softmax: mean over present classes c of ⟨sort↓(|g_c − p_c|), ∇J̄(g_c sorted)⟩; C == 1: Lovász hinge.

    Berman et al., "The Lovász-softmax loss: a tractable surrogate for the optimization of the
    intersection-over-union measure in neural networks", CVPR 2018. The Lovász extension of the
    Jaccard loss: errors sorted in decreasing order are weighted by the increments of the Jaccard
    loss of the growing prefix. Classes present in the batch's labels (background included) take
    part; with one channel it is the Lovász hinge on the logits (errors ``1 − x·(2g − 1)``,
    rectified). Pick it to fine-tune for IoU once a Dice/CE model has converged; it is slower (one
    sort per class over the batch) and noisy from scratch. Sorting and sums run in float32 (the
    Jaccard increments in float64).

    Args:
        per_image: compute the loss per sample and average, instead of over the flattened batch.

    Raises:
        ValueError: a non-boolean ``per_image``.
    """

    def __init__(self, per_image: bool = False):
        super().__init__()
        self.per_image = self._check_bool("per_image", per_image)

    def compute(self, inputs: LossInputs) -> Tensor:
        b = inputs.batch_size
        target = inputs.flat_target
        if inputs.binary:
            logits = inputs.logits32.reshape(b, -1)
            if self.per_image:
                return torch.stack([lovasz_hinge(logits[i], target[i]) for i in range(b)]).mean()
            return lovasz_hinge(logits.reshape(-1), target.reshape(-1))
        probs = inputs.probs.reshape(b, inputs.num_classes, -1)
        if self.per_image:
            return torch.stack([lovasz_softmax(probs[i], target[i]) for i in range(b)]).mean()
        return lovasz_softmax(probs.transpose(0, 1).reshape(inputs.num_classes, -1), target.reshape(-1))


def lovasz_grad(gt_sorted: Tensor) -> Tensor:
    """Increments of the Jaccard loss along the sorted errors (Berman et al., Alg. 1), float32; along the last axis."""
    gt = gt_sorted.double()
    total = gt.sum(-1, keepdim=True)
    intersection = total - gt.cumsum(-1)
    union = total + (1 - gt).cumsum(-1)
    jaccard = 1.0 - intersection / union
    return torch.cat([jaccard[..., :1], jaccard[..., 1:] - jaccard[..., :-1]], dim=-1).float()


def lovasz_hinge(logits: Tensor, labels: Tensor) -> Tensor:
    """Binary Lovász hinge on flat logits (N,) and 0/1 labels (N,)."""
    signs = 2.0 * labels.float() - 1.0
    errors = 1.0 - logits * signs
    errors_sorted, order = torch.sort(errors, descending=True)
    return (F.relu(errors_sorted) * lovasz_grad(labels[order])).sum()


def lovasz_softmax(probs: Tensor, labels: Tensor) -> Tensor:
    """Lovász-softmax on flat probabilities (C, N) and labels (N,), over the classes present in ``labels``.

    Every class is computed at once (one sort along N) and the absent ones are weighted out, so that which
    classes are present is never read back to the host.
    """
    classes = torch.arange(probs.shape[0], device=labels.device)[:, None]
    fg = labels[None, :] == classes  # (C, N)
    errors = (fg.float() - probs).abs()
    errors_sorted, order = torch.sort(errors, dim=1, descending=True)
    losses = (errors_sorted * lovasz_grad(torch.gather(fg, 1, order))).sum(1)  # (C,)
    present = fg.any(1).float()
    return (losses * present).sum() / present.sum().clamp_min(1.0)
