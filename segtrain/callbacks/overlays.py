"""Image overlays of a few fixed validation cases, logged to TensorBoard after every validation.

One image per case, tag ``val_overlays/<case id>``, four titled panels in a 2×2 grid: the image |
the ground truth over it ("truth") | the prediction over it | the errors (true positives green,
false positives red, false negatives blue, with that legend in its title). Classes keep one colour in the
ground-truth and prediction panels. The cases are the first ``num_cases`` validation cases by id
(fixed across epochs); a 3D case shows the slice (along the last axis) with the most foreground
in the label, or in the prediction when the label is empty (the middle slice when both are).

Only rank 0 draws (it sees its share of the validation cases under DDP); only the chosen 2D slices
are kept until the end of the validation epoch, never whole volumes.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from lightning.pytorch import Callback
from torch import Tensor

# Class colours (class 1, 2, ...; cycled), and the error colours.
PALETTE = ((1.0, 0.85, 0.1), (0.1, 0.8, 1.0), (1.0, 0.3, 1.0), (1.0, 0.55, 0.1), (0.5, 1.0, 0.3), (0.6, 0.5, 1.0))
TP_COLOUR, FP_COLOUR, FN_COLOUR = (0.1, 0.9, 0.1), (1.0, 0.15, 0.15), (0.2, 0.4, 1.0)


def pick_slice(label: Tensor, pred: Tensor) -> int:
    """Index along the last axis of the slice with the most foreground in ``label`` (else ``pred``)."""
    dims = tuple(range(label.ndim - 1))
    for volume in (label, pred):
        counts = (volume > 0).sum(dim=dims)
        if int(counts.max()) > 0:
            return int(counts.argmax())
    return label.shape[-1] // 2


def normalise(image: Tensor) -> Tensor:
    """Grey (or RGB for 3 channels) in [0, 1] from a (C, H, W) image, clipped at the 0.5/99.5 percentiles."""
    image = image[:3] if image.shape[0] == 3 else image[:1]
    flat = image.float().flatten()
    if flat.numel() > 100_000:  # quantile of a subsample: plenty for display
        flat = flat[torch.linspace(0, flat.numel() - 1, 100_000).long()]
    low, high = torch.quantile(flat, torch.tensor([0.005, 0.995], dtype=flat.dtype))
    scaled = ((image.float() - low) / (high - low).clamp_min(1e-8)).clamp(0, 1)
    return scaled.expand(3, *scaled.shape[1:]) if scaled.shape[0] == 1 else scaled


def _paint(base: Tensor, mask: Tensor, colour: Sequence[float], opacity: float) -> Tensor:
    colour_t = torch.tensor(colour, dtype=base.dtype).view(3, 1, 1)
    return torch.where(mask.unsqueeze(0), (1 - opacity) * base + opacity * colour_t, base)


PANEL_TITLES = ("image", "truth", "prediction", "errors")
HEADER = 16  # pixels of the title band above each panel
GAP = 2      # pixels between panels


def render_overlay(image: Tensor, label: Tensor, pred: Tensor, opacity: float = 0.5, show_errors: bool = True,
                   min_size: int = 128, titles: bool = True) -> Tensor:
    """(3, H', W') RGB in [0, 1]: the panels image | truth | prediction | errors in a 2-column grid.

    ``image`` (C, H, W) and label maps ``label``, ``pred`` (H, W). Small slices are enlarged (nearest
    neighbour) so that the shorter side is at least ``min_size``. With ``titles``, each panel has
    its name above it, and the errors panel its legend (TP green, FP red, FN blue). Two columns keep
    the picture about as wide as tall, so it fits TensorBoard's image card.
    """
    grey = normalise(image.cpu())
    label, pred = label.cpu().long(), pred.cpu().long()
    panels = [grey]
    for volume in (label, pred):
        painted = grey
        for cls in [int(c) for c in torch.unique(volume) if c > 0]:
            painted = _paint(painted, volume == cls, PALETTE[(cls - 1) % len(PALETTE)], opacity)
        panels.append(painted)
    if show_errors:
        fg_label, fg_pred = label > 0, pred > 0
        errors = _paint(grey, fg_label & (pred == label), TP_COLOUR, 0.8)
        errors = _paint(errors, fg_pred & (pred != label), FP_COLOUR, 0.8)
        errors = _paint(errors, fg_label & ~fg_pred, FN_COLOUR, 0.8)
        panels.append(errors)
    scale = max(1, -(-min_size // max(1, min(grey.shape[1:]))))
    panels = [p.repeat_interleave(scale, dim=1).repeat_interleave(scale, dim=2) for p in panels]
    height, width = panels[0].shape[1:]
    header = HEADER if titles else 0
    columns = min(2, len(panels))
    rows = -(-len(panels) // columns)
    canvas = torch.ones(3, rows * (header + height) + (rows - 1) * GAP, columns * width + (columns - 1) * GAP)
    corners = []
    for index, panel in enumerate(panels):
        top = (index // columns) * (header + height + GAP)
        left = (index % columns) * (width + GAP)
        canvas[:, top + header: top + header + height, left: left + width] = panel
        corners.append((left, top))
    return _write_titles(canvas, corners, width) if titles else canvas


def _write_titles(canvas: Tensor, corners: list[tuple[int, int]], width: int) -> Tensor:
    """Each panel's title (and the errors legend) in the band above it, black on white."""
    import numpy as np
    from PIL import Image, ImageDraw, ImageFont

    picture = Image.fromarray((canvas.permute(1, 2, 0).numpy() * 255).round().astype(np.uint8))
    draw = ImageDraw.Draw(picture)
    try:
        font = ImageFont.load_default(size=12)
    except TypeError:  # Pillow < 10.1: the small bitmap font
        font = ImageFont.load_default()
    legend = (("TP", TP_COLOUR), ("FP", FP_COLOUR), ("FN", FN_COLOUR))
    for title, (left, top) in zip(PANEL_TITLES, corners):
        x = left + 2
        if title == "errors":  # "errors: TP FP FN", or the coloured legend alone where the panel is narrow
            needed = draw.textlength("errors: " + " ".join(name for name, _ in legend), font=font)
            if needed <= width - 2:
                draw.text((x, top + 1), "errors:", fill=(0, 0, 0), font=font)
                x += draw.textlength("errors: ", font=font)
            for name, colour in legend:
                if x + draw.textlength(name, font=font) > left + width:
                    break
                draw.text((x, top + 1), name, fill=tuple(int(255 * c) for c in colour), font=font)
                x += draw.textlength(name + " ", font=font)
        else:
            draw.text((x, top + 1), title, fill=(0, 0, 0), font=font)
    return torch.from_numpy(np.asarray(picture, dtype=np.float32) / 255.0).permute(2, 0, 1).contiguous()


def display_slice(image: Tensor, label: Tensor, pred: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """2D views (C, H, W), (H, W), (H, W) of one case's image (C, *S) and label maps (1, *S), display-oriented.

    3D volumes (RAS arrays, x y z) give the axial slice chosen by ``pick_slice``, shown as radiologists
    do (patient's anterior up, right on the left); 2D images (MONAI reads them as width x height) are
    transposed back to height x width.
    """
    label, pred = label[0], pred[0]
    if image.ndim == 4:
        index = pick_slice(label, pred)
        image, label, pred = image[..., index], label[..., index], pred[..., index]
        return image.transpose(-1, -2).flip(-1, -2), label.T.flip(0, 1), pred.T.flip(0, 1)
    return image.transpose(-1, -2), label.T, pred.T


def _ids(ids, batch_size: int, batch_idx: int) -> list[str]:
    if ids is None:
        return [f"batch{batch_idx:04d}_{i}" for i in range(batch_size)]
    if isinstance(ids, str):
        return [ids]
    if isinstance(ids, Tensor):
        return [str(v) for v in ids.flatten().tolist()]
    return [str(v) for v in ids]


class ValidationOverlays(Callback):
    """Logs image | ground truth | prediction | errors of the first ``num_cases`` validation cases.

    Args:
        num_cases: how many cases (the first by id) to show.
        every_n_epochs: log every n-th validation (1: each one).
        opacity: opacity of the label colours over the image, in [0, 1].
        show_errors: add the error panel (TP green, FP red, FN blue).
        min_size: enlarge small slices so that their shorter side is at least this many pixels.

    Raises:
        ValueError: ``num_cases`` or ``every_n_epochs`` below 1, ``opacity`` outside [0, 1].
    """

    def __init__(self, num_cases: int = 4, every_n_epochs: int = 1, opacity: float = 0.5, show_errors: bool = True,
                 min_size: int = 128, tag: str = "val_overlays"):
        if int(num_cases) < 1 or int(every_n_epochs) < 1:
            raise ValueError(f"ValidationOverlays: num_cases={num_cases} and every_n_epochs={every_n_epochs} must be >= 1")
        if not 0 <= float(opacity) <= 1:
            raise ValueError(f"ValidationOverlays: opacity={opacity} must lie in [0, 1]")
        self.num_cases, self.every_n_epochs = int(num_cases), int(every_n_epochs)
        self.opacity, self.show_errors, self.min_size, self.tag = float(opacity), bool(show_errors), int(min_size), tag
        self._slices: dict[str, tuple[Tensor, Tensor, Tensor]] = {}

    def _active(self, trainer) -> bool:
        return (trainer.is_global_zero and not trainer.sanity_checking
                and trainer.current_epoch % self.every_n_epochs == 0
                and any(hasattr(getattr(lg, "experiment", None), "add_image") for lg in trainer.loggers))

    def on_validation_epoch_start(self, trainer, pl_module) -> None:
        self._slices = {}

    def on_validation_batch_end(self, trainer, pl_module, outputs, batch, batch_idx, dataloader_idx=0) -> None:
        if not isinstance(outputs, dict) or "pred" not in outputs or not self._active(trainer):
            return
        image, label, pred = outputs["image"], outputs["label"], outputs["pred"]
        for i, case_id in enumerate(_ids(outputs.get("id"), image.shape[0], batch_idx)):
            kept = sorted(self._slices)
            if len(kept) >= self.num_cases and case_id >= kept[-1]:
                continue  # only the first num_cases ids are kept
            with torch.no_grad():
                views = display_slice(image[i].detach(), label[i].detach(), pred[i].detach())
            self._slices[case_id] = tuple(v.cpu() for v in views)
            for extra in sorted(self._slices)[self.num_cases:]:
                del self._slices[extra]

    def on_validation_epoch_end(self, trainer, pl_module) -> None:
        if not self._slices:
            return
        writers = [lg.experiment for lg in trainer.loggers if hasattr(getattr(lg, "experiment", None), "add_image")]
        for case_id in sorted(self._slices):
            panel = render_overlay(*self._slices[case_id], opacity=self.opacity, show_errors=self.show_errors,
                                   min_size=self.min_size)
            for writer in writers:
                writer.add_image(f"{self.tag}/{case_id}", panel, global_step=trainer.global_step, dataformats="CHW")
        self._slices = {}
