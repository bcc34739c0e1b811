"""MONAI transform pipelines: load and normalise (cached), then foreground-biased random patches."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from omegaconf import DictConfig

from segtrain.errors import ConfigError

NORMALIZATIONS = ("zscore", "minmax", "none")


def deterministic_transforms(cfg: DictConfig, spatial_dims: int, label_mapping: dict | None = None) -> list:
    """Load, channel-first, orientation, optional resampling, intensity normalisation, label cast."""
    from monai import transforms as T

    keys = ["image", "label"]
    steps: list = [T.LoadImaged(keys=keys, image_only=True, ensure_channel_first=True)]
    if spatial_dims == 3:
        steps.append(T.Orientationd(keys=keys, axcodes=cfg.get("orientation", "RAS")))
        if cfg.get("spacing"):
            steps.append(T.Spacingd(keys=keys, pixdim=list(cfg.spacing), mode=("bilinear", "nearest")))
    if label_mapping:
        orig = [int(k) for k in label_mapping]
        steps.append(T.MapLabelValued(keys="label", orig_labels=orig, target_labels=[int(label_mapping[k]) for k in label_mapping]))
    mode = cfg.get("normalize", "zscore")
    if mode == "zscore":
        steps.append(T.NormalizeIntensityd(keys="image", channel_wise=True))
    elif mode == "minmax":
        steps.append(T.ScaleIntensityd(keys="image", minv=0.0, maxv=1.0, channel_wise=True))
    elif mode != "none":
        raise ConfigError(f"data.normalize={mode!r} is unknown; use one of {', '.join(NORMALIZATIONS)}")
    steps += [
        T.CastToTyped(keys="image", dtype=torch.float32),
        T.CastToTyped(keys="label", dtype=torch.uint8),
    ]
    return steps


def train_transforms(cfg: DictConfig, patch_size: Sequence[int], extra_keys: Sequence[str] = ()) -> list:
    """Random part: pad to the patch, crop patches centred on foreground with ``pos_fraction``, flips.

    ``extra_keys``: per-voxel maps (e.g. a loss's distance maps) cropped and flipped with the label.
    """
    from monai import transforms as T

    keys = ["image", "label", *extra_keys]
    pos = float(cfg.pos_fraction)
    if not 0.0 <= pos <= 1.0:
        raise ConfigError(f"data.pos_fraction={pos} must lie in [0, 1] (share of patches centred on foreground)")
    steps = [
        T.SpatialPadd(keys=keys, spatial_size=list(patch_size)),
        T.RandCropByPosNegLabeld(
            keys=keys,
            label_key="label",
            spatial_size=list(patch_size),
            pos=pos,
            neg=1.0 - pos,
            num_samples=1,
            fg_indices_key="label_fg_indices",
            bg_indices_key="label_bg_indices",
        ),
        T.DeleteItemsd(keys=["label_fg_indices", "label_bg_indices"]),
    ]
    for axis in range(len(patch_size)) if cfg.get("flip", True) else []:
        steps.append(T.RandFlipd(keys=keys, prob=0.5, spatial_axis=axis))
    steps.append(T.EnsureTyped(keys=keys, track_meta=False))
    return steps


def indices_transform():
    """Cached foreground/background voxel indices, so that patch sampling costs nothing per step."""
    from monai import transforms as T

    return T.FgBgToIndicesd(keys="label")  # → label_fg_indices, label_bg_indices


class LabelMapsd:
    """Adds per-case maps computed from the label (``name → fn(label, spacing)``), e.g. distance maps.

    Runs in the cached, deterministic part of the pipeline: each map is computed once per case.
    """

    def __init__(self, maps: dict):
        self.maps = dict(maps)

    def __call__(self, data: dict) -> dict:
        import numpy as np
        from monai.data import MetaTensor

        data = dict(data)
        label = data["label"]
        array = np.asarray(label.detach().cpu() if torch.is_tensor(label) else label).astype(np.int64)
        spacing = tuple(float(s) for s in label.pixdim) if isinstance(label, MetaTensor) else (1.0,) * (array.ndim - 1)
        for name, fn in self.maps.items():
            value = torch.as_tensor(np.asarray(fn(array, spacing), dtype=np.float32))
            data[name] = MetaTensor(value, affine=label.affine, meta=dict(label.meta)) if isinstance(label, MetaTensor) else value
        return data
