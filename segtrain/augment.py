"""Training augmentation (``configs/augment/``): nnU-Net's default set, built from MONAI transforms.

``augment=nnunet`` follows ``nnUNetTrainer.get_training_transforms`` (nnU-Net v2; Isensee et al.,
Nature Methods 2021), in its order and with its probabilities:

=====================  ==========================================================  ============
step                   what (MONAI transform)                                      probability
=====================  ==========================================================  ============
rotation               angles in ``rotation`` degrees about every axis (``Affine``)  0.2
scaling                one zoom factor in ``scaling`` for all axes (``Affine``)      0.2
Gaussian noise         std up to ``noise_std`` (``RandGaussianNoised``)               0.1
Gaussian blur          sigma in ``blur_sigma`` per axis (``RandGaussianSmoothd``)     0.2 x 0.5
brightness             multiply by a factor in ``brightness`` (``RandScaleIntensityd``)  0.15
contrast               scale about the mean, keep the range (``RandScaleIntensityFixedMeand``) 0.15
low resolution         down-sample by ``low_resolution``, up again (``RandSimulateLowResolutiond``) 0.25 x 0.5
inverted gamma         gamma in ``gamma`` on the inverted image, stats kept (``RandAdjustContrastd``) 0.1
gamma                  gamma in ``gamma``, stats kept (``RandAdjustContrastd``)        0.3
mirroring              each axis with ``mirror_prob``                                 per axis
=====================  ==========================================================  ============

Rotation and scaling follow nnU-Net's rules: rotations of up to 30 degrees in 3D; for an anisotropic
patch (more than 3x fewer voxels along the coarse axis) only in-plane rotation of up to 180 degrees
and in-plane scaling ("dummy 2D"); in 2D up to 180 degrees (15 for elongated patches). The patch
is cut from a larger region (nnU-Net's ``get_patch_size``), so rotated corners hold image, not
padding; without rotation or scaling the centre of that region is taken as is (no interpolation).
Differences from nnU-Net: channels are augmented together (nnU-Net's per-channel probabilities
are folded into the probability above), gamma and contrast factors are uniform in their range,
and noise draws its standard deviation (not its variance) uniformly.
``augment=light`` mirrors only; ``augment=none`` does nothing (the patch as cropped).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
from monai.transforms import MapTransform, Randomizable

from segtrain.data.transforms import RandFlipAxesd, _numpy
from segtrain.errors import ConfigError

ANISOTROPY = 3.0  # nnU-Net's threshold for "dummy 2D" augmentation of anisotropic patches


def _range(name: str, value, low: float | None = None) -> tuple[float, float]:
    try:
        a, b = (float(v) for v in value)
    except (TypeError, ValueError):
        raise ConfigError(f"augment.{name}={value!r} must be a range [low, high]") from None
    if a > b or (low is not None and a < low):
        raise ConfigError(f"augment.{name}={[a, b]} must be [low, high] with low <= high" + (f" and low >= {low}" if low is not None else ""))
    return a, b


def _probability(name: str, value) -> float:
    p = float(value)
    if not 0.0 <= p <= 1.0:
        raise ConfigError(f"augment.{name}={value} must be a probability in [0, 1]")
    return p


@dataclass
class Augmentation:
    """The augmentation of training patches; ``transforms`` builds the MONAI steps for one data set."""

    rotation_prob: float = 0.0
    rotation: float | str = "auto"       # largest angle in degrees, or auto (nnU-Net's rule)
    scaling_prob: float = 0.0
    scaling: Sequence[float] = (0.7, 1.4)
    noise_prob: float = 0.0
    noise_std: float = 0.316             # sqrt of nnU-Net's largest noise variance, 0.1
    blur_prob: float = 0.0
    blur_sigma: Sequence[float] = (0.5, 1.0)
    brightness_prob: float = 0.0
    brightness: Sequence[float] = (0.75, 1.25)
    contrast_prob: float = 0.0
    contrast: Sequence[float] = (0.75, 1.25)
    low_resolution_prob: float = 0.0
    low_resolution: Sequence[float] = (0.5, 1.0)
    gamma_inverted_prob: float = 0.0
    gamma_prob: float = 0.0
    gamma: Sequence[float] = (0.7, 1.5)
    mirror_prob: float = 0.0

    def __post_init__(self) -> None:
        for name in ("rotation_prob", "scaling_prob", "noise_prob", "blur_prob", "brightness_prob", "contrast_prob",
                     "low_resolution_prob", "gamma_inverted_prob", "gamma_prob", "mirror_prob"):
            setattr(self, name, _probability(name, getattr(self, name)))
        self.scaling = _range("scaling", self.scaling, low=1e-3)
        self.blur_sigma = _range("blur_sigma", self.blur_sigma, low=0.0)
        self.brightness = _range("brightness", self.brightness, low=0.0)
        self.contrast = _range("contrast", self.contrast, low=0.0)
        self.low_resolution = _range("low_resolution", self.low_resolution, low=1e-3)
        self.gamma = _range("gamma", self.gamma, low=1e-3)
        if self.low_resolution[1] > 1:
            raise ConfigError(f"augment.low_resolution={list(self.low_resolution)} must lie in (0, 1] (down-sampling factors)")
        if self.noise_std < 0:
            raise ConfigError(f"augment.noise_std={self.noise_std} must be >= 0")
        if self.rotation != "auto":
            try:
                self.rotation = float(self.rotation)
            except (TypeError, ValueError):
                raise ConfigError(f"augment.rotation={self.rotation!r} must be auto or an angle in degrees") from None

    @property
    def spatial(self) -> bool:
        return self.rotation_prob > 0 or self.scaling_prob > 0

    @property
    def mirroring_only(self) -> bool:
        """Nothing but flips: cheap NumPy work that needs no data-loader workers."""
        return not any(getattr(self, name) for name in ("rotation_prob", "scaling_prob", "noise_prob", "blur_prob",
                                                         "brightness_prob", "contrast_prob", "low_resolution_prob",
                                                         "gamma_inverted_prob", "gamma_prob"))

    def geometry(self, patch_size: Sequence[int], spacing: Sequence[float] | None) -> tuple[float, int | None]:
        """(largest rotation in degrees, the coarse axis for in-plane-only augmentation or None)."""
        patch = [int(p) for p in patch_size]
        coarse = None
        if len(patch) == 3 and spacing is not None and len(set(np.round(spacing, 4))) > 1:
            axis = int(np.argmax(spacing))
            if max(patch) / patch[axis] > ANISOTROPY:
                coarse = axis
        if self.rotation != "auto":
            return float(self.rotation), coarse
        if len(patch) == 2:
            return (15.0 if max(patch) / min(patch) > 1.5 else 180.0), None
        return (180.0 if coarse is not None else 30.0), coarse

    def crop_size(self, patch_size: Sequence[int], spacing: Sequence[float] | None = None) -> list[int]:
        """The region a patch is cut from, so rotation and scaling fill it with image (nnU-Net's ``get_patch_size``)."""
        patch = np.asarray(patch_size, float)
        if not self.spatial:
            return [int(p) for p in patch_size]
        degrees, coarse = self.geometry(patch_size, spacing)
        angle = math.radians(min(90.0, degrees)) if self.rotation_prob > 0 else 0.0
        extent = patch.copy()
        dims = len(patch)
        planes = [(0, 1)] if dims == 2 else [(1, 2), (0, 2), (0, 1)]
        for a, b in planes:  # the patch's extent vector rotated by +-angle in each plane
            for sign in (1.0, -1.0):
                c, s = math.cos(angle), sign * math.sin(angle)
                rotated = patch.copy()
                rotated[a], rotated[b] = c * patch[a] - s * patch[b], s * patch[a] + c * patch[b]
                extent = np.maximum(extent, np.abs(rotated))
        smallest = 0.85 if self.scaling_prob > 0 else 1.0  # nnU-Net's get_patch_size uses 0.85 whatever the scaling range
        size = [max(int(e / smallest), int(p)) for e, p in zip(extent, patch_size)]
        if coarse is not None:
            size[coarse] = int(patch_size[coarse])
        return size

    def transforms(self, patch_size: Sequence[int], spacing: Sequence[float] | None, keys: Sequence[str],
                   label_key: str = "label") -> list:
        """The random steps after the crop: spatial (all ``keys``), intensity (image), mirroring (all ``keys``)."""
        from monai import transforms as T

        dims = len(patch_size)
        steps: list = []
        if self.spatial:  # otherwise the crop is already the patch
            degrees, coarse = self.geometry(patch_size, spacing)
            steps.append(RandRotateScaled(keys, patch_size, label_key, self.rotation_prob, degrees, self.scaling_prob,
                                          self.scaling, coarse))
        image = ["image"]
        if self.noise_prob:
            steps.append(T.RandGaussianNoised(image, prob=self.noise_prob, mean=0.0, std=self.noise_std, sample_std=True))
        if self.blur_prob:
            sigma = tuple(self.blur_sigma)
            sigmas = {"sigma_x": sigma, "sigma_y": sigma, **({"sigma_z": sigma} if dims == 3 else {})}
            steps.append(T.RandGaussianSmoothd(image, prob=self.blur_prob, **sigmas))
        if self.brightness_prob:
            low, high = self.brightness
            steps.append(T.RandScaleIntensityd(image, factors=(low - 1, high - 1), prob=self.brightness_prob))
        if self.contrast_prob:
            low, high = self.contrast
            steps.append(T.RandScaleIntensityFixedMeand(image, factors=(low - 1, high - 1), prob=self.contrast_prob,
                                                        fixed_mean=True, preserve_range=True))
        if self.low_resolution_prob:
            steps.append(T.RandSimulateLowResolutiond(image, prob=self.low_resolution_prob, zoom_range=tuple(self.low_resolution),
                                                      downsample_mode="nearest",
                                                      upsample_mode="trilinear" if dims == 3 else "bilinear"))
        if self.gamma_inverted_prob:
            steps.append(T.RandAdjustContrastd(image, prob=self.gamma_inverted_prob, gamma=tuple(self.gamma),
                                               invert_image=True, retain_stats=True))
        if self.gamma_prob:
            steps.append(T.RandAdjustContrastd(image, prob=self.gamma_prob, gamma=tuple(self.gamma), retain_stats=True))
        steps.append(RandFlipAxesd(keys=list(keys), spatial_axes=range(dims), prob=self.mirror_prob))
        return steps


class RandRotateScaled(Randomizable, MapTransform):
    """nnU-Net's spatial augmentation: rotation (prob. ``rotation_prob``) and one scaling factor (``scaling_prob``).

    Maps the centre of the cropped region onto a ``patch_size`` output with MONAI's ``Affine``:
    bilinear for images and label maps, nearest for ``label_key``, zeros outside. ``coarse_axis``
    (anisotropic patches): rotate about it only and leave it unscaled. Without rotation or scaling
    the output is the region's centre, uninterpolated (MONAI's ``CenterSpatialCropd``).
    Not MONAI's ``RandAffined``: that draws one probability for rotation and scaling together and a
    scale factor per axis; nnU-Net draws each with its own probability and one factor for all axes.
    """

    def __init__(self, keys, patch_size: Sequence[int], label_key: str, rotation_prob: float, degrees: float,
                 scaling_prob: float, scaling: Sequence[float], coarse_axis: int | None = None):
        MapTransform.__init__(self, keys)
        self.patch_size, self.label_key = [int(p) for p in patch_size], label_key
        self.rotation_prob, self.radians = rotation_prob, math.radians(degrees)
        self.scaling_prob, self.scaling, self.coarse_axis = scaling_prob, tuple(scaling), coarse_axis
        from monai.transforms import CenterSpatialCropd

        self.crop = CenterSpatialCropd(keys, roi_size=self.patch_size)

    def randomize(self, data=None) -> None:
        dims = len(self.patch_size)
        angles = [0.0] * (3 if dims == 3 else 1)
        if self.R.rand() < self.rotation_prob:
            if dims == 2:
                angles = [self.R.uniform(-self.radians, self.radians)]
            elif self.coarse_axis is not None:
                angles[self.coarse_axis] = self.R.uniform(-self.radians, self.radians)
            else:
                angles = [self.R.uniform(-self.radians, self.radians) for _ in range(3)]
        scale = [1.0] * dims
        if self.R.rand() < self.scaling_prob:
            factor = self.R.uniform(*self.scaling)
            scale = [1.0 if axis == self.coarse_axis else factor for axis in range(dims)]
        self._angles, self._scale = angles, scale

    def __call__(self, data: dict) -> dict:
        from monai.transforms import Affine

        self.randomize()
        if not any(self._angles) and all(s == 1.0 for s in self._scale):
            return self.crop(data)
        d = dict(data)
        affine = Affine(rotate_params=self._angles, scale_params=self._scale, spatial_size=self.patch_size,
                        padding_mode="zeros", image_only=True)
        for key in self.key_iterator(d):
            value = torch.as_tensor(np.ascontiguousarray(_numpy(d[key])))
            nearest = key == self.label_key
            out = affine(value.float(), mode="nearest" if nearest else "bilinear")
            out = out.as_tensor() if hasattr(out, "as_tensor") else out
            d[key] = (out.round().to(value.dtype) if nearest else out).numpy()
        return d


def build_augmentation(cfg) -> Augmentation | None:
    """The ``augment`` config group → an ``Augmentation`` (``None`` when the config has no group: mirroring only)."""
    if cfg is None:
        return None
    from hydra.utils import instantiate

    try:
        return instantiate(cfg, _convert_="all")
    except ConfigError:
        raise
    except Exception as err:  # noqa: BLE001 - hydra wraps a bad key or value in its own exception
        cause = err.__cause__ if isinstance(err.__cause__, ConfigError) else None
        if cause is not None:
            raise cause from None
        raise ConfigError(f"augment: {' '.join(str(err).split())[:300]}") from None
