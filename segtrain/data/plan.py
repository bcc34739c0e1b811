"""The experiment plan: voxel spacing, patch, batch, normalisation and network topology from the dataset.

``data.plan=auto`` decides from the preflight fingerprint (spacings, shapes, channel names) what
nnU-Net v2's default ``ExperimentPlanner`` decides for its ``3d_fullres`` (or ``2d``) configuration
(Isensee et al., "nnU-Net: a self-configuring method for deep learning-based biomedical image
segmentation", Nature Methods 2021; nnunetv2/experiment_planning/experiment_planners/):

- **spacing**: the median spacing per axis. If the coarsest axis is more than 3x coarser than the
  others *and* has more than 3x fewer voxels, its spacing is the 10th percentile of the cases'
  spacings along it instead (but at least the finest other spacing), so few thick slices are not
  interpolated into many blurry ones.
- **patch size**: the aspect ratio of a voxel in mm scaled to 256^3 voxels (2048^2 in 2D), clipped
  to the median resampled shape, then shrunk along the axis that is largest relative to the median
  shape until the estimated activation memory of nnU-Net's U-Net (32 features doubling to 320, two
  convolutions per stage, batch 2) fits ``memory_gb`` (8 GB: nnU-Net's default target).
- **topology** (``strides``, ``kernel_sizes``, one entry per stage, the first stage unpooled): pool
  every axis whose current spacing is within 2x of the finest until its feature map would drop
  below 4 voxels; an axis keeps 1-wide kernels until its spacing comes within 2x of the finest. So
  a 0.7x0.7x5 mm volume pools in-plane only in the first stages.
- **batch size**: what the memory budget leaves at that patch, at most 5% of the dataset's voxels
  per step, at least 2.
- **normalize**: ``ct`` for a channel whose ``dataset.json`` name is ``CT``, ``none`` for
  ``noNorm``, ``minmax`` for ``rescale_to_0_1``/``rgb_to_0_1``, else ``zscore``.

Differences from nnU-Net: shapes are the files' own (nnU-Net first crops each case to its nonzero
region); axes stay in the training orientation (nnU-Net moves the coarse axis first; we do that
internally, so ties break as in nnU-Net). Every value given explicitly (``data.patch_size``,
``data.spacing``, ``data.batch_size``, ``data.normalize``) wins; the topology then follows that patch.
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from segtrain.files import write_text_atomic

ANISOTROPY = 3.0               # nnU-Net's ANISO_THRESHOLD
MIN_EDGE = 4                   # smallest bottleneck feature map side (UNet_featuremap_min_edge_length)
REFERENCE = {3: (560_000_000, 2), 2: (85_000_000, 12)}  # (feature-map voxels, batch) that fill 8 GB (nnU-Net's calibration)
REFERENCE_GB = 8.0
BASE_FEATURES, MAX_FEATURES = 32, {3: 320, 2: 512}
MIN_BATCH = 2
MAX_DATASET_COVERED = 0.05     # a batch sees at most this share of the dataset's voxels
from segtrain.data.options import PLAN_MODES  # noqa: E402,F401  (one definition, with the options)
NORMALIZATION_BY_CHANNEL_NAME = {"ct": "ct", "nonorm": "none", "zscore": "zscore", "rescale_to_0_1": "minmax",
                                 "rgb_to_0_1": "minmax"}
UNPLANNED = {3: {"patch_size": [96, 96, 96], "batch_size": 2}, 2: {"patch_size": [128, 128], "batch_size": 8}}


@dataclass
class Plan:
    """What the planner decided (``plan.json`` in the run dir); axes in the training orientation."""

    spacing: list[float] | None                    # target voxel spacing (mm); None keeps each case's own (2D, plan=off)
    patch_size: list[int]
    batch_size: int
    normalize: list[str]                           # per image channel
    strides: list[list[int]] | None = None         # per stage, per axis; the first stage is all 1 (not pooled)
    kernel_sizes: list[list[int]] | None = None    # per stage, per axis (3, or 1 along a coarse axis)
    median_shape: list[int] = field(default_factory=list)  # median case shape at the target spacing
    memory_gb: float = REFERENCE_GB
    mode: str = "auto"
    set_by_user: list[str] = field(default_factory=list)   # the data.* options that overrode the plan

    def to_dict(self) -> dict:
        return asdict(self)

    def save(self, path: str | Path) -> None:
        write_text_atomic(path, json.dumps(self.to_dict(), indent=2))

    def summary(self) -> str:
        spacing = f"spacing {[round(s, 4) for s in self.spacing]} mm" if self.spacing else "spacing of each case"
        text = (f"plan (data.plan={self.mode}): {spacing}, patch {self.patch_size} (median case {self.median_shape}), "
                f"batch {self.batch_size}, normalize {self.normalize}")
        if self.strides:
            text += f", strides {self.strides[1:]}, kernels {self.kernel_sizes}"
        if self.set_by_user:
            text += f"; set by you: {', '.join(self.set_by_user)}"
        return text


def target_spacing(spacings: np.ndarray, shapes: np.ndarray) -> list[float]:
    """nnU-Net's full-resolution spacing: the median, with the 10th-percentile rule for a coarse axis."""
    spacings, shapes = np.asarray(spacings, float), np.asarray(shapes, float)
    target = np.percentile(spacings, 50, 0)
    if len(target) < 2:
        return target.tolist()
    median_shape = np.percentile(shapes, 50, 0)
    worst = int(np.argmax(target))
    others = [i for i in range(len(target)) if i != worst]
    other_spacing = max(target[i] for i in others)
    anisotropic_spacing = target[worst] > ANISOTROPY * other_spacing
    anisotropic_voxels = median_shape[worst] * ANISOTROPY < min(median_shape[i] for i in others)
    if anisotropic_spacing and anisotropic_voxels:
        coarse = np.percentile(spacings[:, worst], 10)
        if coarse < other_spacing:
            coarse = max(other_spacing, coarse) + 1e-5
        target[worst] = coarse
    return target.tolist()


def pool_and_conv_props(spacing: Sequence[float], patch_size: Sequence[int], min_edge: int = MIN_EDGE):
    """The U-Net topology for a patch at a spacing (nnU-Net's ``get_pool_and_conv_props``).

    Returns ``(strides, kernel_sizes, patch_size, divisor)``: per-stage strides (the first stage
    all 1), per-stage kernel sizes (the bottleneck all 3), the patch padded up to a multiple of
    ``divisor`` (2 ** poolings per axis).
    """
    dims = len(spacing)
    current_spacing, current_size = [float(s) for s in spacing], [float(s) for s in patch_size]
    strides, kernels = [[1] * dims], []
    pools, kernel = [0] * dims, [1] * dims
    while True:
        axes = [i for i in range(dims) if current_size[i] >= 2 * min_edge]
        if not axes:
            break
        finest = min(current_spacing[i] for i in axes)
        axes = [i for i in axes if current_spacing[i] / finest < 2]
        if len(axes) == 1 and current_size[axes[0]] < 3 * min_edge:
            break
        if not axes:
            break
        kernel = [3 if k == 3 or current_spacing[d] / min(current_spacing) < 2 else 1 for d, k in enumerate(kernel)]
        stage = [1] * dims
        for axis in axes:
            stage[axis] = 2
            pools[axis] += 1
            current_spacing[axis] *= 2
            current_size[axis] = math.ceil(current_size[axis] / 2)
        strides.append(stage)
        kernels.append(list(kernel))
    kernels.append([3] * dims)
    divisor = [2 ** p for p in pools]
    padded = [int(math.ceil(s / d) * d) for s, d in zip(patch_size, divisor)]
    return strides, kernels, padded, divisor


def features_per_stage(stages: int, dims: int, base: int = BASE_FEATURES) -> list[int]:
    return [min(MAX_FEATURES[dims], base * 2 ** i) for i in range(stages)]


def feature_map_voxels(patch_size: Sequence[int], strides: Sequence[Sequence[int]], in_channels: int,
                       num_classes: int, convs_per_stage: int = 2) -> int:
    """nnU-Net's memory proxy: voxels of every convolution output of its plain U-Net at this patch.

    Encoder: ``convs_per_stage`` outputs per stage; decoder: per stage the transposed convolution and
    its convolutions, and the segmentation head at full resolution (``PlainConvUNet.
    compute_conv_feature_map_size`` as the planner calls it: without deep-supervision heads).
    """
    dims = len(patch_size)
    features = features_per_stage(len(strides), dims)
    sizes, size = [], list(patch_size)
    for stage in strides:
        size = [s // k for s, k in zip(size, stage)]
        sizes.append(size)
    total = sum(convs_per_stage * f * math.prod(s) for f, s in zip(features, sizes))
    for level in range(len(strides) - 2, -1, -1):  # decoder stages, deepest first, at skip resolution
        voxels = math.prod(sizes[level])
        total += convs_per_stage * features[level] * voxels + features[level] * voxels + (num_classes * voxels if level == 0 else 0)
    return int(total)


def plan_patch(spacing: Sequence[float], median_shape: Sequence[float], num_cases: int, in_channels: int,
               num_classes: int, memory_gb: float = REFERENCE_GB):
    """nnU-Net's patch, topology and batch size for a spacing and median shape (axes in nnU-Net's order)."""
    dims = len(spacing)
    inverse = 1 / np.asarray(spacing, float)
    side = 256 ** 3 if dims == 3 else 2048 ** 2
    initial = [round(v) for v in inverse * (side / np.prod(inverse)) ** (1 / dims)]
    initial = [min(a, int(b)) for a, b in zip(initial, median_shape)]
    strides, kernels, patch, divisor = pool_and_conv_props(spacing, initial)
    reference, reference_batch = REFERENCE[dims]
    reference = reference * memory_gb / REFERENCE_GB
    estimate = feature_map_voxels(patch, strides, in_channels, num_classes)
    while estimate / reference_batch * MIN_BATCH > reference:
        axis = int(np.argsort([p / m for p, m in zip(patch, median_shape)])[-1])
        trial = list(patch)
        trial[axis] -= divisor[axis]
        _, _, _, step = pool_and_conv_props(spacing, trial)
        patch = list(patch)
        patch[axis] -= step[axis]
        strides, kernels, patch, divisor = pool_and_conv_props(spacing, patch)
        estimate = feature_map_voxels(patch, strides, in_channels, num_classes)
    batch = round(reference / estimate * reference_batch)
    dataset_voxels = float(np.prod(np.asarray(median_shape, float))) * num_cases
    batch = max(min(batch, round(dataset_voxels * MAX_DATASET_COVERED / float(np.prod(patch)))), MIN_BATCH)
    return [int(p) for p in patch], int(batch), strides, kernels


def normalization_for(channel_names: Sequence[str]) -> list[str]:
    """nnU-Net's scheme per channel name (``dataset.json`` ``channel_names``/``modality``)."""
    return [NORMALIZATION_BY_CHANNEL_NAME.get(str(name).strip().casefold(), "zscore") for name in channel_names]


def reoriented(shape: Sequence[int], spacing: Sequence[float], axcodes: str, target: str) -> tuple[list, list]:
    """A case's shape and spacing in the axis order of ``target`` orientation codes (e.g. RAS)."""
    if not axcodes or len(axcodes) != len(shape) or "?" in axcodes:
        return list(shape), list(spacing)
    pairs = {"L": 0, "R": 0, "P": 1, "A": 1, "I": 2, "S": 2}
    source_axis = {pairs[c.upper()]: i for i, c in enumerate(axcodes)}
    order = [source_axis.get(pairs[c.upper()], i) for i, c in enumerate(target)]
    if sorted(order) != list(range(len(shape))):
        return list(shape), list(spacing)
    return [shape[i] for i in order], [spacing[i] for i in order]


def make_plan(shapes: Sequence[Sequence[int]], spacings: Sequence[Sequence[float]], channel_names: Sequence[str],
              num_classes: int, num_train_cases: int, *, mode: str = "auto", memory_gb: float = REFERENCE_GB,
              spacing=None, patch_size=None, batch_size=None, normalize=None,
              model_divisor: Sequence[int] | None = None) -> Plan:
    """The plan for a dataset (``shapes``/``spacings`` per case in the training orientation).

    ``spacing``/``patch_size``/``batch_size``/``normalize``: the user's explicit values (``None``:
    plan them); ``spacing`` may be ``"median"`` or a list of mm. ``model_divisor``: per axis, what
    the network's down-sampling needs the patch sides to be multiples of, when the model fixes it
    (``None``: the network takes the planned strides).
    """
    shapes, spacings = np.asarray(shapes, float), np.asarray(spacings, float)
    dims = shapes.shape[1]
    user = [name for name, value in (("data.spacing", spacing), ("data.patch_size", patch_size),
                                     ("data.batch_size", batch_size), ("data.normalize", normalize)) if value is not None]
    channels = len(channel_names)
    if normalize is None:
        normalize = normalization_for(channel_names) if mode == "auto" else ["zscore"] * channels
    elif isinstance(normalize, str):
        normalize = [normalize] * channels
    normalize = [str(n) for n in normalize]

    if spacing == "median":
        target = np.median(spacings, 0).tolist()
    elif spacing is not None:
        target = [float(s) for s in spacing]
    elif mode == "auto" and dims == 3:
        target = target_spacing(spacings, shapes)
    else:
        target = None
    resampled = shapes * spacings / np.asarray(target) if target else shapes
    median_shape = np.median(np.round(resampled), 0)

    if mode != "auto":
        patch = list(patch_size) if patch_size is not None else list(UNPLANNED[dims]["patch_size"])
        batch = int(batch_size) if batch_size is not None else UNPLANNED[dims]["batch_size"]
        return Plan(target and [round(s, 6) for s in target], [int(p) for p in patch], batch, normalize,
                    median_shape=median_shape.astype(int).tolist(), memory_gb=memory_gb, mode=mode, set_by_user=user)

    # nnU-Net's axis order: the coarsest axis first (ties: as a SimpleITK array, reversed to ours)
    plan_spacing = np.asarray(target if target else [1.0] * dims, float)
    reverse = list(range(dims))[::-1]
    order = [reverse[int(np.argmax(plan_spacing[reverse]))]]
    order += [a for a in reverse if a not in order]
    back = [order.index(a) for a in range(dims)]
    s_spacing = plan_spacing[order].tolist()
    s_median = median_shape[order].tolist()
    if patch_size is None:
        patch, batch, strides, kernels = plan_patch(s_spacing, s_median, num_train_cases, channels, num_classes, memory_gb)
        patch = [patch[i] for i in back]
    else:
        patch = [int(p) for p in patch_size]
        _, batch, _, _ = plan_patch(s_spacing, s_median, num_train_cases, channels, num_classes, memory_gb)
    if model_divisor is not None:  # the network fixes its poolings: round the patch up to them
        patch = [max(int(math.ceil(p / d) * d), 2 * d) if patch_size is None else p for p, d in zip(patch, model_divisor)]
        strides = kernels = None
    else:
        strides, kernels, padded, _ = pool_and_conv_props(s_spacing, [patch[i] for i in order])
        if patch_size is None:
            patch = [padded[i] for i in back]
        strides = [[stage[i] for i in back] for stage in strides]
        kernels = [[stage[i] for i in back] for stage in kernels]
    if batch_size is not None:
        batch = int(batch_size)
    return Plan([round(s, 6) for s in target] if target else None, [int(p) for p in patch], int(batch), normalize,
                strides, kernels, median_shape.astype(int).tolist(), memory_gb, mode, user)
