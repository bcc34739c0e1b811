"""Pixel-wise losses of the cross-entropy family: CE, weighted, balanced, distance-weighted, focal, conservative.

``p_t`` is the probability of the true class at a position; every loss here is a mean over all
positions of the batch (docs/losses.md), computed in float32 from the logits with the stable
``log_softmax`` / ``logsigmoid`` forms.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor

from segtrain.losses.base import LossInputs, SegmentationLoss
from segtrain.losses.maps import BorderWeightMap
from segtrain.losses.soft_counts import safe_pow
from segtrain.losses.registry import register


@register("ce")
class CrossEntropyLoss(SegmentationLoss):
    """Cross-entropy: mean(−log p_t); with ``class_weights``, Σ w_t·(−log p_t) / Σ w_t (torch's convention).

    The pixel-wise baseline (no single paper): well-conditioned gradients, but dominated by the
    background when the target is tiny. Pick it as a baseline or for balanced classes; for
    imbalanced data use ``wce``/``focal`` or a compound loss (``dice_ce``). With ``C == 1`` it is
    binary cross-entropy on the sigmoid.

    Args:
        class_weights: one non-negative weight per class (``C`` values, 2 for binary), or ``None``.

    Raises:
        ValueError: negative weights, or (at call time) a number of weights different from the classes.
    """

    def __init__(self, class_weights: Sequence[float] | None = None):
        super().__init__()
        if class_weights is not None:
            weights = self._check_weights("class_weights", class_weights)
            self.register_buffer("class_weights", torch.tensor(weights, dtype=torch.float32), persistent=False)
        else:
            self.class_weights = None

    def compute(self, inputs: LossInputs) -> Tensor:
        if self.class_weights is None:
            return mean_nll(inputs)
        nll = inputs.nll  # (B, 1, *S)
        w = _per_class(self, "class_weights", self.class_weights, inputs)[inputs.target]
        return (w * nll).sum() / w.sum().clamp_min(torch.finfo(torch.float32).tiny)


@register("wce")
class WeightedCrossEntropyLoss(SegmentationLoss):
    """Weighted cross-entropy: Σ_n w_t(n)·(−log p_t(n)) / N, N the positions of the batch.

    Long et al., "Fully convolutional networks for semantic segmentation", CVPR 2015 (class-balanced
    weighting). ``weights: auto`` gives the background weight 1 and a foreground class ``c`` weight
    ``(N − N_c) / N_c`` counted on the batch's labels (capped by ``max_weight``; 0 for an absent
    class), so each class contributes as much as the background. Pick it for a pixel-wise loss on
    imbalanced data; unlike ``ce``'s ``class_weights``, the sum is divided by N, not by Σ w.

    Args:
        weights: ``"auto"`` or one non-negative weight per class (``C`` values, 2 for binary).
        max_weight: cap of the automatic weights (> 0).

    Raises:
        ValueError: ``weights`` neither ``auto`` nor a list of non-negative numbers, ``max_weight`` <= 0,
            or (at call time) a number of weights different from the classes.
    """

    def __init__(self, weights: str | Sequence[float] = "auto", max_weight: float = 1000.0):
        super().__init__()
        self.max_weight = self._check_range("max_weight", max_weight, low=0.0, low_open=True)
        if isinstance(weights, str):
            if weights != "auto":
                self._fail(f"weights={weights!r} is not allowed; use auto or a list of one weight per class")
            self.weights = "auto"
        else:
            self.weights = self._check_weights("weights", weights)

    def class_weights(self, inputs: LossInputs) -> Tensor:
        """(K,) float32: the fixed weights, or the automatic ones from the batch's label counts."""
        if self.weights != "auto":
            return _per_class(self, "weights", torch.tensor(self.weights, dtype=torch.float32), inputs)
        counts = inputs.class_counts
        total = counts.sum()
        w = torch.where(counts > 0, (total - counts) / counts.clamp_min(1.0), 0.0).clamp_max(self.max_weight)
        w[0] = 1.0
        return w

    def compute(self, inputs: LossInputs) -> Tensor:
        w = self.class_weights(inputs)[inputs.target]
        return (w * inputs.nll).mean()


@register("balanced_ce")
class BalancedCrossEntropyLoss(SegmentationLoss):
    """Balanced cross-entropy: −mean(β·g·log p + (1−β)·(1−g)·log(1−p)) over the kept one-hot channels.

    Xie & Tu, "Holistically-nested edge detection", ICCV 2015. Binary cross-entropy per class
    channel with positives weighted ``β`` and negatives ``1 − β``; ``beta: auto`` takes β = the
    fraction of negatives in the batch (HED's choice), which balances very sparse targets. Pick it
    for thin or tiny structures (edges, vessels); it is the pixel term of ``combo``.

    Args:
        beta: weight of the positives, in [0, 1], or ``"auto"``.
        include_background: keep the class-0 channel when ``C >= 2`` (binary keeps its foreground only).

    Raises:
        ValueError: ``beta`` outside [0, 1] and not ``auto``; a non-boolean flag.
    """

    def __init__(self, beta: float | str = 0.7, include_background: bool = False):
        super().__init__()
        if isinstance(beta, str):
            if beta != "auto":
                self._fail(f"beta={beta!r} is not allowed; use a number in [0.0, 1.0] or auto")
            self.beta = "auto"
        else:
            self.beta = self._check_range("beta", beta, 0.0, 1.0)
        self.include_background = self._check_bool("include_background", include_background)

    def compute(self, inputs: LossInputs) -> Tensor:
        keep = inputs.kept_channels(self.include_background)
        g = inputs.onehot[:, keep]
        positive = inputs.log_probs[:, keep]
        negative = inputs.log_one_minus_probs[:, keep]
        if self.beta == "auto":
            positives = inputs.class_counts[keep].sum()
            beta = 1.0 - positives / g.numel()
        else:
            beta = self.beta
        return -(beta * g * positive + (1 - beta) * (1 - g) * negative).mean()


@register("distance_weighted_ce")
class DistanceWeightedCrossEntropyLoss(SegmentationLoss):
    """U-Net's weighted cross-entropy: mean(w(x)·(−log p_t(x))), w(x) = w_c(x) + w0·exp(−(d1 + d2)² / (2σ²)).

    Ronneberger et al., "U-Net: Convolutional networks for biomedical image segmentation", MICCAI
    2015. ``d1``, ``d2``: distances (voxels) to the nearest and second-nearest foreground object
    (connected components of ``label > 0``; 0 inside an object), the exponential only where at least
    two objects exist; ``w_c``: inverse class frequency in the batch, N / (K_present·N_c), so the
    balancing weight averages 1. Pick it for many small touching objects (cells, nuclei): the thin
    background gaps between them get a large weight and the network learns to separate them.

    The border term depends on the label only: the data pipeline computes it once per case
    (label map ``border_weight``); without it (direct API use) it is computed on the fly from the
    target, on its device.

    Args:
        w0: weight of the border term (>= 0).
        sigma: width of the border term in voxels (> 0).

    Raises:
        ValueError: a negative ``w0`` or a non-positive ``sigma``.
    """

    def __init__(self, w0: float = 10.0, sigma: float = 5.0):
        super().__init__()
        self.w0 = self._check_range("w0", w0, low=0.0)
        self.sigma = self._check_range("sigma", sigma, low=0.0, low_open=True)
        self.label_maps = {"border_weight": BorderWeightMap(self.w0, self.sigma)}

    def compute(self, inputs: LossInputs) -> Tensor:
        border = inputs.label_map("border_weight", self._border_on_the_fly, channels=1)
        counts = inputs.class_counts
        present = counts > 0
        balance = torch.where(present, counts.sum() / (present.sum() * counts).clamp_min(1.0), 0.0)
        weight = balance[inputs.target] + border
        return (weight * inputs.nll).mean()

    def _border_on_the_fly(self, inputs: LossInputs) -> Tensor:
        # the target tensor (B, 1, *S) itself: SciPy per case on a CPU, torch on the target's device elsewhere
        return self.label_maps["border_weight"](inputs.target.detach())


@register("focal")
class FocalLoss(SegmentationLoss):
    """Focal loss: mean(−α_t·(1 − p_t)^γ·log p_t); α_t = alpha at foreground, 1 − alpha at background.

    Lin et al., "Focal loss for dense object detection", ICCV 2017. The factor (1 − p_t)^γ mutes
    the easy, well-classified voxels (the huge background), so the hard ones drive the gradient.
    Pick it when cross-entropy is swamped by easy background; ``gamma=0`` with ``alpha=null`` is CE.

    Args:
        alpha: weight of the foreground positions in [0, 1] (background 1 − alpha), or ``None`` for 1.
        gamma: focusing exponent (>= 0).

    Raises:
        ValueError: ``alpha`` outside [0, 1], a negative ``gamma``.
    """

    def __init__(self, alpha: float | None = 0.25, gamma: float = 2.0):
        super().__init__()
        self.alpha = self._check_range("alpha", alpha, 0.0, 1.0, allow_none=True)
        self.gamma = self._check_range("gamma", gamma, low=0.0)

    def compute(self, inputs: LossInputs) -> Tensor:
        nll = inputs.nll
        loss = nll
        if self.gamma:
            # 1 − p_t = −expm1(log p_t), exact near p_t = 1; safe_pow keeps γ < 1 differentiable at p_t = 1.
            loss = safe_pow(-torch.expm1(-nll), self.gamma) * nll
        if self.alpha is not None:
            loss = torch.where(inputs.target > 0, self.alpha, 1.0 - self.alpha) * loss
        return loss.mean()


@register("conservative")
class ConservativeLoss(SegmentationLoss):
    """Conservative loss: mean(λ·(1 + log_a p_t)²·log_a(−log_a p_t)), p_t clamped to [1e-6, 1 − 1e-6].

    Zhu et al., "Penalizing top performers: conservative loss for semantic segmentation
    adaptation", ECCV 2018. Its gradient vanishes at p_t = 1/a and stays small for confident voxels,
    which discourages over-confident predictions; pick it when training on one domain (scanner,
    site) and testing on another. The value is negative for p_t > 1/a; only its slope matters.

    Args:
        lam: scale λ (>= 0).
        base: logarithm base a (> 1), or ``"e"`` (the default) for the natural logarithm.

    Raises:
        ValueError: a negative ``lam``, a ``base`` <= 1.
    """

    CLAMP = 1e-6

    def __init__(self, lam: float = 5.0, base: float | str = "e"):
        super().__init__()
        self.lam = self._check_range("lam", lam, low=0.0)
        if isinstance(base, str):
            if base != "e":
                self._fail(f"base={base!r} is not allowed; use e or a number > 1")
            base = math.e
        self.base = self._check_range("base", base, low=1.0, low_open=True)

    def compute(self, inputs: LossInputs) -> Tensor:
        ln_a = math.log(self.base)
        nll = inputs.nll.clamp(-math.log1p(-self.CLAMP), -math.log(self.CLAMP))  # p_t in [1e-6, 1 - 1e-6]
        log_p = -nll / ln_a  # log_a p_t < 0
        return (self.lam * (1 + log_p).square() * (torch.log(nll / ln_a) / ln_a)).mean()


def mean_nll(inputs: LossInputs) -> Tensor:
    """mean(−log p_t) with torch's fused kernels (no per-voxel tensor when none is cached yet)."""
    if "nll" in inputs.__dict__:
        return inputs.nll.mean()
    if inputs.binary:
        return F.binary_cross_entropy_with_logits(inputs.logits32, inputs.flat_target_float.reshape(inputs.target.shape))
    return F.nll_loss(inputs.log_probs, inputs.target[:, 0])


def _per_class(loss: SegmentationLoss, param: str, weights: Tensor, inputs: LossInputs) -> Tensor:
    """Fixed per-class weights on the inputs' device, checked against the number of classes."""
    if weights.numel() != inputs.num_labels:
        loss._fail(
            f"{param} has {weights.numel()} values but the network predicts {inputs.num_labels} classes "
            f"({'binary: background and foreground' if inputs.binary else 'one per channel'})"
        )
    return weights.to(inputs.logits.device)
