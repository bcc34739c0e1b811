"""Shared machinery of every loss: input checks, activation + one-hot once, per-(sample, class) TP/FP/FN.

Conventions (../shared/LOSSES.md): ``C == 1`` is binary with ``p = sigmoid(logits)`` seen as the two
classes ``[1 - p, p]``; ``C >= 2`` uses ``softmax``. All reductions run in float32, also under
autocast, so sums over large volumes never overflow in fp16/bf16.

Speed: the region losses never build a one-hot tensor. ``soft_counts`` gets ``TP`` from the
probabilities at the label (a masked sum per kept class), ``Σg`` from label counts, and its
hand-written backward writes the gradient with respect to the probabilities in one pass.
"""

from __future__ import annotations

import math
from functools import cached_property
from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn


class LossInputs:
    """Logits and labels of one call, checked once; probabilities and one-hot computed once, lazily.

    Compound losses hand the same ``LossInputs`` to each component, so the softmax and the one-hot
    are computed a single time per forward. ``maps`` holds the per-case label maps of the call
    (see ``SegmentationLoss.label_maps``).
    """

    def __init__(self, logits: Tensor, target: Tensor, loss_name: str):
        self.loss_name = loss_name
        if not torch.is_tensor(logits) or not logits.is_floating_point():
            raise ValueError(f"loss '{loss_name}': logits must be a float tensor (B, C, *S), got {_describe(logits)}")
        if logits.ndim not in (4, 5):
            raise ValueError(
                f"loss '{loss_name}': logits must be (B, C, H, W) or (B, C, D, H, W), got shape {tuple(logits.shape)}"
            )
        if not torch.is_tensor(target) or target.is_floating_point() or target.is_complex() or target.dtype == torch.bool:
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
        if logits.shape[1] < 1 or logits.shape[0] < 1:
            raise ValueError(f"loss '{loss_name}': logits need at least one sample and one channel, got {tuple(logits.shape)}")
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

    # -- shapes -------------------------------------------------------------------------------------
    @property
    def binary(self) -> bool:
        """True when the network has one output channel (sigmoid)."""
        return self.num_classes == 1

    @property
    def num_labels(self) -> int:
        """Number of classes K seen by the losses: 2 for binary, C otherwise."""
        return 2 if self.binary else self.num_classes

    @property
    def spatial_dims(self) -> tuple[int, ...]:
        return tuple(range(2, self.logits.ndim))

    @property
    def batch_size(self) -> int:
        return self.logits.shape[0]

    @property
    def num_voxels(self) -> int:
        """Spatial positions per sample."""
        return math.prod(self.logits.shape[2:])

    @cached_property
    def flat_target(self) -> Tensor:
        """Labels as (B, N), N the spatial positions."""
        return self.target.reshape(self.batch_size, -1)

    # -- activations (float32) ------------------------------------------------------------------
    @cached_property
    def logits32(self) -> Tensor:
        return self.logits.float()

    @cached_property
    def sigmoid(self) -> Tensor:
        """Binary only: foreground probability (B, 1, *S)."""
        return torch.sigmoid(self.logits32)

    @cached_property
    def probs(self) -> Tensor:
        """Class probabilities (B, K, *S) in float32, K = 2 for binary.

        When ``log_probs`` is already there (a compound loss computed its pixel term first), the
        probabilities are its exponential, so one softmax serves both terms.
        """
        if self.binary:
            p = self.sigmoid
            return torch.cat([1 - p, p], dim=1)
        if "log_probs" in self.__dict__:
            return self.log_probs.exp()
        return torch.softmax(self.logits32, dim=1)

    @cached_property
    def log_probs(self) -> Tensor:
        """Log class probabilities (B, K, *S) in float32, computed stably from the logits."""
        if self.binary:
            return torch.cat([F.logsigmoid(-self.logits32), F.logsigmoid(self.logits32)], dim=1)
        return torch.log_softmax(self.logits32, dim=1)

    @cached_property
    def nll(self) -> Tensor:
        """−log p_t per position, (B, 1, *S) float32 (binary: BCE with logits, stable)."""
        if self.binary:
            target = self.flat_target_float.reshape(self.target.shape)
            return F.binary_cross_entropy_with_logits(self.logits32, target, reduction="none")
        return -self.log_probs.gather(1, self.target)

    @cached_property
    def log_one_minus_probs(self) -> Tensor:
        """log(1 − p_c) per class (B, K, *S), stable: the log-sum-exp of the other classes' log-probabilities."""
        lp = self.log_probs
        k = lp.shape[1]
        if k == 2:
            return lp.flip(1)
        others = [torch.logsumexp(torch.cat([lp[:, :c], lp[:, c + 1 :]], dim=1), dim=1, keepdim=True) for c in range(k)]
        return torch.cat(others, dim=1)

    # -- labels -----------------------------------------------------------------------------------
    @cached_property
    def onehot(self) -> Tensor:
        """One-hot labels (B, K, *S) in float32."""
        shape = (self.target.shape[0], self.num_labels, *self.target.shape[2:])
        return torch.zeros(shape, dtype=torch.float32, device=self.target.device).scatter_(1, self.target, 1.0)

    @cached_property
    def flat_target_float(self) -> Tensor:
        """Binary only: the labels as 0/1 floats (B, N), i.e. the foreground mask."""
        return self.flat_target.float()

    def class_mask(self, c: int) -> Tensor:
        """``target == c`` as (B, N) booleans, computed once per class and call."""
        masks = self.__dict__.setdefault("_masks", {})
        if c not in masks:
            masks[c] = self.flat_target == c
        return masks[c]

    @cached_property
    def sample_class_counts(self) -> Tensor:
        """Voxel count of each class in each sample, (B, K) float32 (Σg per sample and class).

        Foreground classes are counted from their masks; the background is what remains.
        """
        if self.binary:
            counts = self.flat_target_float.sum(1, keepdim=True)
        else:
            counts = torch.stack([self.class_mask(c).sum(1) for c in range(1, self.num_labels)], dim=1).float()
        background = self.num_voxels - counts.sum(1, keepdim=True)
        return torch.cat([background, counts], dim=1)

    @cached_property
    def class_counts(self) -> Tensor:
        """Voxel count of each class in the batch, (K,) float32."""
        return self.sample_class_counts.sum(0)

    def kept_channels(self, include_background: bool) -> slice:
        """Channels entering a region loss: drop class 0 unless asked (binary always keeps the foreground only)."""
        return slice(1, None) if (self.binary or not include_background) else slice(None)

    def label_map(self, name: str, compute, channels: int | None = None) -> Tensor:
        """The label map ``name`` (B, K', *S) float32: from the data pipeline when given, else ``compute(self)``.

        Checks the spatial shape against the logits; with ``channels``, a map with fewer channels is
        padded with zeros (classes absent from every case of the dataset have a zero map).
        """
        value = self.maps.get(name)
        if value is None:
            value = compute(self)
        value = torch.as_tensor(value, device=self.logits.device).float()
        spatial = tuple(self.logits.shape[2:])
        if value.ndim == self.logits.ndim - 1:
            value = value.unsqueeze(1)
        if value.ndim != self.logits.ndim or value.shape[0] != self.batch_size or tuple(value.shape[2:]) != spatial:
            raise ValueError(
                f"loss '{self.loss_name}': label map '{name}' has shape {tuple(value.shape)}, expected "
                f"({self.batch_size}, K, {', '.join(map(str, spatial))}) to match logits {tuple(self.logits.shape)}"
            )
        if channels is not None and value.shape[1] != channels:
            if value.shape[1] > channels:
                raise ValueError(
                    f"loss '{self.loss_name}': label map '{name}' has {value.shape[1]} channels but the network "
                    f"predicts {channels} foreground class(es)"
                )
            pad = value.new_zeros((value.shape[0], channels - value.shape[1], *spatial))
            value = torch.cat([value, pad], dim=1)
        return value


def _describe(x) -> str:
    if torch.is_tensor(x):
        return f"{x.dtype} tensor of shape {tuple(x.shape)}"
    return type(x).__name__


def safe_pow(x: Tensor, gamma: float, eps: float = 1e-6) -> Tensor:
    """``x^γ`` for ``x >= 0`` with a finite gradient at 0 also when ``γ < 1``.

    Exact for ``x >= eps``; below, the straight line from 0 to ``(eps, eps^γ)`` (slope ``eps^(γ−1)``),
    so a perfect prediction (x = 0) gives exactly 0 and finite gradients. Negative rounding noise is
    clipped to 0.
    """
    x = x.clamp_min(0.0)
    if gamma >= 1:
        return x.pow(gamma)
    return torch.where(x >= eps, x.clamp_min(eps).pow(gamma), x * eps ** (gamma - 1))


# -- the shared TP / FP / FN helper ---------------------------------------------------------------
class RegionStats(NamedTuple):
    """Per-(sample, kept class) soft counts, float32, shape (B, K') or (1, K') with ``batch``."""

    tp: Tensor  # Σ p·g
    sum_p: Tensor  # Σ p (Σ p² when squared)
    sum_g: Tensor  # Σ g

    @property
    def fp(self) -> Tensor:
        """Σ p·(1 − g) (valid for power 1)."""
        return self.sum_p - self.tp

    @property
    def fn(self) -> Tensor:
        """Σ (1 − p)·g."""
        return self.sum_g - self.tp


class _SoftCounts(torch.autograd.Function):
    """(TP, Σpᵏ) per (sample, channel ≥ start) without a one-hot tensor, with a one-pass backward.

    ``source`` (B, K, N) holds probabilities, or log-probabilities with ``from_log`` (then only the
    kept channels are exponentiated, and the exponential's backward is fused into this one).
    ``masks[i]`` (B, N) marks the voxels of the class of channel ``start + i``: booleans, or 0/1
    floats (the binary labels as they are). Channels below ``start`` get no statistics and a zero
    gradient.
    """

    @staticmethod
    def forward(ctx, source: Tensor, masks: list[Tensor], start: int, power: int, from_log: bool):
        with torch.autocast(source.device.type, enabled=False):  # autocast would run vecdot in fp16/bf16
            p = source[:, start:].exp() if from_log else source[:, start:]
            tp = torch.stack([_masked_sum(p[:, i], m) for i, m in enumerate(masks)], dim=1)
            sum_p = (p * p if power == 2 else p).sum(2)
        ctx.save_for_backward(p if (power == 2 or from_log) else p.new_empty(0))
        ctx.masks, ctx.start, ctx.power, ctx.from_log, ctx.shape = masks, start, power, from_log, source.shape
        return tp, sum_p

    @staticmethod
    def backward(ctx, grad_tp: Tensor, grad_sum_p: Tensor):
        (p,) = ctx.saved_tensors
        start = ctx.start
        grad = grad_tp.new_empty(ctx.shape)
        if start:
            grad[:, :start].zero_()
        for i, mask in enumerate(ctx.masks):
            d_sum, d_tp, out = grad_sum_p[:, i : i + 1], grad_tp[:, i : i + 1], grad[:, start + i]
            if ctx.power == 2:  # d/dp: 2p·dΣp² + dTP·g
                torch.mul(p[:, i], 2 * d_sum, out=out)
                out.addcmul_(mask, d_tp) if mask.is_floating_point() else out.add_(torch.where(mask, d_tp, 0.0))
            elif mask.is_floating_point():  # d/dp: dΣp + dTP·g
                torch.addcmul(d_sum, mask, d_tp, out=out)
            else:
                torch.where(mask, d_sum + d_tp, d_sum, out=out)
            if ctx.from_log:  # d/dlog p = p·d/dp
                out.mul_(p[:, i])
        return grad, None, None, None, None


def _masked_sum(values: Tensor, mask: Tensor) -> Tensor:
    """Σ values over the mask, per row: a fused dot product for a 0/1 float mask, else a masked sum."""
    if mask.is_floating_point():
        return torch.linalg.vecdot(values, mask)
    return torch.where(mask, values, 0.0).sum(1)


def soft_counts(inputs: LossInputs, include_background: bool, power: int = 1, batch: bool = False) -> RegionStats:
    """Per-(sample, kept class) ``TP = Σ p·g``, ``Σ pᵖᵒʷᵉʳ`` and ``Σ g`` in float32.

    Kept classes: all when ``include_background`` and ``C >= 2``, else the foreground ones (the
    binary case always keeps its foreground channel). ``batch`` sums over the batch too. When a
    pixel-wise term already computed the log-softmax, the counts start from it (no second softmax).
    """
    b = inputs.batch_size
    from_log = False
    if inputs.binary:
        source, start, masks = inputs.sigmoid.reshape(b, 1, -1), 0, [inputs.flat_target_float]
    else:
        start = 0 if include_background else 1
        from_log = "log_probs" in inputs.__dict__ and "probs" not in inputs.__dict__
        source = (inputs.log_probs if from_log else inputs.probs).reshape(b, inputs.num_classes, -1)
    sum_g = inputs.sample_class_counts[:, inputs.kept_channels(include_background)]
    if start == 0 and inputs.num_classes == 2 and power == 1:
        # Two softmax classes: p0 = 1 − p1, so the background's counts follow from the foreground's
        # (TP0 = N0 − Σp1 + TP1, Σp0 = N − Σp1) and one pass over the voxels is saved.
        tp1, sum_p1 = _SoftCounts.apply(source, [inputs.class_mask(1)], 1, power, from_log)
        tp = torch.cat([sum_g[:, :1] - sum_p1 + tp1, tp1], dim=1)
        sum_p = torch.cat([inputs.num_voxels - sum_p1, sum_p1], dim=1)
    else:
        if not inputs.binary:
            masks = [inputs.class_mask(c) for c in range(start, inputs.num_classes)]
        tp, sum_p = _SoftCounts.apply(source, masks, start, power, from_log)
    if batch:
        tp, sum_p, sum_g = tp.sum(0, keepdim=True), sum_p.sum(0, keepdim=True), sum_g.sum(0, keepdim=True)
    return RegionStats(tp, sum_p, sum_g)


# -- base classes ---------------------------------------------------------------------------------
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

    def set_num_classes(self, num_classes: int) -> None:
        """Told the dataset's class count (background included) before the data pipeline runs.

        Losses with per-class label maps use it to give every case the same number of channels.
        """

    # -- validation helpers shared by the subclasses --------------------------------------------
    def _fail(self, message: str):
        raise ValueError(f"loss '{self.registry_name}': {message}")

    def _check_range(self, param: str, value, low=None, high=None, allow_none: bool = False, low_open: bool = False):
        """A number in [low, high] (``(low, high]`` with ``low_open``); returns it as float."""
        if value is None and allow_none:
            return value
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            allowed = " or null" if allow_none else ""
            self._fail(f"{param} must be a number{allowed}, got {value!r}")
        value = float(value)
        too_low = low is not None and (value <= low if low_open else value < low)
        if math.isnan(value) or too_low or (high is not None and value > high):
            bounds = f"{'(' if low_open else '['}{low if low is not None else '-inf'}, {high if high is not None else 'inf'}]"
            self._fail(f"{param}={value:g} is out of range; allowed {bounds}")
        return value

    def _check_bool(self, param: str, value) -> bool:
        if not isinstance(value, bool):
            self._fail(f"{param} must be true or false, got {value!r}")
        return value

    def _check_weights(self, param: str, values) -> list[float]:
        """A non-empty list of non-negative numbers, not all zero."""
        if isinstance(values, (str, bytes)) or not hasattr(values, "__iter__"):
            self._fail(f"{param} must be a list of non-negative numbers (one per class), got {values!r}")
        weights = [self._check_range(param, v.item() if hasattr(v, "item") else v, low=0.0) for v in values]
        if not weights or not any(weights):
            self._fail(f"{param} must hold at least one positive value (one per class), got {list(values)!r}")
        return weights

    def extra_repr(self) -> str:
        return ", ".join(
            f"{k}={v!r}" for k, v in vars(self).items() if not k.startswith("_") and k not in ("training", "label_maps")
        )


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

    def region_stats(self, inputs: LossInputs, power: int = 1) -> RegionStats:
        """``TP``, ``Σpᵖᵒʷᵉʳ`` and ``Σg`` per (sample, kept class), float32; (B, K) or, with ``batch``, (1, K)."""
        return soft_counts(inputs, self.include_background, power, self.batch)
