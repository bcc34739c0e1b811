"""Loss/metric divergence monitor: warns when the loss keeps improving while Dice does not.

The classic complaint, "my loss goes down every epoch but my Dice stays flat", has a handful of
causes: the background dominating a region loss (``include_background=true``), a sigmoid/softmax or
one-hot mismatch, per-batch Dice averaging over empty patches, patch metrics far from whole-case
metrics, or a loss that does not track the metric on small objects. This callback makes it visible
at once: after every validation it compares the trend of the loss with the trend of ``val/dice``
over the last ``window`` validations, logs

* ``val_diagnostics/loss_metric_divergence``: 1 when the two diverge at this validation, else 0;
* ``val_diagnostics/loss_dice_corr``: Spearman rank correlation between loss and Dice over the window
  (−1: Dice rises exactly as the loss falls, the healthy sign; 0 when either is constant);
* ``val_diagnostics/loss_change`` and ``val_diagnostics/dice_change``: the trends compared (see below);

and prints one warning, the first time the two diverge, with the numbers and the likely causes.

The rule (``assess``), over the last ``window`` validations, each trend from a least-squares line:

1. the loss improves clearly: its relative drop is at least ``min_loss_improvement``;
2. Dice does not follow: its gain is below ``min_dice_gain`` (absolute Dice);
3. and either Dice never took off (its best so far exceeds its first value by less than
   ``min_dice_progress``) or it is falling (a drop of at least ``min_dice_drop``).

Rule 3 keeps a healthy run quiet once it has converged: there the loss keeps falling slowly
(the network grows more confident) while Dice, long risen, stays on its plateau. Nothing is
judged before the window is full, so a run whose Dice takes a few epochs to leave 0 is not flagged.

A second rule watches the training loss (``train/loss_epoch``), for the run whose validation loss
rises or stays flat while it learns nothing that Dice sees: the training loss fell by at least
``min_train_loss_drop`` (its trend since the first validation) while ``val/dice`` never left 0 (its
best below ``dice_floor``) for a whole window. The warning names the likely cause: over-fitting a
few training cases when the validation loss rose meanwhile, else a mismatch between the loss and
the metric. See ``docs/diagnostics.md``.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Sequence
from dataclasses import dataclass

from lightning.pytorch import Callback

log = logging.getLogger("segtrain")


@dataclass
class Assessment:
    """One validation's verdict with the numbers behind it (``None`` where not computable yet)."""

    diverging: bool
    corr: float | None  # Spearman rank correlation of loss and Dice over the window
    loss_change: float | None  # relative change of the loss trend over the window (< 0: improving)
    dice_change: float | None  # absolute change of the Dice trend over the window
    dice_progress: float | None  # best Dice so far minus the first Dice
    window_full: bool = False
    rule: str | None = None  # "loss": the loss improves, Dice does not; "train": the training loss falls, Dice stays 0
    train_change: float | None = None  # relative change of the training loss trend since the first validation
    val_loss_change: float | None = None  # the same for the validation loss, over that span


def spearman(x: Sequence[float], y: Sequence[float]) -> float:
    """Spearman rank correlation (SciPy's); 0 when either series is constant (SciPy would give NaN)."""
    import numpy as np
    from scipy.stats import spearmanr

    if len(x) != len(y) or len(x) < 2:
        raise ValueError(f"spearman needs two series of equal length >= 2, got {len(x)} and {len(y)}")
    if np.ptp(np.asarray(x, dtype=float)) == 0 or np.ptp(np.asarray(y, dtype=float)) == 0:
        return 0.0
    return float(spearmanr(x, y).statistic)


def linear_trend(x: Sequence[float], y: Sequence[float]) -> tuple[float, float]:
    """(first, last) values of the least-squares line through (x, y), at x[0] and x[-1]."""
    import numpy as np

    xs, ys = np.asarray(x, dtype=float), np.asarray(y, dtype=float)
    if np.ptp(xs) == 0:
        return float(ys.mean()), float(ys.mean())
    slope, intercept = np.polyfit(xs, ys, 1)
    return float(intercept + slope * xs[0]), float(intercept + slope * xs[-1])


def assess(
    epochs: Sequence[float],
    losses: Sequence[float],
    dices: Sequence[float],
    window: int = 10,
    min_loss_improvement: float = 0.05,
    min_dice_gain: float = 0.01,
    min_dice_progress: float = 0.1,
    min_dice_drop: float = 0.05,
    train_losses: Sequence[float] | None = None,
    min_train_loss_drop: float = 0.2,
    dice_floor: float = 0.01,
) -> Assessment:
    """The divergence verdict for a history of validations (oldest first); see the module docstring.

    ``train_losses``: the training loss of each validation's epoch (the second rule; None: not judged).
    """
    n = len(losses)
    if n < 3:
        return Assessment(False, None, None, None, None)
    recent = slice(max(0, n - window), n)
    e, lo, di = list(epochs[recent]), list(losses[recent]), list(dices[recent])
    corr = spearman(lo, di)
    loss_first, loss_last = linear_trend(e, lo)
    scale = max(abs(loss_first), abs(loss_last), 1e-12)
    loss_change = (loss_last - loss_first) / scale
    dice_first, dice_last = linear_trend(e, di)
    dice_change = dice_last - dice_first
    dice_progress = max(dices) - dices[0]
    full = n >= window
    loss_improves = -loss_change >= min_loss_improvement
    dice_stalls = dice_change < min_dice_gain
    never_took_off = dice_progress < min_dice_progress
    falling = dice_change <= -min_dice_drop
    diverging = full and loss_improves and dice_stalls and (never_took_off or falling)
    train_change = val_loss_change = None
    flat_at_zero = False
    if train_losses is not None and len(train_losses) == n:
        train_change = _relative_change(epochs, train_losses)
        val_loss_change = _relative_change(epochs, losses)
        flat_at_zero = full and -train_change >= min_train_loss_drop and max(dices) < dice_floor
    rule = "loss" if diverging else "train" if flat_at_zero else None
    return Assessment(diverging or flat_at_zero, corr, loss_change, dice_change, dice_progress, full, rule,
                      train_change, val_loss_change)


def _relative_change(epochs: Sequence[float], values: Sequence[float]) -> float:
    """The relative change of the least-squares trend of ``values`` from the first to the last point."""
    first, last = linear_trend(epochs, values)
    return (last - first) / max(abs(first), abs(last), 1e-12)


class DivergenceMonitor(Callback):
    """Compares the loss trend with the Dice trend after each validation; see the module docstring.

    Args:
        loss_key: the loss compared; ``val/loss`` is computed on the same whole cases as ``val/dice``.
        metric_key: the metric compared (higher is better).
        window: number of validations whose trends are compared; nothing is judged before it fills.
        min_loss_improvement: relative drop of the loss over the window that counts as "clearly improving".
        min_dice_gain: Dice gain over the window below which Dice "does not follow".
        min_dice_progress: Dice gain since the first validation above which Dice has "taken off";
            afterwards a flat Dice is a plateau and only a falling Dice is flagged.
        min_dice_drop: Dice drop over the window that counts as "falling".
        warn: print the warning (the flag and correlation are logged either way).

    Raises:
        ValueError: ``window`` below 3, or a negative threshold.
    """

    def __init__(
        self,
        loss_key: str = "val/loss",
        metric_key: str = "val/dice",
        window: int = 10,
        min_loss_improvement: float = 0.05,
        min_dice_gain: float = 0.01,
        min_dice_progress: float = 0.1,
        min_dice_drop: float = 0.05,
        min_train_loss_drop: float = 0.2,
        dice_floor: float = 0.01,
        train_loss_key: str = "train/loss_epoch",
        warn: bool = True,
    ):
        if int(window) < 3:
            raise ValueError(f"DivergenceMonitor: window={window} must be at least 3 validations")
        for name, value in (("min_loss_improvement", min_loss_improvement), ("min_dice_gain", min_dice_gain),
                            ("min_dice_progress", min_dice_progress), ("min_dice_drop", min_dice_drop),
                            ("min_train_loss_drop", min_train_loss_drop), ("dice_floor", dice_floor)):
            if not value >= 0:
                raise ValueError(f"DivergenceMonitor: {name}={value} must be >= 0")
        self.loss_key, self.metric_key = loss_key, metric_key
        self.thresholds = dict(
            window=int(window),
            min_loss_improvement=float(min_loss_improvement),
            min_dice_gain=float(min_dice_gain),
            min_dice_progress=float(min_dice_progress),
            min_dice_drop=float(min_dice_drop),
            min_train_loss_drop=float(min_train_loss_drop),
            dice_floor=float(dice_floor),
        )
        self.train_loss_key = train_loss_key
        self.warn = bool(warn)
        self.history: dict[str, list[float]] = {"epoch": [], "loss": [], "dice": [], "train_loss": []}
        self.warned = False
        self.last: Assessment | None = None

    # -- Lightning hooks ----------------------------------------------------------------------
    def on_validation_end(self, trainer, pl_module) -> None:
        # The module logs val/* in its on_validation_epoch_end, which Lightning calls after the
        # callbacks' one: on_validation_end is the first hook that sees this epoch's values.
        if trainer.sanity_checking or trainer.state.fn != "fit":
            return  # a stand-alone trainer.validate() has no trend to judge
        metrics = trainer.callback_metrics
        if self.loss_key not in metrics or self.metric_key not in metrics:
            return
        loss, dice = float(metrics[self.loss_key]), float(metrics[self.metric_key])
        if not (math.isfinite(loss) and math.isfinite(dice)):
            return  # e.g. a class absent from every validation case: no Dice to compare
        self.history["epoch"].append(float(trainer.current_epoch))
        self.history["loss"].append(loss)
        self.history["dice"].append(dice)
        train = _epoch_train_loss(pl_module, trainer, self.train_loss_key)
        if train is not None and len(self.history["train_loss"]) == len(self.history["loss"]) - 1:
            self.history["train_loss"].append(train)
        self.last = assess(self.history["epoch"], self.history["loss"], self.history["dice"], **self.thresholds,
                           train_losses=self.history["train_loss"] or None)
        values = {"val_diagnostics/loss_metric_divergence": float(self.last.diverging)}
        if self.last.corr is not None:
            values["val_diagnostics/loss_dice_corr"] = self.last.corr
            values["val_diagnostics/loss_change"] = self.last.loss_change
            values["val_diagnostics/dice_change"] = self.last.dice_change
        for logger in trainer.loggers:
            logger.log_metrics(values, step=trainer.global_step)
        if self.last.diverging and not self.warned:
            self.warned = True
            if self.warn and trainer.is_global_zero:
                log.warning(self.message(trainer, pl_module))

    # -- the warning ----------------------------------------------------------------------------
    def message(self, trainer, pl_module) -> str:
        if self.last.rule == "train":
            return self.flat_message()
        a, window = self.last, self.thresholds["window"]
        n = min(window, len(self.history["loss"]))
        losses, dices = self.history["loss"][-n:], self.history["dice"][-n:]
        lines = [
            f"segtrain: warning: loss and Dice diverge: {self.loss_key} improved {-a.loss_change:.1%} over the last {n} "
            f"validations ({losses[0]:.4f} -> {losses[-1]:.4f}) while {self.metric_key} changed {a.dice_change:+.4f} "
            f"({dices[0]:.4f} -> {dices[-1]:.4f}, best {max(self.history['dice']):.4f}); "
            f"rank correlation loss-Dice {a.corr:+.2f} (healthy: close to -1).",
            "  Likely causes, most likely first:",
        ]
        lines += [f"  - {hint}" for hint in self.hints(trainer, pl_module)]
        lines.append("  Logged as val_diagnostics/loss_metric_divergence; see the overlays in TensorBoard's Images tab "
                     "and docs/diagnostics.md. (Printed once per run.)")
        return "\n".join(lines)

    def flat_message(self) -> str:
        """The second rule's warning: the training loss falls, the validation Dice never leaves 0."""
        a, h = self.last, self.history
        lines = [f"segtrain: warning: the training loss fell {-a.train_change:.1%} over {len(h['dice'])} validations "
                 f"({h['train_loss'][0]:.4f} -> {h['train_loss'][-1]:.4f}) while {self.metric_key} never left 0 (best "
                 f"{max(h['dice']):.4f}); {self.loss_key} {'rose' if a.val_loss_change > 0 else 'changed'} "
                 f"{a.val_loss_change:+.1%} ({h['loss'][0]:.4f} -> {h['loss'][-1]:.4f}).",
                 "  Likely cause:"]
        if a.val_loss_change > 0.05:
            lines.append("  - over-fitting a few training cases: the network learns them, and what it learns does not carry "
                         "to the validation cases (their loss rises); use more cases, check that training and validation "
                         "cases look alike (the dataset report, the overlays), keep augment=nnunet")
        else:
            lines.append("  - a mismatch between the loss and the metric: the loss improves on something Dice does not "
                         "see (the background, a class the metric leaves out, an activation the loss does not own); try "
                         "loss=dice_ce, and compare the overlays with the labels")
        lines.append("  Logged as val_diagnostics/loss_metric_divergence; docs/diagnostics.md. (Printed once per run.)")
        return "\n".join(lines)

    def hints(self, trainer, pl_module) -> list[str]:
        hints = []
        hints += pl_module.loss.hints()
        train_dice = trainer.callback_metrics.get("train/dice")
        if train_dice is not None and float(train_dice) - self.history["dice"][-1] > 0.3:
            hints.append(f"patch metrics are far from whole-case metrics (train/dice on patches {float(train_dice):.2f}, "
                         f"{self.metric_key} on whole cases {self.history['dice'][-1]:.2f}): foreground-centred patches "
                         "(data.pos_fraction) hide the false positives of whole cases; look at the overlays")
        if max(self.history["dice"]) < 0.05:
            hints.append("the network predicts (almost) no foreground: the loss is rewarded for an empty prediction; "
                         "try loss=dice_ce, loss=tversky loss.alpha=0.3 or loss=focal_tversky, and a higher data.pos_fraction")
        hints += [
            "per-batch Dice averaging over empty patches rewards predicting nothing: try loss.batch=true (batch Dice)",
            "a sigmoid/softmax or one-hot mismatch between network and loss (a custom loss; the registry's losses own "
            "the activation and the one-hot step)",
            "the loss does not track Dice on small objects: compare losses with segtrain -m loss=dice_ce,tversky,... "
            "and segtrain-compare; see docs/loss_study.md",
        ]
        return hints

    # -- checkpointing: a resumed run keeps its history --------------------------------------------
    def state_dict(self) -> dict:
        return {"history": {k: list(v) for k, v in self.history.items()}, "warned": self.warned}

    def load_state_dict(self, state_dict: dict) -> None:
        self.history = {**self.history, **{k: list(v) for k, v in state_dict.get("history", {}).items()}}
        self.warned = bool(state_dict.get("warned", False))


def _epoch_train_loss(pl_module, trainer, key: str) -> float | None:
    """The training loss of the epoch the validation ends (its running mean, over every rank); None if unknown."""
    metric = getattr(pl_module, "train_loss", None)
    if key == "train/loss_epoch" and metric is not None and getattr(metric, "update_count", 0):
        value = float(metric.compute())
        return value if math.isfinite(value) else None
    value = trainer.callback_metrics.get(key)
    return float(value) if value is not None else None
