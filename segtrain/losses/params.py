"""What each registry loss's parameters may be, checked without torch: ``segtrain loss=tversky loss.alpha=2``
gets its one line before torch, Lightning or the data are touched (``segtrain.config_check``).

The loss classes check their arguments themselves when they are built (they stay the authority, and a
loss used from Python gets the same checks); ``tests/test_losses.py`` checks that this table accepts
and refuses what the classes accept and refuse, value by value, so the two cannot drift apart.
"""

from __future__ import annotations

import math
from dataclasses import dataclass


@dataclass(frozen=True)
class Number:
    """A number in [low, high] (``(low, high]`` with ``low_open``), or null with ``none``, or one of ``words``."""

    low: float | None = None
    high: float | None = None
    low_open: bool = False
    none: bool = False
    words: tuple[str, ...] = ()

    def problem(self, name: str, value) -> str | None:
        if value is None and self.none:
            return None
        if isinstance(value, str) and value in self.words:
            return None
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            extra = "".join(f" or {w}" for w in self.words) + (" or null" if self.none else "")
            return f"{name} must be a number{extra}, got {value!r}"
        value = float(value)
        too_low = self.low is not None and (value <= self.low if self.low_open else value < self.low)
        if math.isnan(value) or too_low or (self.high is not None and value > self.high):
            bounds = (f"{'(' if self.low_open else '['}{self.low if self.low is not None else '-inf'}, "
                      f"{self.high if self.high is not None else 'inf'}]")
            return f"{name}={value:g} is out of range; allowed {bounds}"
        return None


@dataclass(frozen=True)
class Flag:
    def problem(self, name: str, value) -> str | None:
        return None if isinstance(value, bool) else f"{name} must be true or false, got {value!r}"


@dataclass(frozen=True)
class Weights:
    """A list of non-negative numbers, not all zero (one per class); or null with ``none``, or ``auto`` with ``auto``."""

    none: bool = False
    auto: bool = False

    def problem(self, name: str, value) -> str | None:
        if (value is None and self.none) or (value == "auto" and self.auto):
            return None
        if isinstance(value, (str, bytes)) or not isinstance(value, (list, tuple)):
            return f"{name} must be a list of non-negative numbers (one per class){' or auto' if self.auto else ''}, got {value!r}"
        for item in value:
            problem = Number(0.0).problem(name, item)
            if problem:
                return problem
        if not any(value):
            return f"{name} must hold at least one positive value (one per class), got {list(value)!r}"
        return None


UNIT, NON_NEGATIVE, POSITIVE, FLAG = Number(0.0, 1.0), Number(0.0), Number(0.0, low_open=True), Flag()
REGION = {"smooth": NON_NEGATIVE, "include_background": FLAG, "batch": FLAG}
PARAMETERS: dict[str, dict] = {
    "dice": {**REGION, "squared": FLAG},
    "iou": REGION,
    "tversky": {**REGION, "alpha": UNIT, "beta": Number(0.0, 1.0, none=True)},
    "focal_tversky": {**REGION, "alpha": UNIT, "beta": Number(0.0, 1.0, none=True), "gamma": POSITIVE},
    "sensitivity_specificity": {**REGION, "sensitivity_weight": UNIT},
    "generalized_dice": REGION,
    "ce": {"class_weights": Weights(none=True)},
    "wce": {"weights": Weights(auto=True), "max_weight": POSITIVE},
    "balanced_ce": {"beta": Number(0.0, 1.0, words=("auto",)), "include_background": FLAG},
    "distance_weighted_ce": {"w0": NON_NEGATIVE, "sigma": POSITIVE},
    "focal": {"alpha": Number(0.0, 1.0, none=True), "gamma": NON_NEGATIVE},
    "conservative": {"lam": NON_NEGATIVE, "base": Number(1.0, low_open=True, words=("e",))},
    "dice_ce": {"ce_weight": NON_NEGATIVE, "dice_weight": NON_NEGATIVE, "smooth": NON_NEGATIVE, "include_background": FLAG},
    "dice_focal": {"focal_weight": NON_NEGATIVE, "gamma": NON_NEGATIVE, "alpha": Number(0.0, 1.0, none=True),
                   "smooth": NON_NEGATIVE, "include_background": FLAG},
    "combo": {"alpha": UNIT, "beta": Number(0.0, 1.0, words=("auto",)), "smooth": NON_NEGATIVE, "include_background": FLAG},
    "exp_log": {"w_dice": NON_NEGATIVE, "w_cross": NON_NEGATIVE, "gamma_dice": POSITIVE, "gamma_cross": POSITIVE,
                "smooth": NON_NEGATIVE, "include_background": FLAG},
    "lovasz": {"per_image": FLAG},
    "boundary": {"alpha": UNIT, "alpha_step": UNIT, "alpha_min": UNIT},
}


def _together(name: str, params: dict) -> str | None:
    """Constraints between parameters (the classes say the same)."""
    if name == "boundary":
        alpha, alpha_min = float(params.get("alpha", 1.0)), float(params.get("alpha_min", 0.01))
        if alpha_min > alpha:
            return f"alpha_min={alpha_min:g} is out of range; allowed [0.0, alpha={alpha:g}] (lower alpha_min with alpha)"
    if name in ("tversky", "focal_tversky"):
        alpha = float(params.get("alpha", 0.3))
        beta = params.get("beta")
        beta = 1.0 - alpha if beta is None else float(beta)
        if alpha == 0 and beta == 0 and float(params.get("smooth", 1.0)) == 0:
            return "alpha=0, beta=0 and smooth=0 make the index 0/0 on an empty class; give one of them a positive value"
    return None


def problem(name: str, params: dict) -> str | None:
    """The first problem with a registry loss's parameters, as ``loss 'tversky': alpha=2 is out of range; ...``;
    None when they are fine, or when ``name`` is not a registry loss (a loss of one's own checks itself)."""
    table = PARAMETERS.get(name)
    if table is None:
        return None
    for key, value in params.items():
        rule = table.get(key)
        found = rule.problem(key, value) if rule is not None else None
        if found:
            return f"loss '{name}': {found}"
    found = _together(name, params)
    return f"loss '{name}': {found}" if found else None
