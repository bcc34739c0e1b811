"""Per-case, per-class scores of a hard prediction against its label: overlap, boundary distance, lesions.

For each foreground class ``c``, with ``P`` the predicted voxels of ``c`` and ``T`` the true ones:

- Dice ``2|P∩T| / (|P|+|T|)`` and IoU ``|P∩T| / |P∪T|``.
- HD95: the larger of the two directed 95th-percentile surface distances (MONAI's
  ``compute_hausdorff_distance(percentile=95)``); ASSD: the mean of all surface distances in both
  directions (``compute_average_surface_distance(symmetric=True)``); NSD: the share of both surfaces
  within ``nsd_tolerance`` mm of the other (``compute_surface_dice``, Nikolov et al. 2021,
  arXiv:2111.05408). Distances are in mm: voxel spacing from the label's affine (2D images: pixels).
- Lesions: connected components of ``P`` and of ``T`` (``segtrain.evaluation.detection``).

Empty masks (docs/evaluation.md#empty-masks), the same rule everywhere segtrain scores:

=========== ============ ============== ====================== ======
truth       prediction   Dice, IoU      HD95, ASSD             NSD
=========== ============ ============== ====================== ======
empty       empty        NaN (no score) NaN (no score)         NaN
empty       not empty    0              the grid's diagonal    0
not empty   empty        0              the grid's diagonal    0
=========== ============ ============== ====================== ======

A NaN is left out of means (it is not a 0 or a 1): the class is absent and correctly so. The
diagonal (the largest distance possible inside the image, in mm) replaces MONAI's ``inf``, so
that a missed or invented structure weighs in a mean as the worst case instead of poisoning it.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Sequence
from collections.abc import Mapping
from dataclasses import dataclass, fields

import numpy as np
import torch

from segtrain.evaluation.detection import bounding_box, count_lesions

METRICS = ("dice", "iou", "hd95", "assd", "nsd")
LOWER_IS_BETTER = ("hd95", "assd")


@dataclass(frozen=True)
class ScoreSettings:
    """How cases are scored (``segtrain-evaluate`` options of the same names)."""

    nsd_tolerance: float = 1.0     # mm: a surface point within this distance of the other surface counts as correct
    hd_percentile: float = 95.0    # the Hausdorff percentile (100: the classic maximum)
    detection_overlap: float = 0.0  # share of a lesion the other mask must cover for a match (0: any shared voxel)
    connectivity: str = "full"     # full (26-neighbours in 3D, 8 in 2D) | face (6 in 3D, 4 in 2D)
    surface: bool = True           # False: overlap and lesions only (cheaper; HD95, ASSD, NSD are NaN)

    @classmethod
    def from_config(cls, cfg: Mapping | None) -> ScoreSettings:
        """The settings of an ``evaluation`` config (configs/evaluation/default.yaml); other keys are ignored."""
        cfg = cfg or {}
        return cls(**{f.name: cfg[f.name] for f in fields(cls) if f.name in cfg})

    def __post_init__(self) -> None:
        from segtrain.errors import ConfigError

        if not (math.isfinite(float(self.nsd_tolerance)) and float(self.nsd_tolerance) >= 0):
            raise ConfigError(f"nsd_tolerance={self.nsd_tolerance} must be a distance in mm >= 0")
        if not 0 < float(self.hd_percentile) <= 100:
            raise ConfigError(f"hd_percentile={self.hd_percentile} must lie in (0, 100]")
        if not 0 <= float(self.detection_overlap) <= 1:
            raise ConfigError(f"detection_overlap={self.detection_overlap} must lie in [0, 1]")
        if self.connectivity not in ("full", "face"):
            raise ConfigError(f"connectivity={self.connectivity!r} must be full or face")


def surface_scores(pred: np.ndarray, truth: np.ndarray, spacing: Sequence[float], settings: ScoreSettings) -> dict:
    """HD (percentile), ASSD and NSD of two non-empty binary masks, through MONAI's metric functions."""
    from monai.metrics import compute_average_surface_distance, compute_hausdorff_distance, compute_surface_dice

    box = bounding_box(pred | truth, margin=1)  # distances do not change outside the union's box; the masks get small
    p = torch.from_numpy(np.ascontiguousarray(pred[box]))[None, None]
    t = torch.from_numpy(np.ascontiguousarray(truth[box]))[None, None]
    spacing = [float(s) for s in spacing]
    with warnings.catch_warnings():  # neither mask is empty here; MONAI's empty-mask warning cannot apply
        warnings.filterwarnings("ignore", message=r".*is all 0, this may result in nan/inf distance.*")
        warnings.filterwarnings("ignore", message=r".*always_return_as_numpy.*", category=FutureWarning)  # MONAI's own call
        hd = compute_hausdorff_distance(p, t, include_background=True, percentile=float(settings.hd_percentile),
                                        spacing=spacing)
        assd = compute_average_surface_distance(p, t, include_background=True, symmetric=True, spacing=spacing)
        nsd = compute_surface_dice(p, t, [float(settings.nsd_tolerance)], include_background=True, spacing=spacing)
    return {"hd95": float(hd[0, 0]), "assd": float(assd[0, 0]), "nsd": float(nsd[0, 0])}


def score_case(pred: np.ndarray, truth: np.ndarray, spacing: Sequence[float], classes: Sequence[int],
               settings: ScoreSettings = ScoreSettings()) -> list[dict]:
    """One row per class in ``classes``: voxel counts, Dice, IoU, HD95, ASSD, NSD and lesion counts.

    ``pred`` and ``truth``: integer label maps of one shape (spatial axes only); ``spacing``: mm per
    voxel along each axis. See the module docstring for the formulas and the empty-mask rules.
    """
    if pred.shape != truth.shape:
        raise ValueError(f"prediction shape {pred.shape} differs from label shape {truth.shape}")
    diagonal = float(np.linalg.norm(np.asarray(pred.shape, float) * np.asarray(spacing, float)))
    rows = []
    for c in classes:
        p, t = pred == c, truth == c
        pred_voxels, true_voxels = int(np.count_nonzero(p)), int(np.count_nonzero(t))
        tp = int(np.count_nonzero(p & t)) if pred_voxels and true_voxels else 0
        row = {"class": int(c), "tp": tp, "fp": pred_voxels - tp, "fn": true_voxels - tp,
               "truth_voxels": true_voxels, "pred_voxels": pred_voxels}
        nan = float("nan")
        if not pred_voxels and not true_voxels:
            row.update(empty="both", dice=nan, iou=nan, hd95=nan, assd=nan, nsd=nan)
        elif not pred_voxels or not true_voxels:
            row.update(empty="truth" if not true_voxels else "prediction", dice=0.0, iou=0.0,
                       hd95=diagonal if settings.surface else nan, assd=diagonal if settings.surface else nan,
                       nsd=0.0 if settings.surface else nan)
        else:
            union = pred_voxels + true_voxels - tp
            row.update(empty="", dice=2 * tp / (pred_voxels + true_voxels), iou=tp / union)
            row.update(surface_scores(p, t, spacing, settings) if settings.surface else {"hd95": nan, "assd": nan, "nsd": nan})
        row.update(count_lesions(p, t, overlap=settings.detection_overlap, connectivity=settings.connectivity))
        rows.append(row)
    return rows
