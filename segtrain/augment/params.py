"""Each training sample's augmentation parameters, drawn on the host in the data workers.

One row of ``width(dims)`` numbers per sample, drawn by ``draw`` from the item's seeded generator
(``segtrain.data.loaders.patch_seed``: a pure function of seed, epoch and item), so that any worker
count, rank, device or resumed run gets the same parameters. An identity value (angle 0, factor 1,
sigma 0) means "not applied". The rows travel with the batch as ``AugmentParams``: a tensor that is
pinned and copied to the device with the images (no host synchronisation to read it there), and the
same numbers on the host, where the augmenter reads which steps any sample needs.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, replace

import numpy as np
import torch
from monai.transforms import MapTransform, Randomizable

PARAMS_KEY = "augment"


def fields(dims: int) -> dict[str, slice]:
    """Name → columns of a parameter row for ``dims`` spatial dimensions."""
    sizes = {"theta": dims * (dims + 1), "spatial": 1, "angles": 3 if dims == 3 else 1, "scale": dims, "noise_std": 1, "blur_sigma": dims, "brightness": 1,
             "contrast": 1, "low_resolution": 1, "gamma_inverted": 1, "gamma": 1, "mirror": dims, "noise_seed": 1}
    out, start = {}, 0
    for name, size in sizes.items():
        out[name] = slice(start, start + size)
        start += size
    return out


def width(dims: int) -> int:
    return fields(dims)["noise_seed"].stop


def rotation_matrix(angles: Sequence[float], dims: int) -> np.ndarray:
    """Rotation in voxel-axis order: 2D one angle; 3D angles about axes 0, 1, 2, applied in that order."""
    if dims == 2:
        c, s = math.cos(angles[0]), math.sin(angles[0])
        return np.array([[c, -s], [s, c]])
    matrix = np.eye(3)
    for axis, angle in enumerate(angles):
        a, b = [k for k in range(3) if k != axis]
        c, s = math.cos(angle), math.sin(angle)
        turn = np.eye(3)
        turn[a, a], turn[a, b], turn[b, a], turn[b, b] = c, -s, s, c
        matrix = matrix @ turn
    return matrix


def affine_theta(matrix: np.ndarray, patch_size: Sequence[int], crop_size: Sequence[int]) -> np.ndarray:
    """``affine_grid``'s theta (dims x dims+1, x-first order) that samples a ``patch_size`` output from a
    ``crop_size`` input: input offset from the centre (voxels) = ``matrix`` @ output offset.

    With ``align_corners=False`` a voxel's offset from the centre is ``u·N/2`` in normalised
    coordinates ``u``, so theta = diag(1/crop) · matrix · diag(patch), reversed to (x, y[, z]) order.
    """
    linear = np.diag(1.0 / np.asarray(crop_size, float)) @ matrix @ np.diag(np.asarray(patch_size, float))
    linear = linear[::-1, ::-1]
    return np.concatenate([linear, np.zeros((len(patch_size), 1))], axis=1)


def draw(augmentation, rng: np.random.RandomState, patch_size: Sequence[int], crop_size: Sequence[int],
         degrees: float, coarse_axis: int | None) -> np.ndarray:
    """One sample's parameter row (float64), drawn from ``rng`` with the probabilities and ranges of ``augmentation``.

    Every draw is made whether or not its step applies, so the stream of random numbers (and so every
    later parameter) does not depend on the outcome of an earlier one.
    """
    a = augmentation
    dims = len(patch_size)
    cols = fields(dims)
    row = np.zeros(width(dims))
    radians = math.radians(degrees)
    u = rng.uniform(size=12)
    angles = rng.uniform(-radians, radians, size=3 if dims == 3 else 1)
    if u[0] >= a.rotation_prob:
        angles[:] = 0.0
    elif dims == 3 and coarse_axis is not None:
        angles = np.where(np.arange(3) == coarse_axis, angles, 0.0)
    factor = rng.uniform(*a.scaling)
    scale = np.ones(dims)
    if u[1] < a.scaling_prob:
        scale = np.where(np.arange(dims) == coarse_axis, 1.0, factor) if coarse_axis is not None else np.full(dims, factor)
    spatial = bool(np.any(angles) or np.any(scale != 1.0))
    matrix = rotation_matrix(angles, dims) @ np.diag(scale)
    row[cols["theta"]] = affine_theta(matrix, patch_size, crop_size).ravel()
    row[cols["spatial"]], row[cols["angles"]], row[cols["scale"]] = float(spatial), angles, scale
    std, sigmas = rng.uniform(0.0, a.noise_std), rng.uniform(*a.blur_sigma, size=dims)
    row[cols["noise_std"]] = std if u[2] < a.noise_prob else 0.0
    row[cols["blur_sigma"]] = sigmas if u[3] < a.blur_prob else 0.0
    for name, index, value_range in (("brightness", 4, a.brightness), ("contrast", 5, a.contrast),
                                     ("low_resolution", 6, a.low_resolution), ("gamma_inverted", 7, a.gamma),
                                     ("gamma", 8, a.gamma)):
        value = rng.uniform(*value_range)
        row[cols[name]] = value if u[index] < getattr(a, f"{name}_prob") else 1.0
    row[cols["mirror"]] = rng.uniform(size=dims) < a.mirror_prob
    row[cols["noise_seed"]] = rng.randint(0, 2**31 - 1)
    return row


@dataclass
class AugmentParams:
    """The parameter rows of a batch: ``values`` (float32, moved with the batch) and ``host`` (float64, stays)."""

    values: torch.Tensor
    host: np.ndarray

    @classmethod
    def collate(cls, rows: Sequence[np.ndarray]) -> AugmentParams:
        host = np.stack(rows)
        return cls(torch.from_numpy(host.astype(np.float32)), host)

    def pin_memory(self, device=None) -> AugmentParams:  # the DataLoader's pin-memory thread calls this
        return replace(self, values=self.values.pin_memory())

    def column(self, dims: int, name: str) -> np.ndarray:
        return self.host[:, fields(dims)[name]]

    def device_column(self, dims: int, name: str) -> torch.Tensor:
        return self.values[:, fields(dims)[name]]


class DrawAugmentationd(Randomizable, MapTransform):
    """Adds the item's parameter row under ``augment`` (the last random step of the data workers)."""

    def __init__(self, augmentation, patch_size: Sequence[int], spacing: Sequence[float] | None = None):
        MapTransform.__init__(self, ["image"])  # reads nothing: adds its key
        self.augmentation = augmentation
        self.patch_size = [int(p) for p in patch_size]
        self.crop_size = augmentation.crop_size(self.patch_size, spacing)
        self.degrees, self.coarse_axis = augmentation.geometry(self.patch_size, spacing)

    def randomize(self, data=None) -> None:  # the draws happen in ``draw``
        pass

    def __call__(self, data: dict) -> dict:
        d = dict(data)
        d[PARAMS_KEY] = draw(self.augmentation, self.R, self.patch_size, self.crop_size, self.degrees, self.coarse_axis)
        return d
