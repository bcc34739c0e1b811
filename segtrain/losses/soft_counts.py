"""The soft-count kernel shared by the region losses: per-(sample, class) ``TP``, ``Σp`` and ``Σg``.

Speed: ``soft_counts`` never builds a one-hot tensor. It gets ``TP`` from the probabilities at the
label (a masked sum per kept class), ``Σg`` from label counts, and its hand-written backward writes
the gradient with respect to the probabilities in one pass (``_SoftCounts``).
"""

from __future__ import annotations

from typing import NamedTuple

import torch
from torch import Tensor

from segtrain.losses.inputs import LossInputs


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
