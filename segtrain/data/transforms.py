"""MONAI transform pipelines.

- ``deterministic_transforms``: load, channel first, reorient (``data.orientation``), resample
  (``data.spacing``), map label values, normalise intensities, cast. Cached per case; invertible
  (MONAI meta is kept), so a prediction can go back to the original geometry with ``Invertd``.
- ``inference_transforms``: the same steps for the image alone (the prediction app).
- ``train_cached_transforms`` + ``train_random_transforms``: pad to the patch, precompute a bounded
  sample of voxel locations per class (cached), then cut regions centred on foreground with
  probability ``data.pos_fraction`` (``data.sampling``: ``posneg`` or ``class_balanced``) and draw
  their augmentation parameters; the batch is augmented after collation (``segtrain.augment``).
"""

from __future__ import annotations

import math
import threading
import zlib
from collections.abc import Sequence

import numpy as np
import torch
from monai.transforms import MapTransform, Randomizable
from omegaconf import DictConfig

from segtrain.errors import ConfigError

from segtrain.data.options import NORMALIZATIONS, SAMPLINGS  # noqa: E402  (one definition, with the options)

LOCATIONS_KEY = "label_locations"
RAS_LABELS = (("L", "R"), ("P", "A"), ("I", "S"))


def normalize_modes(value, channels: int) -> list[str]:
    """``data.normalize`` (one mode, or one per channel) → a mode per channel."""
    modes = [value] * channels if isinstance(value, str) or value is None else list(value)
    modes = ["none" if m is None else str(m) for m in modes]
    if len(modes) != channels:
        raise ConfigError(f"data.normalize={list(modes)} gives {len(modes)} modes for {channels} image channel(s); "
                          "give one mode, or one per channel")
    for mode in modes:
        if mode not in NORMALIZATIONS:
            raise ConfigError(f"data.normalize={mode!r} is unknown; use one of {', '.join(NORMALIZATIONS)}")
    return modes


class NormalizeChannelsd(MapTransform):
    """Per-channel intensity normalisation (deterministic).

    - ``zscore``: subtract the case's mean, divide by its standard deviation (per channel).
    - ``ct``: clip to the dataset's foreground 0.5-99.5 percentiles, then z-score with the dataset's
      foreground mean and standard deviation (nnU-Net's CT normalisation).
    - ``minmax``: the case's range mapped to [0, 1].
    - ``none``: unchanged.

    ``stats``: per channel, a dict with ``mean``, ``std``, ``percentile_00_5``, ``percentile_99_5``
    (from the preflight report); needed for ``ct`` only.
    """

    def __init__(self, keys, modes: Sequence[str], stats: Sequence[dict] | None = None):
        super().__init__(keys)
        self.modes, self.stats = list(modes), list(stats or [])
        for channel, mode in enumerate(self.modes):
            if mode == "ct" and (channel >= len(self.stats) or "mean" not in self.stats[channel]):
                raise ConfigError(
                    f"data.normalize=ct needs foreground intensity statistics for channel {channel}, and the dataset "
                    "has no foreground voxels to compute them from; use data.normalize=zscore"
                )

    def __call__(self, data: dict) -> dict:
        d = dict(data)
        for key in self.key_iterator(d):
            image = d[key]
            plain = image.as_tensor() if hasattr(image, "as_tensor") else torch.as_tensor(np.asarray(image))
            plain = plain.float()
            channels = []
            for channel, mode in enumerate(self.modes):
                x = plain[channel]
                if mode == "zscore":
                    x = (x - x.mean()) / x.std(unbiased=False).clamp_min(1e-8)
                elif mode == "ct":
                    s = self.stats[channel]
                    x = (x.clamp(s["percentile_00_5"], s["percentile_99_5"]) - s["mean"]) / max(s["std"], 1e-8)
                elif mode == "minmax":
                    low, high = x.min(), x.max()
                    x = (x - low) / (high - low).clamp_min(1e-8)
                channels.append(x)
            normalized = torch.stack(channels)
            if hasattr(image, "applied_operations"):  # keep the MetaTensor (affine, applied operations)
                from monai.data import MetaTensor

                normalized = MetaTensor(normalized, meta=image.meta, applied_operations=image.applied_operations)
            d[key] = normalized
        return d


class ThreadSafeLoadImaged(MapTransform):
    """MONAI's ``LoadImaged`` with one loader per thread.

    MONAI 1.6's ``NibabelReader`` keeps the file names of its last ``read`` on the instance, so two
    of ``CacheDataset``'s caching threads sharing one loader could stack the wrong number of
    channel files for a multi-channel case.
    """

    def __init__(self, keys, **kwargs):
        super().__init__(keys)
        self.kwargs = kwargs
        self._local = threading.local()

    def __call__(self, data: dict) -> dict:
        from monai.transforms import LoadImaged

        loader = getattr(self._local, "loader", None)
        if loader is None:
            loader = self._local.loader = LoadImaged(keys=self.keys, **self.kwargs)
        return loader(data)

    def __getstate__(self) -> dict:
        return {k: v for k, v in self.__dict__.items() if k != "_local"}

    def __setstate__(self, state: dict) -> None:
        self.__dict__.update(state)
        self._local = threading.local()


def deterministic_transforms(cfg: DictConfig | None, spec, label_mapping: dict | None = None,
                             keys: Sequence[str] = ("image", "label")) -> list:
    """Load, channel first, reorient, resample, map labels, normalise, cast: the cached, invertible part.

    ``spec``: the ``DataSpec`` (spatial dims, orientation, spacing, normalisation and its statistics).
    ``keys``: ``("image", "label")`` for training and validation, ``("image",)`` for prediction.
    """
    from monai import transforms as T

    keys = list(keys)
    has_label = "label" in keys
    reader = "PILReader" if spec.spatial_dims == 2 else None  # PIL reads PNG, JPEG and TIFF
    steps: list = [ThreadSafeLoadImaged(keys=keys, image_only=True, ensure_channel_first=True, reader=reader)]
    if spec.spatial_dims == 3:
        steps.append(T.Orientationd(keys=keys, axcodes=spec.orientation, labels=RAS_LABELS))  # axcodes in RAS terms
        if spec.spacing:
            modes = ["bilinear", "nearest"] if has_label else ["bilinear"]
            steps.append(T.Spacingd(keys=keys, pixdim=list(spec.spacing), mode=modes))
    if has_label and label_mapping:
        steps.append(T.MapLabelValued(keys="label", orig_labels=[int(k) for k in label_mapping],
                                      target_labels=[int(v) for v in label_mapping.values()]))
    steps.append(NormalizeChannelsd(keys="image", modes=spec.normalize, stats=spec.intensity))
    if has_label:
        steps.append(T.CastToTyped(keys="label", dtype=label_dtype(spec.num_classes)))
    return steps


def label_dtype(num_classes: int) -> torch.dtype:
    """The integer type that holds ``num_classes`` class indices: label maps in the cache, predictions written."""
    return torch.uint8 if num_classes <= 256 else torch.int16


def with_meta_of(array: torch.Tensor, like):
    """``array`` as a MetaTensor with the meta and applied operations of ``like`` (to invert it as ``like``)."""
    from monai.data import MetaTensor

    return MetaTensor(array, meta=dict(like.meta), applied_operations=list(like.applied_operations))


def inference_transforms(cfg: DictConfig | None, spec):
    """The deterministic steps for an image alone, as a MONAI ``Compose`` (for the prediction app).

    Input: ``{"image": path or [channel paths]}``. Output: the image as a channel-first float32
    ``MetaTensor`` in the training orientation, spacing and intensity scale. Its meta keeps the
    original affine and shape, so ``prediction_inverter(transforms)`` maps a prediction back.
    ``cfg`` is the run's ``data`` config (unused today: everything needed is in ``spec``).
    """
    from monai.transforms import Compose

    return Compose(deterministic_transforms(cfg, spec, keys=("image",)))


def prediction_inverter(transforms, keys: str | Sequence[str] = "pred", nearest: bool = True):
    """``Invertd`` that undoes ``transforms`` (orientation, resampling) on ``keys``, using the image's meta.

    Usage: ``data = transforms({"image": path}); data["pred"] = MetaTensor(pred, meta=data["image"].meta,
    applied_operations=data["image"].applied_operations)`` (or just predict on ``data["image"]`` and copy its meta);
    then ``prediction_inverter(transforms)(data)["pred"]`` lies on the original voxel grid with the original affine.
    """
    from monai.transforms import Invertd

    return Invertd(keys=keys, transform=transforms, orig_keys="image", nearest_interp=nearest)


class ForegroundLocationsd(MapTransform):
    """Cached: for each foreground class, its voxel count and a bounded random sample of its voxel coordinates.

    At most ``max(max_per_class, min_coverage * count)`` coordinates per class (nnU-Net's rule), so a
    large organ costs kilobytes, not the gigabyte a full list of background indices would.
    """

    def __init__(self, label_key: str = "label", locations_key: str = LOCATIONS_KEY, max_per_class: int = 10000,
                 min_coverage: float = 0.01):
        super().__init__(label_key)
        self.label_key, self.locations_key = label_key, locations_key
        self.max_per_class, self.min_coverage = max_per_class, min_coverage

    def __call__(self, data: dict) -> dict:
        d = dict(data)
        label = d[self.label_key]
        array = np.asarray((label.as_tensor() if hasattr(label, "as_tensor") else torch.as_tensor(label))[0].cpu())
        flat = np.flatnonzero(array)
        values = array.reshape(-1)[flat]
        rng = np.random.RandomState(zlib.crc32(np.asarray(array.shape).tobytes()) ^ flat.size)
        locations = {}
        for value in np.unique(values).tolist():
            indices = flat[values == value]
            count = indices.size
            keep = min(count, max(self.max_per_class, math.ceil(count * self.min_coverage)))
            if keep < count:
                indices = rng.choice(indices, keep, replace=False)
            coords = np.stack(np.unravel_index(indices, array.shape), 1).astype(np.int32)
            locations[int(value)] = {"count": int(count), "coords": coords}
        d[self.locations_key] = locations
        return d


class RandForegroundCropd(Randomizable, MapTransform):
    """One patch per call: centred on a foreground voxel with probability ``pos_fraction``, else on background.

    Foreground centres come from ``ForegroundLocationsd``: with ``sampling="posneg"`` any foreground
    voxel is equally likely; with ``"class_balanced"`` a class present in the case is drawn uniformly
    first, so rare classes are seen as often as common ones. Background centres are uniform over the
    volume, redrawn (up to ``background_tries`` times) while they land on foreground. A case without
    foreground gives a background patch. Centres near the border are moved inwards so the patch fits
    (the volume was padded to at least the patch size). Outputs NumPy arrays (no meta).
    """

    def __init__(self, keys, label_key: str, patch_size: Sequence[int], pos_fraction: float, sampling: str = "posneg",
                 locations_key: str = LOCATIONS_KEY, background_tries: int = 10, crop_size: Sequence[int] | None = None):
        MapTransform.__init__(self, keys)
        self.crop_size = [int(s) for s in (crop_size or patch_size)]
        if sampling not in SAMPLINGS:
            raise ConfigError(f"data.sampling={sampling!r} is unknown; use one of {', '.join(SAMPLINGS)}")
        if not 0.0 <= float(pos_fraction) <= 1.0:
            raise ConfigError(f"data.pos_fraction={pos_fraction} must lie in [0, 1] (share of patches centred on foreground)")
        self.label_key, self.locations_key = label_key, locations_key
        self.patch_size = [int(s) for s in patch_size]
        self.pos_fraction, self.sampling, self.background_tries = float(pos_fraction), sampling, background_tries

    def randomize(self, data=None) -> None:  # draws happen in ``_centre``
        pass

    def _centre(self, label: np.ndarray, locations: dict | None) -> list[int]:
        spatial = label.shape[1:]
        present = [c for c, v in sorted((locations or {}).items()) if v["count"] > 0]
        if present and self.R.rand() < self.pos_fraction:
            if self.sampling == "class_balanced":
                chosen = present[self.R.randint(len(present))]
            else:
                counts = np.array([locations[c]["count"] for c in present], float)
                chosen = present[self.R.choice(len(present), p=counts / counts.sum())]
            coords = locations[chosen]["coords"]
            return [int(v) for v in np.asarray(coords[self.R.randint(len(coords))])]
        centre = [int(self.R.randint(s)) for s in spatial]
        for _ in range(self.background_tries):
            if label[(0, *centre)] == 0:
                break
            centre = [int(self.R.randint(s)) for s in spatial]
        return centre

    def __call__(self, data: dict) -> dict:
        d = dict(data)
        locations = d.pop(self.locations_key, None)
        label = _numpy(d[self.label_key])
        centre = self._centre(label, locations)
        spatial = label.shape[1:]
        starts = [max(0, min(c - p // 2, s - p)) for c, p, s in zip(centre, self.patch_size, spatial)]
        if self.crop_size != self.patch_size:  # a larger region around the patch, zero beyond the volume
            starts = [a + p // 2 - c // 2 for a, p, c in zip(starts, self.patch_size, self.crop_size)]
            inside = [(max(0, a), min(s, a + c)) for a, c, s in zip(starts, self.crop_size, spatial)]
            pad = [(0, 0)] + [(lo - a, a + c - hi) for (lo, hi), a, c in zip(inside, starts, self.crop_size)]
            region = (slice(None), *(slice(lo, hi) for lo, hi in inside))
            for key in self.key_iterator(d):
                d[key] = np.pad(_numpy(d[key])[region], pad)
            return d
        region = (slice(None), *(slice(a, a + p) for a, p in zip(starts, self.patch_size)))
        for key in self.key_iterator(d):
            d[key] = _numpy(d[key])[region]  # a view of the cached case: collation copies it
        return d


def _numpy(value) -> np.ndarray:
    """A NumPy view of a (Meta)Tensor or array, without copying."""
    if hasattr(value, "as_tensor"):
        value = value.as_tensor()
    return value.detach().cpu().numpy() if torch.is_tensor(value) else np.asarray(value)


def train_cached_transforms(patch_size: Sequence[int]) -> list:
    """After the deterministic part, for training cases: pad to the patch, sample class locations."""
    from monai import transforms as T

    return [T.SpatialPadd(keys=["image", "label"], spatial_size=list(patch_size), mode="constant"),
            ForegroundLocationsd(label_key="label")]


def train_random_transforms(patch_size: Sequence[int], pos_fraction: float, sampling: str = "posneg", augmentation=None,
                            spacing: Sequence[float] | None = None) -> list:
    """Random part, in the data workers: one region (foreground with ``pos_fraction``), its augmentation parameters.

    The region is the patch grown for rotation and scaling (``Augmentation.crop_size``); the batch is
    augmented after collation, on the training device (``segtrain.augment.batched``).
    ``augmentation``: an ``augment.Augmentation`` (``None``: mirroring only, as ``augment=light``).
    """
    from monai import transforms as T

    from segtrain.augment.params import DrawAugmentationd

    augmentation = augmentation if augmentation is not None else default_augmentation()
    keys = ["image", "label"]
    crop = augmentation.crop_size(patch_size, spacing)
    return [RandForegroundCropd(keys=keys, label_key="label", patch_size=patch_size, pos_fraction=pos_fraction,
                                sampling=sampling, crop_size=crop),
            DrawAugmentationd(augmentation, patch_size, spacing),
            T.EnsureTyped(keys=keys, track_meta=False)]


def default_augmentation():
    """Mirroring only (``augment=light``): what a data module without an ``augment`` config gets."""
    from segtrain.augment import Augmentation

    return Augmentation(mirror_prob=0.5)


class LabelMapsd(MapTransform):
    """Adds per-case maps computed from the label (``name → fn(label, spacing, num_classes)``, see
    ``segtrain.losses.maps``), e.g. distance maps.

    A deterministic MONAI ``MapTransform`` in the cached part of the pipeline (``CacheDataset`` caches
    up to the first random transform), so each map is computed once per case.
    """

    def __init__(self, maps: dict, num_classes: int | None = None, label_key: str = "label"):
        super().__init__(label_key)
        self.maps, self.num_classes, self.label_key = dict(maps), num_classes, label_key

    def __call__(self, data: dict) -> dict:
        from monai.data import MetaTensor

        data = dict(data)
        label = data[self.label_key]
        array = np.asarray(label.detach().cpu() if torch.is_tensor(label) else label).astype(np.int64)
        spacing = tuple(float(s) for s in label.pixdim) if isinstance(label, MetaTensor) else (1.0,) * (array.ndim - 1)
        for name, fn in self.maps.items():
            value = torch.as_tensor(np.asarray(fn(array, spacing, num_classes=self.num_classes), dtype=np.float32))
            data[name] = MetaTensor(value, meta=dict(label.meta)) if isinstance(label, MetaTensor) else value
        return data
