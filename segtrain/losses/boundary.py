"""Boundary loss (Kervadec et al. 2019): generalized Dice blended into a distance-to-border term."""

from __future__ import annotations

from torch import Tensor

from segtrain.losses.base import LossInputs, SegmentationLoss
from segtrain.losses.maps import SignedDistanceMaps
from segtrain.losses.overlap import GeneralizedDiceLoss
from segtrain.losses.registry import register


@register("boundary")
class BoundaryLoss(SegmentationLoss):
    """Boundary loss: alpha·generalized_dice + (1 − alpha)·mean_x Σ_{c≥1} φ_c(x)·p_c(x).

    Kervadec et al., "Boundary loss for highly unbalanced segmentation", MIDL 2019 / MedIA 2021.
    ``φ_c`` is the signed Euclidean distance to the border of class ``c`` in the label (negative
    inside, positive outside, 0 where the class is absent or fills the case), in millimetres when
    the data pipeline knows the spacing, else in voxels. Probability mass far outside the object
    costs its distance, so the term acts on the border where region losses are flat. Pick it for
    tiny, highly unbalanced targets, as a second phase after a region loss: the paper's "rebalance"
    schedule starts at ``alpha = 1`` (pure generalized Dice) and lowers alpha by ``alpha_step``
    per epoch down to ``alpha_min``: alpha(epoch) = max(alpha_min, alpha − epoch·alpha_step).
    The current alpha is logged as ``train/loss_alpha``; it depends on the epoch only, so resuming
    continues the schedule.

    The distance maps depend on the label only: the data pipeline computes them once per case
    (label map ``signed_distance``, one channel per foreground class); without them (direct API
    use) they are computed on the fly from the target, in voxels, on its device.

    Args:
        alpha: weight of the generalized Dice term at epoch 0, in [0, 1].
        alpha_step: decrease of alpha per epoch, in [0, 1] (0 keeps alpha fixed).
        alpha_min: floor of alpha, in [0, alpha].

    Raises:
        ValueError: a value outside its range, or ``alpha_min`` above ``alpha``.
    """

    def __init__(self, alpha: float = 1.0, alpha_step: float = 0.01, alpha_min: float = 0.01):
        super().__init__()
        self.alpha = self._check_range("alpha", alpha, 0.0, 1.0)
        self.alpha_step = self._check_range("alpha_step", alpha_step, 0.0, 1.0)
        self.alpha_min = self._check_range("alpha_min", alpha_min, 0.0, 1.0)
        if self.alpha_min > self.alpha:
            self._fail(f"alpha_min={self.alpha_min:g} is out of range; allowed [0.0, alpha={self.alpha:g}] (lower alpha_min with alpha)")
        self.current_alpha = self.alpha
        self.region = GeneralizedDiceLoss()
        self.label_maps = {"signed_distance": SignedDistanceMaps()}

    def alpha_at(self, epoch: int) -> float:
        """The scheduled alpha of ``epoch`` (0-based)."""
        return max(self.alpha_min, self.alpha - epoch * self.alpha_step)

    def on_epoch_start(self, epoch: int) -> dict[str, float]:
        self.current_alpha = self.alpha_at(epoch)
        return {"alpha": self.current_alpha}

    def compute(self, inputs: LossInputs) -> Tensor:
        alpha = self.current_alpha
        loss = alpha * self.region.compute(inputs) if alpha > 0 else 0.0
        if alpha < 1:
            phi = inputs.label_map("signed_distance", self._on_the_fly, channels=inputs.num_labels - 1)
            fg = inputs.sigmoid if inputs.binary else inputs.probs[:, 1:]
            loss = loss + (1 - alpha) * (phi * fg).sum(1).mean()
        return loss

    @staticmethod
    def _on_the_fly(inputs: LossInputs) -> Tensor:
        # the target tensor (B, 1, *S) itself: SciPy per case on a CPU, torch on the target's device elsewhere
        return SignedDistanceMaps()(inputs.target.detach(), num_classes=inputs.num_labels)
