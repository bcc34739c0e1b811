"""Training augmentation (``configs/augment/``): nnU-Net's default set, batched, on the training device.

``augment=nnunet`` follows ``nnUNetTrainer.get_training_transforms`` (nnU-Net v2; Isensee et al.,
Nature Methods 2021), in its order and with its probabilities:

=====================  ==========================================================  ============
step                   what                                                        probability
=====================  ==========================================================  ============
rotation               angles in ``rotation`` degrees about every axis               0.2
scaling                one zoom factor in ``scaling`` for all axes (> 1 zooms out)   0.2
Gaussian noise         standard deviation uniform in [0, ``noise_std``]              0.1
Gaussian blur          sigma uniform in ``blur_sigma``, drawn per axis                0.2 x 0.5
brightness             multiply by a factor in ``brightness``                        0.15
contrast               scale about the mean by a factor in ``contrast``, range kept  0.15
low resolution         down-sample (nearest) by ``low_resolution``, up (linear)      0.25 x 0.5
inverted gamma         gamma in ``gamma`` on the inverted image, mean and std kept   0.1
gamma                  gamma in ``gamma``, mean and std kept                         0.3
mirroring              each axis with ``mirror_prob``                                per axis
=====================  ==========================================================  ============

Rotation and scaling follow nnU-Net's rules: rotations of up to 30 degrees in 3D; for an anisotropic
patch (more than 3x fewer voxels along the coarse axis) only in-plane rotation of up to 180 degrees
and in-plane scaling ("dummy 2D"); in 2D up to 180 degrees (15 for elongated patches). The patch
is cut from a larger region (nnU-Net's ``get_patch_size``), so rotated corners hold image, not
padding; a sample that is neither rotated nor scaled gets the centre of that region as is.

Where it runs (``augment.device``): the data-loader workers only read, crop the region, draw each
sample's parameters (``params.draw``, seeded per item) and collate; ``batched.BatchAugmenter`` then
augments the whole batch with torch, one affine grid per sample (``affine_grid``/``grid_sample``,
labels nearest) and the intensity steps vectorised over the batch. ``auto``: on the device the
model trains on (on a GPU right after the batch's transfer, so CPU workers only feed it; on a CPU
inside the workers, on the collated batch). The same code runs on both.

Differences from nnU-Net: channels are augmented together (nnU-Net's per-channel probabilities are
folded into the probability above), gamma and contrast factors are uniform in their range, and
noise draws its standard deviation (not its variance) uniformly. ``augment=light`` mirrors only;
``augment=none`` does nothing (the patch as cropped).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

from segtrain.errors import ConfigError

ANISOTROPY = 3.0  # nnU-Net's threshold for "dummy 2D" augmentation of anisotropic patches
DEVICES = ("auto", "cpu", "cuda")
PROBABILITIES = ("rotation_prob", "scaling_prob", "noise_prob", "blur_prob", "brightness_prob", "contrast_prob",
                 "low_resolution_prob", "gamma_inverted_prob", "gamma_prob", "mirror_prob")


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
    """The augmentation of training patches: probabilities, ranges and where it runs (``device``)."""

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
    device: str = "auto"                 # auto (where the model trains) | cpu (data workers) | cuda

    def __post_init__(self) -> None:
        for name in PROBABILITIES:
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
        if self.device not in DEVICES:
            raise ConfigError(f"augment.device={self.device!r} is unknown; use auto (where the model trains), cpu "
                              "(in the data workers) or cuda")

    @property
    def spatial(self) -> bool:
        return self.rotation_prob > 0 or self.scaling_prob > 0

    @property
    def mirroring_only(self) -> bool:
        """Nothing but flips: cheap work that needs no data-loader workers on a CPU."""
        return not any(getattr(self, name) for name in PROBABILITIES if name != "mirror_prob")

    def geometry(self, patch_size: Sequence[int], spacing: Sequence[float] | None) -> tuple[float, int | None]:
        """(largest rotation in degrees, the coarse axis for in-plane-only augmentation or None)."""
        patch = [int(p) for p in patch_size]
        coarse = None
        if len(patch) == 3 and spacing is not None and len({round(float(s), 4) for s in spacing}) > 1:
            axis = max(range(3), key=lambda a: float(spacing[a]))
            if max(patch) / patch[axis] > ANISOTROPY:
                coarse = axis
        if self.rotation != "auto":
            return float(self.rotation), coarse
        if len(patch) == 2:
            return (15.0 if max(patch) / min(patch) > 1.5 else 180.0), None
        return (180.0 if coarse is not None else 30.0), coarse

    def crop_size(self, patch_size: Sequence[int], spacing: Sequence[float] | None = None) -> list[int]:
        """The region a patch is cut from, so rotation and scaling fill it with image (nnU-Net's ``get_patch_size``).

        Each side exceeds the patch's by an even number of voxels, so that the patch is the region's
        exact centre (no half-voxel shift for a sample that is neither rotated nor scaled).
        """
        patch = [float(p) for p in patch_size]
        if not self.spatial:
            return [int(p) for p in patch_size]
        degrees, coarse = self.geometry(patch_size, spacing)
        angle = math.radians(min(90.0, degrees)) if self.rotation_prob > 0 else 0.0
        extent = list(patch)
        dims = len(patch)
        planes = [(0, 1)] if dims == 2 else [(1, 2), (0, 2), (0, 1)]
        for a, b in planes:  # the patch's extent vector rotated by +-angle in each plane
            for sign in (1.0, -1.0):
                c, s = math.cos(angle), sign * math.sin(angle)
                rotated = list(patch)
                rotated[a], rotated[b] = c * patch[a] - s * patch[b], s * patch[a] + c * patch[b]
                extent = [max(e, abs(r)) for e, r in zip(extent, rotated)]
        smallest = 0.85 if self.scaling_prob > 0 else 1.0  # nnU-Net's get_patch_size uses 0.85 whatever the scaling range
        size = [max(int(e / smallest), int(p)) for e, p in zip(extent, patch_size)]
        if coarse is not None:
            size[coarse] = int(patch_size[coarse])
        return [s + (s - int(p)) % 2 for s, p in zip(size, patch_size)]

    def resolve_device(self, training_device: str) -> str:
        """``cpu`` or ``cuda``: where the batch is augmented when the model trains on ``training_device``."""
        if self.device == "auto":
            return "cuda" if training_device == "cuda" else "cpu"
        if self.device == "cuda" and training_device != "cuda":
            raise ConfigError(f"augment.device=cuda needs a model that trains on a GPU (it trains on {training_device}); "
                              "use augment.device=auto")
        return self.device


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
