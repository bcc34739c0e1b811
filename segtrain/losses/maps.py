"""The label maps of the losses: per-case arrays computed from the label alone, once per case, by the data pipeline.

A loss names the maps it needs in ``label_maps`` (name → function). The data pipeline
(``segtrain.data.transforms.LabelMapsd``) calls each function on every case's label before
cropping, caches the result with the case and crops it with the label; the module hands the cropped
maps to the loss as keyword arguments. The protocol of a map function:

    fn(label: np.ndarray (1, *S) int, spacing: tuple[float, ...] | None = None,
       num_classes: int | None = None) -> np.ndarray (K, *S) float32

``num_classes`` (background included) is the dataset's, given by the pipeline, so that every case of
a dataset gets the same number of channels.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np


class SignedDistanceMaps:
    """Label map of ``boundary``: signed Euclidean distance to each foreground class, (K − 1, *S) float32.

    Channel ``c − 1`` holds class ``c``: ``EDT(outside) − EDT(inside)``, i.e. the distance to the
    nearest voxel of the class outside it and minus the distance to the nearest voxel of another
    class inside it (``scipy.ndimage.distance_transform_edt`` with ``sampling = spacing``), 0 where
    the class is absent from the case or fills it. ``num_classes`` (background included) fixes the
    number of channels so that every case of a dataset gets the same: the data pipeline passes the
    dataset's to each call (it wins over the constructor's); unknown, the classes up to the largest
    label of the case (at least 1).
    """

    def __init__(self, num_classes: int | None = None):
        self.num_classes = num_classes

    def __call__(self, label: np.ndarray, spacing: Sequence[float] | None = None,
                 num_classes: int | None = None) -> np.ndarray:
        from scipy import ndimage

        label = np.asarray(label)[0]
        num_classes = num_classes or self.num_classes
        channels = num_classes - 1 if num_classes else max(1, int(label.max(initial=0)))
        sampling = tuple(float(s) for s in spacing) if spacing is not None and len(spacing) == label.ndim else None
        out = np.zeros((channels, *label.shape), dtype=np.float32)
        for c in range(1, channels + 1):
            mask = label == c
            if not mask.any() or mask.all():
                continue
            out[c - 1] = ndimage.distance_transform_edt(~mask, sampling=sampling) - ndimage.distance_transform_edt(
                mask, sampling=sampling
            )
        return out

    def __repr__(self) -> str:
        return f"SignedDistanceMaps(num_classes={self.num_classes})"


class BorderWeightMap:
    """Label map of ``distance_weighted_ce``: ``w0·exp(−(d1 + d2)² / (2σ²))`` of one case, (1, *S) float32.

    Objects are the connected components of ``label > 0`` (face connectivity). The distance to each
    object is a Euclidean distance transform computed only inside the object's bounding box grown by
    ``σ·√(2·ln 10⁶)``: beyond it the term is below ``w0·10⁻⁶``, so the cost grows with the objects'
    size and number, not with the volume times the number of objects. The two smallest distances are
    kept per voxel. Distances are in voxels (``sigma`` is in voxels), whatever the spacing.
    """

    TOLERANCE = 1e-6  # relative size of the term where the distances stop being computed

    def __init__(self, w0: float, sigma: float):
        self.w0, self.sigma = float(w0), float(sigma)

    def __call__(self, label: np.ndarray, spacing: Sequence[float] | None = None,
                 num_classes: int | None = None) -> np.ndarray:
        from scipy import ndimage

        mask = np.asarray(label)[0] > 0
        out = np.zeros((1, *mask.shape), dtype=np.float32)
        components, count = ndimage.label(mask)
        if count < 2 or self.w0 == 0:
            return out
        margin = int(math.ceil(self.sigma * math.sqrt(2 * math.log(1 / self.TOLERANCE))))
        nearest = np.full(mask.shape, np.inf, dtype=np.float32)
        second = np.full(mask.shape, np.inf, dtype=np.float32)
        for index, box in enumerate(ndimage.find_objects(components), start=1):
            grown = tuple(slice(max(s.start - margin, 0), min(s.stop + margin, n)) for s, n in zip(box, mask.shape))
            distance = ndimage.distance_transform_edt(components[grown] != index).astype(np.float32)
            d1, d2 = nearest[grown], second[grown]
            second[grown] = np.where(distance < d1, d1, np.minimum(d2, distance))
            nearest[grown] = np.minimum(d1, distance)
        total = nearest + second  # inf where fewer than two objects are within reach
        with np.errstate(over="ignore", invalid="ignore"):
            out[0] = np.where(np.isfinite(total), self.w0 * np.exp(-np.square(total) / (2 * self.sigma**2)), 0.0)
        return out

    def __repr__(self) -> str:
        return f"BorderWeightMap(w0={self.w0}, sigma={self.sigma})"
