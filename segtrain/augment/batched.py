"""The augmentation of a whole batch with torch, on whatever device the batch is (the GPU or a CPU worker).

Input: a collated batch with ``image`` (B, C, *R), ``label`` (B, 1, *R) cut as the enlarged region
``R`` (``Augmentation.crop_size``) and ``augment`` (``params.AugmentParams``). Output: ``image`` and
``label`` of the patch size, augmented in nnU-Net's order (spatial, noise, blur, brightness,
contrast, low resolution, inverted gamma, gamma, mirroring), without ``augment``.

- Spatial: one affine grid per sample (``affine_grid``/``grid_sample``, image bilinear, label
  nearest, zeros outside); a sample neither rotated nor scaled gets the exact centre of its region.
- Intensity (image only): each step vectorised over the batch with per-sample factors, an
  unaffected sample left bit for bit as it was (``torch.where``). Low resolution loops over the few
  samples it applies to (each has its own down-sampled size).
- Which steps any sample of the batch needs is read from the parameters' host copy, so the
  augmenter never synchronises with the device; the noise comes from a generator on the batch's
  device seeded by the batch's parameters (the same seed gives the same batch on the same device).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor

from segtrain.augment.params import PARAMS_KEY, AugmentParams, fields

EPS = 1e-7


class BatchAugmenter:
    """Augments collated training batches (``__call__(batch) -> batch``) of one patch size."""

    def __init__(self, augmentation, patch_size: Sequence[int], spacing: Sequence[float] | None = None):
        self.augmentation = augmentation
        self.patch_size = [int(p) for p in patch_size]
        self.crop_size = augmentation.crop_size(self.patch_size, spacing)
        self.dims = len(self.patch_size)
        self._cols = fields(self.dims)
        self.blur_radius = int(math.ceil(4.0 * augmentation.blur_sigma[1]))  # MONAI's truncation at 4 sigma

    def __call__(self, batch: dict) -> dict:
        batch = dict(batch)  # the caller's dict stays as it was
        params: AugmentParams = batch.pop(PARAMS_KEY)
        image, label = batch["image"], batch["label"]
        values = params.values.to(image.device, non_blocking=True)  # already there when moved with the batch
        image, label = self.spatial(image, label, params, values)
        image = self.intensity(image, params, values)
        image, label = self.mirror(image, label, params)
        batch["image"], batch["label"] = image, label
        return batch

    # -- spatial ------------------------------------------------------------------------------------
    def _centre(self, x: Tensor) -> Tensor:
        starts = [(r - p) // 2 for r, p in zip(x.shape[2:], self.patch_size)]
        return x[(slice(None), slice(None), *(slice(s, s + p) for s, p in zip(starts, self.patch_size)))]

    def spatial(self, image: Tensor, label: Tensor, params: AugmentParams, values: Tensor) -> tuple[Tensor, Tensor]:
        if list(image.shape[2:]) == self.patch_size:
            return image, label
        centre_image, centre_label = self._centre(image), self._centre(label)
        if not params.column(self.dims, "spatial").any():
            return centre_image.contiguous(), centre_label.contiguous()
        batch = image.shape[0]
        theta = values[:, self._cols["theta"]].reshape(batch, self.dims, self.dims + 1)
        grid = F.affine_grid(theta.float(), [batch, 1, *self.patch_size], align_corners=False)
        moved = F.grid_sample(image.float(), grid, mode="bilinear", padding_mode="zeros", align_corners=False)
        moved_label = F.grid_sample(label.float(), grid, mode="nearest", padding_mode="zeros", align_corners=False)
        chosen = self._flag(values, "spatial", image.ndim)
        image = torch.where(chosen, moved.to(image.dtype), centre_image)
        label = torch.where(chosen, moved_label.round().to(label.dtype), centre_label)
        return image, label

    # -- intensity ----------------------------------------------------------------------------------
    def _flag(self, values: Tensor, name: str, ndim: int, identity: float = 0.0) -> Tensor:
        """(B, 1, ...) bool: the samples whose ``name`` parameter differs from ``identity``."""
        column = values[:, self._cols[name]]
        return (column != identity).any(1).reshape(-1, *([1] * (ndim - 1)))

    def _per_sample(self, values: Tensor, name: str, ndim: int) -> Tensor:
        return values[:, self._cols[name]][:, 0].reshape(-1, *([1] * (ndim - 1)))

    def intensity(self, image: Tensor, params: AugmentParams, values: Tensor) -> Tensor:
        nd, host = image.ndim, params
        if (host.column(self.dims, "noise_std") > 0).any():
            generator = torch.Generator(device=image.device)
            generator.manual_seed(int(host.column(self.dims, "noise_seed")[:, 0].sum()) % (2**63 - 1))
            noise = torch.randn(image.shape, generator=generator, device=image.device, dtype=image.dtype)
            image = image + self._per_sample(values, "noise_std", nd) * noise  # std 0: x + 0 == x
        if (host.column(self.dims, "blur_sigma") > 0).any():
            image = torch.where(self._flag(values, "blur_sigma", nd), self._blur(image, values), image)
        if (host.column(self.dims, "brightness") != 1).any():
            image = image * self._per_sample(values, "brightness", nd)  # factor 1: unchanged
        if (host.column(self.dims, "contrast") != 1).any():
            image = torch.where(self._flag(values, "contrast", nd, 1.0), self._contrast(image, values), image)
        zooms = host.column(self.dims, "low_resolution")[:, 0]
        if (zooms != 1).any():
            image = self._low_resolution(image, zooms)
        for name, invert in (("gamma_inverted", True), ("gamma", False)):
            if (host.column(self.dims, name) != 1).any():
                gamma = self._per_sample(values, name, nd)
                image = torch.where(self._flag(values, name, nd, 1.0), _gamma(image, gamma, invert), image)
        return image

    def _blur(self, image: Tensor, values: Tensor) -> Tensor:
        """Separable Gaussian with per-sample, per-axis sigma: one grouped convolution per axis (reflected borders)."""
        batch, channels = image.shape[:2]
        radius = self.blur_radius
        offsets = torch.arange(-radius, radius + 1, device=image.device, dtype=torch.float32)
        sigmas = values[:, self._cols["blur_sigma"]].float().clamp_min(1e-6)  # (B, dims); ~0 gives a delta kernel
        conv = F.conv3d if self.dims == 3 else F.conv2d
        out = image.float().reshape(1, batch * channels, *image.shape[2:])
        for axis in range(self.dims):
            kernel = torch.exp(-offsets.square() / (2 * sigmas[:, axis:axis + 1].square()))  # (B, K)
            kernel = (kernel / kernel.sum(1, keepdim=True)).repeat_interleave(channels, 0)  # (B*C, K)
            shape = [1] * self.dims
            shape[axis] = 2 * radius + 1
            size = out.shape[2 + axis]
            pad = [0, 0] * self.dims
            pad[2 * (self.dims - 1 - axis)] = pad[2 * (self.dims - 1 - axis) + 1] = min(radius, size - 1)
            padded = F.pad(out, pad, mode="reflect") if size > 1 else out
            if min(radius, size - 1) < radius:  # a side shorter than the kernel: replicate the rest
                extra = [0, 0] * self.dims
                extra[2 * (self.dims - 1 - axis)] = extra[2 * (self.dims - 1 - axis) + 1] = radius - min(radius, size - 1)
                padded = F.pad(padded, extra, mode="replicate")
            out = conv(padded, kernel.reshape(batch * channels, 1, *shape), groups=batch * channels)
        return out.reshape(image.shape).to(image.dtype)

    def _contrast(self, image: Tensor, values: Tensor) -> Tensor:
        axes = tuple(range(2, image.ndim))
        mean = image.mean(axes, keepdim=True)
        low, high = image.amin(axes, keepdim=True), image.amax(axes, keepdim=True)
        factor = self._per_sample(values, "contrast", image.ndim)
        return torch.minimum(torch.maximum((image - mean) * factor + mean, low), high)

    def _low_resolution(self, image: Tensor, zooms) -> Tensor:
        mode = "trilinear" if self.dims == 3 else "bilinear"
        samples = list(image.unbind(0))
        for index, zoom in enumerate(zooms):
            if zoom == 1:
                continue
            x = samples[index][None]
            size = [max(1, int(round(s * float(zoom)))) for s in x.shape[2:]]
            down = F.interpolate(x.float(), size=size, mode="nearest")
            samples[index] = F.interpolate(down, size=list(x.shape[2:]), mode=mode, align_corners=False)[0].to(image.dtype)
        return torch.stack(samples)

    # -- mirroring ----------------------------------------------------------------------------------
    def mirror(self, image: Tensor, label: Tensor, params: AugmentParams) -> tuple[Tensor, Tensor]:
        flips = params.column(self.dims, "mirror") > 0
        if not flips.any():
            return image, label
        images, labels = [], []
        for index, row in enumerate(flips):
            axes = [axis + 1 for axis in range(self.dims) if row[axis]]  # axes of one sample (C, *S)
            images.append(image[index].flip(axes) if axes else image[index])
            labels.append(label[index].flip(axes) if axes else label[index])
        return torch.stack(images), torch.stack(labels)


def _gamma(image: Tensor, gamma: Tensor, invert: bool) -> Tensor:
    """nnU-Net's gamma: on [min, max] mapped to [0, 1], back, then the mean and std of the input restored."""
    axes = tuple(range(2, image.ndim))
    x = -image.float() if invert else image.float()
    mean, std = x.mean(axes, keepdim=True), x.std(axes, keepdim=True)
    low, high = x.amin(axes, keepdim=True), x.amax(axes, keepdim=True)
    span = high - low
    y = ((x - low) / span.clamp_min(EPS)).clamp(0, 1).pow(gamma) * span + low
    y = (y - y.mean(axes, keepdim=True)) / y.std(axes, keepdim=True).clamp_min(EPS) * std + mean
    return (-y if invert else y).to(image.dtype)
