"""Pixel-wise losses of the cross-entropy family."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor

from segtrain.losses.base import LossInputs, SegmentationLoss
from segtrain.losses.registry import register


@register("ce")
class CrossEntropyLoss(SegmentationLoss):
    """Cross-entropy: mean(−log p_t); with ``class_weights``, Σ w_t·(−log p_t) / Σ w_t (torch's convention).

    The pixel-wise baseline: well-conditioned gradients, but dominated by the background when the
    target is tiny; use ``wce``/``focal`` or a compound loss (``dice_ce``) for imbalanced data.
    With ``C == 1`` it is binary cross-entropy on the sigmoid.

    Args:
        class_weights: one non-negative weight per class (``C`` values, 2 for binary), or ``None``.

    Raises:
        ValueError: negative weights, or (at call time) a number of weights different from the classes.
    """

    def __init__(self, class_weights: Sequence[float] | None = None):
        super().__init__()
        if class_weights is not None:
            weights = [self._check_range("class_weights", float(w), low=0.0) for w in class_weights]
            if not any(weights):
                raise ValueError(f"loss '{self.registry_name}': class_weights are all zero")
            self.register_buffer("class_weights", torch.tensor(weights, dtype=torch.float32), persistent=False)
        else:
            self.class_weights = None

    def compute(self, inputs: LossInputs) -> Tensor:
        nll = -inputs.log_probs.gather(1, inputs.target)  # (B, 1, *S)
        if self.class_weights is None:
            return nll.mean()
        k = inputs.log_probs.shape[1]
        if self.class_weights.numel() != k:
            raise ValueError(
                f"loss '{self.registry_name}': class_weights has {self.class_weights.numel()} values "
                f"but the network predicts {k} classes"
            )
        w = self.class_weights.to(nll.device)[inputs.target]
        return (w * nll).sum() / w.sum().clamp_min(torch.finfo(torch.float32).tiny)
