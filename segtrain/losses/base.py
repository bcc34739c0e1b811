"""The base classes of every loss: ``SegmentationLoss`` (forward → ``compute(LossInputs)``) and ``RegionLoss``.

The parts they share live beside them: ``segtrain.losses.inputs`` (``LossInputs``: checks, activation,
one-hot, once per call), ``segtrain.losses.soft_counts`` (the TP/FP/FN kernel) and
``segtrain.losses.maps`` (the label maps the data pipeline computes per case). The contract every
loss keeps is docs/losses.md.
"""

from __future__ import annotations

import math

from torch import Tensor, nn

from segtrain.losses.inputs import LossInputs
from segtrain.losses.soft_counts import RegionStats, soft_counts

EPS = 1e-7  # floor of a ratio's denominator when smooth=0 (as segmentation_models_pytorch): an empty class stays finite

__all__ = ["EPS", "LossInputs", "ModuleLoss", "RegionLoss", "RegionStats", "SegmentationLoss"]


class SegmentationLoss(nn.Module):
    """Base of every registry loss: ``forward(logits, target)`` → scalar, via ``compute(LossInputs)``.

    ``label_maps``: maps a loss needs that depend on the label only (e.g. a signed distance map).
    Name → ``fn(label: np.ndarray (1, *S) int, spacing: tuple[float, ...]) -> np.ndarray (K, *S) float32``.
    The data pipeline computes them once per case (cached, before cropping, cropped with the label)
    and the module passes them as keyword arguments: ``loss(logits, target, **{name: map})``.
    A loss must still work without them (computing them on the fly), for direct API use.
    """

    registry_name = "loss"  # a subclass's class name until ``register`` names it
    label_maps: dict = {}

    def __init_subclass__(cls, **kwargs):
        super().__init_subclass__(**kwargs)
        cls.registry_name = cls.__name__

    def forward(self, logits: Tensor, target: Tensor, **maps: Tensor) -> Tensor:
        inputs = LossInputs(logits, target, self.registry_name)
        inputs.maps = maps
        return self.compute(inputs)

    def compute(self, inputs: LossInputs) -> Tensor:  # pragma: no cover - abstract
        raise NotImplementedError

    def on_epoch_start(self, epoch: int) -> dict[str, float]:
        """Scheduled losses update their parameters here; return the values to log (e.g. boundary's alpha)."""
        return {}

    def hints(self) -> list[str]:
        """Likely causes to print when the loss improves while Dice does not (``DivergenceMonitor``)."""
        if any(getattr(m, "include_background", False) is True for m in self.modules()):
            return ["the loss includes the background (loss.include_background=true): its background term keeps "
                    "improving while the tiny foreground is missed; set loss.include_background=false"]
        return []

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


class ModuleLoss(SegmentationLoss):
    """A loss that is a plain ``nn.Module`` (``forward(logits, target) -> scalar``), e.g. a user's own.

    The registry's losses take the raw logits and the integer label map (B, 1, *S), own the
    activation and the one-hot step, and are checked, logged and deep-supervised by the training
    module; wrapped here, a plain module gets the same (the logits and labels are checked by
    ``LossInputs`` first). Label maps are not passed to it: subclass ``SegmentationLoss`` for those.
    """

    def __init__(self, module: nn.Module, name: str):
        super().__init__()
        self.module = module
        self.registry_name = name

    def compute(self, inputs: LossInputs) -> Tensor:
        return self.module(inputs.logits, inputs.target)

    def on_epoch_start(self, epoch: int) -> dict[str, float]:
        hook = getattr(self.module, "on_epoch_start", None)  # an optional hook of the user's class
        return dict(hook(epoch) or {}) if callable(hook) else {}


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

    def ratio(self, numerator: Tensor, denominator: Tensor) -> Tensor:
        """``numerator / denominator`` of an overlap index whose denominator holds ``smooth``.

        With ``smooth > 0`` the denominator is at least ``smooth``, so the plain quotient is finite and
        exact: an empty class (both sums 0) scores s / s = 1 however small ``s`` is (MONAI's convention).
        With ``smooth = 0`` the denominator is floored at ``EPS``, so an empty class scores 0 / EPS = 0
        instead of NaN. (Flooring a positive smooth too turned s / s into s / EPS: 0.1 for s = 1e-8.)
        """
        return numerator / (denominator if self.smooth > 0 else denominator.clamp_min(EPS))

    def region_stats(self, inputs: LossInputs, power: int = 1) -> RegionStats:
        """``TP``, ``Σpᵖᵒʷᵉʳ`` and ``Σg`` per (sample, kept class), float32; (B, K) or, with ``batch``, (1, K)."""
        return soft_counts(inputs, self.include_background, power, self.batch)
