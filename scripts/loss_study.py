"""How every registry loss responds as a prediction degrades, for a small and a large object.

After the experiment in Ma et al., "Loss odyssey in medical image segmentation" (Medical Image
Analysis 71, 2021): a 2D image holds one disc, small (radius 3: 0.2% of the pixels) or large
(radius 32: 20%). Starting from the perfect prediction, each step moves ``n`` pixels from true
positive to false negative (the object's outermost pixels first) and adds ``n`` false positives (the
background pixels nearest the object first), so the hard Dice of the prediction is exactly
``1 - n / |object|``. The prediction is soft: probability ``--confidence`` for the predicted class next to its border,
more confident farther away.
For every loss of ``available_losses()`` (default parameters; a scheduled loss such as ``boundary``
also at the end of its schedule) the study records the loss value and the L2 norm of its gradient
with respect to the logits at each step, and reports

* whether the loss rises monotonically as Dice falls (small object, large object);
* the loss at Dice 1 and at Dice 0 (its range over the study);
* the gradient norm at Dice 0.5.

Output: ``OUT.png`` (top: loss against Dice, each curve scaled to [0, 1]; bottom: gradient norm)
and ``OUT.md`` (the table, the findings and the command).

    python scripts/loss_study.py --out docs/loss_study
"""

from __future__ import annotations

import argparse
import math
import shlex
import sys
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

SIZES = {"small": 3, "large": 32}  # disc radius in pixels


@dataclass
class Curve:
    """One loss on one object: Dice of each step, loss value and gradient norm."""

    loss: str
    size: str
    dice: list[float] = field(default_factory=list)
    value: list[float] = field(default_factory=list)
    grad_norm: list[float] = field(default_factory=list)
    error: str | None = None

    def monotonic(self, rel_tol: float = 1e-6) -> bool:
        """True when the loss strictly rises at every step as Dice falls (steps are in falling Dice)."""
        values = np.asarray(self.value, dtype=float)
        if self.error or len(values) < 2 or not np.isfinite(values).all():
            return False
        tol = rel_tol * max(float(np.abs(values).max()), 1e-12)
        return bool((np.diff(values) > tol).all())

    def first_failure(self, rel_tol: float = 1e-6) -> float | None:
        """The highest Dice from which the loss stops rising (None when it rises throughout)."""
        values = np.asarray(self.value, dtype=float)
        tol = rel_tol * max(float(np.abs(values).max()), 1e-12)
        for i, step in enumerate(np.diff(values)):
            if not step > tol:
                return self.dice[i]
        return None

    def at(self, dice: float, which: str = "grad_norm") -> float:
        """Value of ``which`` at the step whose Dice is closest to ``dice``."""
        index = int(np.argmin(np.abs(np.asarray(self.dice) - dice)))
        return getattr(self, which)[index]


def disc(size: int, radius: float) -> np.ndarray:
    yy, xx = np.mgrid[:size, :size]
    centre = (size - 1) / 2
    return (yy - centre) ** 2 + (xx - centre) ** 2 <= radius**2


def degradation_orders(mask: np.ndarray, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Flat indices of object pixels (outermost first) and background pixels (nearest first); ties at random."""
    from scipy.ndimage import distance_transform_edt

    rng = np.random.default_rng(seed)
    inside = distance_transform_edt(mask).ravel()  # distance to the background
    outside = distance_transform_edt(~mask).ravel()  # distance to the object
    tie = rng.random(mask.size)
    fg = np.flatnonzero(mask.ravel())
    bg = np.flatnonzero(~mask.ravel())
    return fg[np.lexsort((tie[fg], inside[fg]))], bg[np.lexsort((tie[bg], outside[bg]))]


def degraded(mask: np.ndarray, n: int, fn_order: np.ndarray, fp_order: np.ndarray) -> np.ndarray:
    """The prediction with ``n`` false negatives and ``n`` false positives."""
    pred = mask.ravel().copy()
    pred[fn_order[:n]] = False
    pred[fp_order[:n]] = True
    return pred.reshape(mask.shape)


def hard_dice(pred: np.ndarray, mask: np.ndarray) -> float:
    tp = float((pred & mask).sum())
    return 2 * tp / float(pred.sum() + mask.sum())


def step_counts(object_pixels: int, steps: int) -> list[int]:
    """Distinct numbers of swapped pixels, from 0 (perfect) to the whole object (Dice 0)."""
    return sorted({int(round(t * object_pixels)) for t in np.linspace(0, 1, steps)})


def logits_for(pred: np.ndarray, confidence: float) -> torch.Tensor:
    """Two-class logits (1, 2, H, W) of a soft version of the hard prediction ``pred``.

    The foreground logit is ``k·d``, ``d`` the signed distance (pixels) to the border of ``pred``
    (>= 1 inside, <= -1 outside) and ``k = logit(confidence)``: the pixels next to the border get
    probability ``confidence`` for their predicted class, farther ones more, as a trained network's
    output does (a flat 1 - confidence on every background pixel would bury a small object under
    the background's probability mass).
    """
    from scipy.ndimage import distance_transform_edt

    k = math.log(confidence / (1 - confidence))
    signed = np.where(pred, distance_transform_edt(pred), -distance_transform_edt(~pred)) if pred.any() else -np.full(pred.shape, 1e3)
    fg = torch.from_numpy(np.clip(k * signed, -30.0, 30.0)).float()
    return torch.stack([torch.zeros_like(fg), fg])[None]


def build_variants(names: list[str]) -> list[tuple[str, object]]:
    """(label, loss) for every name; a scheduled loss also at the end of its schedule (``name@end``)."""
    from segtrain.losses import build_loss

    variants = []
    for name in names:
        loss = build_loss(name)
        start = loss.on_epoch_start(0) if hasattr(loss, "on_epoch_start") else {}
        variants.append((name, loss))
        if start:
            late = build_loss(name)
            end = late.on_epoch_start(100_000)
            if end != start:
                params = ", ".join(f"{k}={v:g}" for k, v in end.items())
                variants.append((f"{name}@end ({params})", late))
    return variants


def run_study(names: list[str] | None = None, image_size: int = 128, steps: int = 21, confidence: float = 0.9,
              seed: int = 0) -> list[Curve]:
    from segtrain.losses import available_losses

    names = names or available_losses()
    curves = []
    for size, radius in SIZES.items():
        mask = disc(image_size, radius)
        fn_order, fp_order = degradation_orders(mask, seed)
        target = torch.from_numpy(mask.astype(np.int64))[None, None]
        preds = [degraded(mask, n, fn_order, fp_order) for n in step_counts(int(mask.sum()), steps)]
        for label, loss_fn in build_variants(names):
            curve = Curve(label, size)
            for pred in preds:
                logits = logits_for(pred, confidence).requires_grad_(True)
                try:
                    value = loss_fn(logits, target)
                    value.backward()
                except Exception as err:  # noqa: BLE001 - one failing loss must not hide the others
                    curve.error = f"{type(err).__name__}: {err}"
                    break
                curve.dice.append(hard_dice(pred, mask))
                curve.value.append(float(value.detach()))
                curve.grad_norm.append(float(logits.grad.norm()))
            curves.append(curve)
    return curves


def plot(curves: list[Curve], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    labels = list(dict.fromkeys(c.loss for c in curves))
    cmap = plt.get_cmap("tab10")
    styles = ["-", "--", "-.", ":"]
    fig, axes = plt.subplots(2, 2, figsize=(13, 9), dpi=110, sharex=True)
    for col, size in enumerate(SIZES):
        for i, label in enumerate(labels):
            curve = next((c for c in curves if c.loss == label and c.size == size and not c.error), None)
            if curve is None:
                continue
            values = np.asarray(curve.value)
            span = values.max() - values.min()
            scaled = (values - values.min()) / span if span > 0 else np.zeros_like(values)
            style = dict(color=cmap(i % 10), linestyle=styles[(i // 10) % len(styles)], linewidth=1.4)
            axes[0, col].plot(curve.dice, scaled, label=label, **style)
            axes[1, col].plot(curve.dice, np.maximum(curve.grad_norm, 1e-12), **style)
        radius = SIZES[size]
        axes[0, col].set_title(f"{size} object (disc of radius {radius} px)")
        axes[0, col].set_ylabel("loss, scaled to [0, 1] per curve")
        axes[1, col].set_ylabel("‖∂loss/∂logits‖₂")
        axes[1, col].set_yscale("log")
        axes[1, col].set_xlabel("hard Dice of the prediction")
        for ax in axes[:, col]:
            ax.grid(alpha=0.3)
    handles, names = axes[0, 0].get_legend_handles_labels()
    fig.legend(handles, names, loc="center left", bbox_to_anchor=(1.0, 0.5), fontsize="small", frameon=False)
    fig.suptitle("Loss and gradient as the prediction degrades (more FP and FN at each step)")
    fig.tight_layout()
    fig.savefig(path, bbox_inches="tight")
    plt.close(fig)


def _fmt(value: float) -> str:
    if not math.isfinite(value):
        return "-"
    return f"{value:.3g}" if abs(value) >= 1e-3 or value == 0 else f"{value:.2e}"


def markdown(curves: list[Curve], command: str, image_size: int, confidence: float) -> str:
    labels = list(dict.fromkeys(c.loss for c in curves))
    by = {(c.loss, c.size): c for c in curves}

    def mono(curve: Curve) -> str:
        if curve.error:
            return "error"
        if curve.monotonic():
            return "yes"
        return f"no (from Dice {curve.first_failure():.2f})"

    rows = []
    for label in labels:
        small, large = by[(label, "small")], by[(label, "large")]
        cells = [f"`{label}`", mono(small), mono(large)]
        for curve in (small, large):
            cells.append("-" if curve.error else f"{_fmt(curve.value[0])} → {_fmt(curve.value[-1])}")
        for curve in (small, large):
            cells.append("-" if curve.error else _fmt(curve.at(0.5)))
        rows.append("| " + " | ".join(cells) + " |")
    both = [label for label in labels if by[(label, "small")].monotonic() and by[(label, "large")].monotonic()]
    large_only = [label for label in labels if by[(label, "large")].monotonic() and not by[(label, "small")].monotonic()]
    small_only = [label for label in labels if by[(label, "small")].monotonic() and not by[(label, "large")].monotonic()]
    neither = [label for label in labels if not by[(label, "small")].monotonic() and not by[(label, "large")].monotonic()]
    errors = [f"`{c.loss}` ({c.size}): {c.error}" for c in curves if c.error]
    ok = [label for label in labels if not by[(label, "small")].error and not by[(label, "large")].error]
    ratio = {label: by[(label, "small")].at(0.5) / max(by[(label, "large")].at(0.5), 1e-30) for label in ok}
    span = {label: (by[(label, "small")].value[-1] - by[(label, "small")].value[0])
            / max(abs(by[(label, "large")].value[-1] - by[(label, "large")].value[0]), 1e-30) for label in ok}
    strongest = sorted(ok, key=lambda label: -by[(label, "small")].at(0.5))[:3]
    weakest = sorted(ok, key=lambda label: by[(label, "small")].at(0.5))[:3]

    def names(items: list[str]) -> str:
        return ", ".join(f"`{i}`" for i in items) or "none"

    lines = [
        "# Loss study: how each loss follows Dice as a prediction degrades",
        "",
        "Made by (from the repository root):",
        "",
        "```",
        command,
        "```",
        "",
        "After the experiment of Ma et al., *Loss odyssey in medical image segmentation* (Medical Image Analysis 71, 2021).",
        f"A {image_size}×{image_size} image holds one disc: **small** (radius {SIZES['small']} px, "
        f"{int(disc(image_size, SIZES['small']).sum())} px, "
        f"{disc(image_size, SIZES['small']).mean():.2%} of the image) or **large** (radius {SIZES['large']} px, "
        f"{int(disc(image_size, SIZES['large']).sum())} px, {disc(image_size, SIZES['large']).mean():.1%}). "
        "From the perfect prediction, each step turns `n` object pixels into false negatives (outermost first) and adds "
        "`n` false positives (the background pixels nearest the object first), so the hard Dice is exactly `1 − n/|object|`. "
        f"Predictions are soft two-class softmax logits: probability {confidence} for the predicted class next to the "
        f"prediction's border, more confident farther away (logit = logit({confidence})·signed distance). Every loss "
        "of the registry runs with its default parameters (a scheduled loss also at the end of its schedule, `@end`). "
        "See `docs/loss_study.png`: top, each loss scaled to [0, 1] against Dice; bottom, the gradient norm.",
        "",
        "Columns: *monotonic*: the loss rises at every step as Dice falls (else the Dice from which it stops rising); "
        "*Dice 1 → 0*: the loss of the perfect and of the fully wrong prediction; *‖∇‖ at Dice 0.5*: L2 norm of "
        "∂loss/∂logits over the image.",
        "",
        "| loss | monotonic (small) | monotonic (large) | Dice 1 → 0 (small) | Dice 1 → 0 (large) | ‖∇‖ at Dice 0.5 (small) | ‖∇‖ at Dice 0.5 (large) |",
        "|---|---|---|---|---|---:|---:|",
        *rows,
        "",
        "## Findings",
        "",
        f"- Rise monotonically as Dice falls for both object sizes: {names(both)}.",
        f"- Only for the large object: {names(large_only)}.",
        f"- Only for the small object: {names(small_only)}.",
        f"- For neither: {names(neither)}.",
        f"- Strongest gradient on the small object at Dice 0.5: {names(strongest)}; weakest: {names(weakest)}.",
        "- Small/large gradient ratio at Dice 0.5 (above 1: the loss pushes harder on the small object): "
        + ", ".join(f"`{label}` {ratio[label]:.2g}" for label in sorted(ok, key=lambda x: -ratio[x])) + ".",
        "- Range ratio small/large (the loss's rise from Dice 1 to Dice 0 for the small object over that for the large "
        "one; near 1: a missed small object costs as much as a missed large one): "
        + ", ".join(f"`{label}` {span[label]:.2g}" for label in sorted(ok, key=lambda x: -span[x])) + ".",
        "- Pixel-averaged losses (the cross-entropy family) change little with a small object's errors: their range "
        "and gradient shrink with the object's share of the image, which is why they are paired with a region loss "
        "(`dice_ce`, `dice_focal`, `combo`) for tiny targets. Region losses are normalised per object, so the small "
        "object's errors weigh as much as the large one's.",
    ]
    if errors:
        lines += ["", "Errors:", *[f"- {e}" for e in errors]]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", default="docs/loss_study", help="output prefix: OUT.png and OUT.md")
    parser.add_argument("--losses", help="comma-separated registry names (default: all)")
    parser.add_argument("--image-size", type=int, default=128)
    parser.add_argument("--steps", type=int, default=21, help="degradation steps from Dice 1 to Dice 0")
    parser.add_argument("--confidence", type=float, default=0.9, help="probability of the predicted class, in (0.5, 1)")
    parser.add_argument("--seed", type=int, default=0, help="tie-breaking order of equidistant pixels")
    args = parser.parse_args(argv)
    if not 0.5 < args.confidence < 1:
        parser.error("--confidence must lie in (0.5, 1)")
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
    torch.manual_seed(args.seed)
    names = [n.strip() for n in args.losses.split(",")] if args.losses else None
    curves = run_study(names, args.image_size, args.steps, args.confidence, args.seed)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    png, md = out.with_suffix(".png"), out.with_suffix(".md")
    plot(curves, png)
    command = "python scripts/loss_study.py " + " ".join(shlex.quote(a) for a in (argv if argv is not None else sys.argv[1:]))
    md.write_text(markdown(curves, command.strip(), args.image_size, args.confidence))
    print(f"wrote {png} and {md}")


if __name__ == "__main__":
    main()
