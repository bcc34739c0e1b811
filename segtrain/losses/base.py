"""Shared machinery of every loss: input checks, activation + one-hot once, per-(sample, class) TP/FP/FN.

Conventions (../shared/LOSSES.md): ``C == 1`` is binary with ``p = sigmoid(logits)`` seen as the two
classes ``[1 - p, p]``; ``C >= 2`` uses ``softmax``. All reductions run in float32, also under
autocast, so sums over large volumes never overflow in fp16/bf16.
"""

from __future__ import annotations

from functools import cached_property

import torch
import torch.nn.functional as F
from torch import Tensor, nn


class LossInputs:
    """Logits and labels of one call, checked once; probabilities and one-hot computed once, lazily.

    Compound losses hand the same ``LossInputs`` to each component, so the softmax and the one-hot
    are computed a single time per forward.
    """

    def __init__(self, logits: Tensor, target: Tensor, loss_name: str):
        self.loss_name = loss_name
        if not torch.is_tensor(logits) or not logits.is_floating_point():
            raise ValueError(f"loss '{loss_name}': logits must be a float tensor (B, C, *S), got {_describe(logits)}")
        if logits.ndim not in (4, 5):
            raise ValueError(
                f"loss '{loss_name}': logits must be (B, C, H, W) or (B, C, D, H, W), got shape {tuple(logits.shape)}"
            )
        if not torch.is_tensor(target) or target.is_floating_point() or target.dtype == torch.bool:
            raise ValueError(
                f"loss '{loss_name}': target must be an integer label map (B, 1, *S) or (B, *S) of class indices, "
                f"got {_describe(target)}; convert soft/one-hot labels with argmax and cast with .long()"
            )
        if target.ndim == logits.ndim - 1:
            target = target.unsqueeze(1)
        spatial = tuple(logits.shape[2:])
        if target.ndim != logits.ndim or target.shape[1] != 1 or target.shape[0] != logits.shape[0] or tuple(
            target.shape[2:]
        ) != spatial:
            raise ValueError(
                f"loss '{loss_name}': target shape {tuple(target.shape)} does not match logits {tuple(logits.shape)}; "
                f"expected ({logits.shape[0]}, 1, {', '.join(map(str, spatial))}) or without the channel axis"
            )
        self.num_classes = logits.shape[1]
        high = 2 if self.num_classes == 1 else self.num_classes
        if target.numel():
            lo, hi = torch.aminmax(target)
            lo, hi = int(lo), int(hi)
            if lo < 0 or hi >= high:
                raise ValueError(
                    f"loss '{loss_name}': label values must lie in [0, {high - 1}] for C = {self.num_classes} "
                    f"logit channel(s), found values in [{lo}, {hi}]"
                )
        self.logits = logits
        self.target = target.long()
        self.maps: dict[str, Tensor] = {}

    @property
    def binary(self) -> bool:
        """True when the network has one output channel (sigmoid)."""
        return self.num_classes == 1

    @property
    def spatial_dims(self) -> tuple[int, ...]:
        return tuple(range(2, self.logits.ndim))

    @cached_property
    def logits32(self) -> Tensor:
        return self.logits.float()

    @cached_property
    def probs(self) -> Tensor:
        """Class probabilities (B, K, *S) in float32, K = 2 for binary."""
        if self.binary:
            p = torch.sigmoid(self.logits32)
            return torch.cat([1 - p, p], dim=1)
        return torch.softmax(self.logits32, dim=1)

    @cached_property
    def log_probs(self) -> Tensor:
        """Log class probabilities (B, K, *S) in float32, computed stably from the logits."""
        if self.binary:
            return torch.cat([F.logsigmoid(-self.logits32), F.logsigmoid(self.logits32)], dim=1)
        return torch.log_softmax(self.logits32, dim=1)

    @cached_property
    def onehot(self) -> Tensor:
        """One-hot labels (B, K, *S) in float32."""
        shape = (self.target.shape[0], 2 if self.binary else self.num_classes, *self.target.shape[2:])
        return torch.zeros(shape, dtype=torch.float32, device=self.target.device).scatter_(1, self.target, 1.0)

    @cached_property
    def class_counts(self) -> Tensor:
        """Voxel count of each class in the batch, (K,) float32."""
        return torch.bincount(self.target.flatten(), minlength=self.onehot.shape[1]).float()

    def kept_channels(self, include_background: bool) -> slice:
        """Channels entering a region loss: drop class 0 unless asked (binary always keeps the foreground only)."""
        return slice(1, None) if (self.binary or not include_background) else slice(None)


def _describe(x) -> str:
    if torch.is_tensor(x):
        return f"{x.dtype} tensor of shape {tuple(x.shape)}"
    return type(x).__name__


class SegmentationLoss(nn.Module):
    """Base of every registry loss: ``forward(logits, target)`` → scalar, via ``compute(LossInputs)``.

    ``label_maps``: maps a loss needs that depend on the label only (e.g. a signed distance map).
    Name → ``fn(label: np.ndarray (1, *S) int, spacing: tuple[float, ...]) -> np.ndarray (K, *S) float32``.
    The data pipeline computes them once per case (cached, before cropping, cropped with the label)
    and the module passes them as keyword arguments: ``loss(logits, target, **{name: map})``.
    A loss must still work without them (computing them on the fly), for direct API use.
    """

    registry_name = "loss"
    label_maps: dict = {}

    def forward(self, logits: Tensor, target: Tensor, **maps: Tensor) -> Tensor:
        inputs = LossInputs(logits, target, self.registry_name)
        inputs.maps = maps
        return self.compute(inputs)

    def compute(self, inputs: LossInputs) -> Tensor:  # pragma: no cover - abstract
        raise NotImplementedError

    def on_epoch_start(self, epoch: int) -> dict[str, float]:
        """Scheduled losses update their parameters here; return the values to log (e.g. boundary's alpha)."""
        return {}

    # -- validation helpers shared by the subclasses --------------------------------------------
    def _check_range(self, param: str, value, low=None, high=None, allow_none: bool = False):
        if value is None and allow_none:
            return value
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ValueError(f"loss '{self.registry_name}': {param} must be a number, got {value!r}")
        if (low is not None and value < low) or (high is not None and value > high):
            bounds = f"[{low if low is not None else '-inf'}, {high if high is not None else 'inf'}]"
            raise ValueError(f"loss '{self.registry_name}': {param}={value} is out of range; allowed {bounds}")
        return float(value)

    def _check_bool(self, param: str, value) -> bool:
        if not isinstance(value, bool):
            raise ValueError(f"loss '{self.registry_name}': {param} must be true or false, got {value!r}")
        return value

    def extra_repr(self) -> str:
        return ", ".join(f"{k}={v!r}" for k, v in vars(self).items() if not k.startswith("_") and k != "training")


class RegionLoss(SegmentationLoss):
    """Base of the overlap losses: per-(sample, class) statistics over the kept classes.

    Args:
        smooth: Laplace smoothing ``s`` added to numerator and denominator (>= 0).
        include_background: keep class 0 when ``C >= 2`` (ignored for ``C == 1``).
        batch: sum over the batch too ("batch Dice", as nnU-Net) instead of per sample then mean.
    """

    def __init__(self, smooth: float = 1.0, include_background: bool = False, batch: bool = False):
        super().__init__()
        self.smooth = self._check_range("smooth", smooth, low=0.0)
        self.include_background = self._check_bool("include_background", include_background)
        self.batch = self._check_bool("batch", batch)

    def region_stats(self, inputs: LossInputs, power: float = 1.0) -> tuple[Tensor, Tensor, Tensor]:
        """Return ``TP = Σ p·g``, ``Σ p^power`` and ``Σ g`` per (sample, kept class), float32.

        Shapes are (B, K) or, with ``batch``, (1, K).
        """
        keep = inputs.kept_channels(self.include_background)
        p = inputs.probs[:, keep]
        g = inputs.onehot[:, keep]
        dims = inputs.spatial_dims
        tp = (p * g).sum(dims)
        sum_p = (p * p if power == 2 else p).sum(dims)
        sum_g = g.sum(dims)
        if self.batch:
            tp, sum_p, sum_g = tp.sum(0, keepdim=True), sum_p.sum(0, keepdim=True), sum_g.sum(0, keepdim=True)
        return tp, sum_p, sum_g
