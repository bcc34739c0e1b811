"""Preflight: read every image/label pair once and validate it before any training step.

Checks: files exist and are readable, image and label agree in shape and geometry, labels are
integral and within ``[0, num_classes)``, intensities are finite, the dataset is not empty.
Every failure is a ``DataError`` naming the file, what is wrong and how to fix it.
Also gathers the dataset report: shapes, spacings and the foreground fraction of each class.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from segtrain.errors import DataError


@dataclass
class CaseInfo:
    id: str
    shape: list[int]
    spacing: list[float]
    channels: int
    class_voxels: dict[int, int]


@dataclass
class DatasetReport:
    layout: str
    root: str
    num_cases: int
    num_classes: int
    class_names: list[str]
    channel_names: list[str]
    cases: list[CaseInfo] = field(default_factory=list)

    def foreground_fraction(self) -> dict[str, float]:
        total = sum(int(np.prod(c.shape)) for c in self.cases)
        out = {}
        for index, name in enumerate(self.class_names):
            if index == 0:
                continue
            voxels = sum(c.class_voxels.get(index, 0) for c in self.cases)
            out[name] = voxels / max(total, 1)
        return out

    def summary(self) -> str:
        shapes = np.array([c.shape for c in self.cases])
        spacings = np.array([c.spacing for c in self.cases])
        lines = [
            f"dataset: {self.root} ({self.layout}), {self.num_cases} cases, {len(self.channel_names)} channel(s) "
            f"{self.channel_names}, classes {self.class_names}",
            f"  shape: min {shapes.min(0).tolist()} median {np.median(shapes, 0).astype(int).tolist()} max {shapes.max(0).tolist()}",
            f"  spacing: median {np.round(np.median(spacings, 0), 3).tolist()}",
        ]
        empty = sum(1 for c in self.cases if not any(v for k, v in c.class_voxels.items() if k > 0))
        fractions = self.foreground_fraction()
        lines.append(
            "  foreground fraction: "
            + ", ".join(f"{name} {100 * f:.3f}%" for name, f in fractions.items())
            + f"; {empty} case(s) without foreground"
        )
        if fractions and min(fractions.values()) < 0.01:
            lines.append(
                "  hint: tiny foreground (<1%): prefer region or compound losses (loss=dice_ce, tversky with "
                "loss.alpha=0.3, focal_tversky) and foreground oversampling (data.pos_fraction)"
            )
        return "\n".join(lines)

    def save(self, directory: str | Path) -> None:
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        data = asdict(self)
        data["foreground_fraction"] = self.foreground_fraction()
        (directory / "dataset_report.json").write_text(json.dumps(data, indent=2))
        (directory / "dataset_report.txt").write_text(self.summary() + "\n")


def _load(path: str):
    """Read one file with MONAI's readers → (array with spatial dims, affine or None, spacing)."""
    from monai.transforms import LoadImage

    p = Path(path)
    if not p.is_file():
        raise DataError(f"{path}: file not found; add it or remove the case from the dataset")
    try:
        image = LoadImage(image_only=True)(str(p))
    except Exception as err:  # noqa: BLE001 - any reader failure is a corrupt/unreadable file for the user
        reason = str(err).splitlines()[0][:200] if str(err) else type(err).__name__
        raise DataError(f"{path}: cannot be read ({reason}); the file is corrupt, truncated or not an image") from None
    array = np.asarray(image)
    affine = np.asarray(image.affine) if hasattr(image, "affine") else None
    spacing = np.sqrt((affine[:3, :3] ** 2).sum(0)).tolist() if affine is not None and affine.shape[0] >= 4 else [1.0]
    return array, affine, spacing


def check_case(case: dict, spatial_dims: int, num_classes: int | None, label_mapping: dict | None = None,
               atol: float = 1e-3) -> CaseInfo:
    """Validate one case and return its report row."""
    label, label_affine, _ = _load(case["label"])
    if label.ndim == spatial_dims + 1 and spatial_dims == 2:
        raise DataError(
            f"{case['label']}: label has {label.shape[-1]} colour channels; save masks as single-channel PNGs "
            "whose pixel values are class indices"
        )
    spatial_shape = label.shape[:spatial_dims]
    channels = 0
    for path in case["image"]:
        image, affine, spacing = _load(path)
        image_spatial = image.shape[:spatial_dims]
        if tuple(image_spatial) != tuple(spatial_shape):
            raise DataError(
                f"{path}: image shape {list(image_spatial)} differs from label {case['label']} shape {list(spatial_shape)}; "
                "image and label must cover the same voxel grid (resample the label onto the image)"
            )
        if spatial_dims == 3 and affine is not None and label_affine is not None and not np.allclose(affine, label_affine, atol=atol):
            raise DataError(
                f"{path}: image geometry (affine) differs from its label {case['label']}; resample or copy the "
                "image header onto the label so both describe the same space"
            )
        if not np.issubdtype(image.dtype, np.integer) and not np.isfinite(image).all():
            raise DataError(f"{path}: image contains NaN or Inf intensities; fix or replace these voxels before training")
        channels += image.shape[spatial_dims] if image.ndim > spatial_dims else 1
    if not np.issubdtype(label.dtype, np.integer):
        if not np.isfinite(label).all() or not np.all(label == np.round(label)):
            raise DataError(
                f"{case['label']}: label has non-integral values; labels must be class indices (0, 1, 2, ...), "
                "not probabilities or interpolated masks (resample labels with nearest-neighbour)"
            )
    values, counts = np.unique(label.astype(np.int64), return_counts=True)
    if label_mapping:
        mapped = {int(label_mapping.get(int(v), int(v))): 0 for v in values}
        for v, c in zip(values, counts):
            mapped[int(label_mapping.get(int(v), int(v)))] += int(c)
        values, counts = np.array(list(mapped)), np.array(list(mapped.values()))
    if num_classes is not None and (values.min() < 0 or values.max() >= num_classes):
        found = sorted(int(v) for v in values)
        hint = (
            " It looks like a 0/255 mask: map it with data.label_mapping='{255: 1}'."
            if 255 in found and len(found) <= 2 else
            " Fix the label file, or declare every class in dataset.json 'labels'."
        )
        raise DataError(
            f"{case['label']}: label values {found[:10]} fall outside [0, {num_classes - 1}] "
            f"for {num_classes} classes.{hint}"
        )
    return CaseInfo(case["id"], list(map(int, spatial_shape)), [float(s) for s in spacing][:spatial_dims], channels,
                    {int(v): int(c) for v, c in zip(values, counts)})


def run_preflight(listing, spatial_dims: int, num_classes: int | None, label_mapping: dict | None = None) -> DatasetReport:
    """Check every case of ``listing`` (see ``layouts.list_cases``); return the dataset report."""
    infos = [check_case(case, spatial_dims, num_classes, label_mapping) for case in listing.cases]
    channel_counts = {i.channels for i in infos}
    if len(channel_counts) > 1:
        raise DataError(f"data.root={listing.root}: cases have different numbers of image channels {sorted(channel_counts)}")
    if num_classes is None:
        num_classes = max(2, max(max(i.class_voxels) for i in infos) + 1)
    class_names = list(listing.class_names or [])
    class_names += [f"class{i}" for i in range(len(class_names), num_classes)]
    channels = channel_counts.pop()
    channel_names = list(listing.channel_names or [])[:channels]
    channel_names += [f"channel{i}" for i in range(len(channel_names), channels)]
    return DatasetReport(listing.layout, str(listing.root), len(infos), num_classes, class_names[:num_classes],
                         channel_names, infos)
