"""``LossInputs``: the logits and labels of one loss call, checked once; probabilities and one-hot made once.

Conventions (docs/losses.md): ``C == 1`` is binary with ``p = sigmoid(logits)`` seen as the two
classes ``[1 - p, p]``; ``C >= 2`` uses ``softmax``. All reductions run in float32, also under
autocast, so sums over large volumes never overflow in fp16/bf16.

The label-range check (values in ``[0, C)``) reads the labels' minimum and maximum back to the host,
a synchronisation on a GPU, on every call and every deep-supervision head. Training turns it off
(``checks.label_range=false``, the default: preflight has checked every case's labels before the
first step); direct use of a loss keeps it. ``with label_range_checks(False):`` switches it.
"""

from __future__ import annotations

import math
from contextlib import contextmanager
from functools import cached_property

import torch
import torch.nn.functional as F
from torch import Tensor

_CHECK_LABEL_RANGE = True


@contextmanager
def label_range_checks(enabled: bool):
    """Within the block, check (or not) on every loss call that the labels lie in ``[0, C)`` (one host sync per call)."""
    global _CHECK_LABEL_RANGE
    previous, _CHECK_LABEL_RANGE = _CHECK_LABEL_RANGE, bool(enabled)
    try:
        yield
    finally:
        _CHECK_LABEL_RANGE = previous


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
        if _CHECK_LABEL_RANGE and target.numel():
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
