"""The label maps of the losses: per-voxel maps computed from the label alone.

A loss names the maps it needs in ``label_maps`` (name → function). A map function accepts two forms:

    fn(label: np.ndarray (1, *S) int, spacing=None, num_classes=None) -> np.ndarray (K, *S) float32
    fn(label: Tensor (B, 1, *S) int,  spacing=None, num_classes=None) -> Tensor (B, K, *S) float32

The array form serves one case: the cached per-case pipeline (``segtrain.data.transforms.LabelMapsd``)
calls it on the whole case's label, crops the maps with the label and caches them. The tensor form
serves a batch: the training step computes the maps of the augmented labels (``PrepareBatch``) on the
batch's device. On a CPU it runs the SciPy code of each case (exact and fast there); on any other
device it runs the torch functions of this module (``distance_to``, ``signed_distance``,
``connected_components``, ``border_weight``), which never synchronise with the host and chunk their
work so that temporaries stay bounded (``CHUNK_BYTES``).

``spacing`` is one value per spatial axis (None: 1). ``num_classes`` (background included) is the
dataset's, given by the pipeline, so that every case of a dataset gets the same number of channels.

Accuracy of the torch functions: the distance transform is the exact separable squared EDT
(Felzenszwalb & Huttenlocher / Saito & Toriwaki decomposition, the minimum over each line computed
by brute force) in float32, so it differs from ``scipy.ndimage.distance_transform_edt`` by float32
rounding only; the tests hold it to an absolute 1e-4 × the largest distance of the map.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
import torch
from torch import Tensor

CHUNK_BYTES = 32 << 20
"""Budget of the per-chunk temporaries of the torch functions (bytes): the lines of a pass are processed
in chunks so that the (lines, L, L) candidate block of the brute-force minimum stays below it."""


# -- torch: distance transforms ------------------------------------------------------------------
def _spacing(spacing: Sequence[float] | None, dims: int) -> tuple[float, ...]:
    """One float per spatial axis; None, or a spacing of the wrong length (as the SciPy maps do), is 1 voxel."""
    if spacing is None or len(spacing) != dims:
        return (1.0,) * dims
    return tuple(float(s) for s in spacing)


def _chunk(lines: int, per_line_bytes: int) -> int:
    return max(1, min(lines, CHUNK_BYTES // max(per_line_bytes, 1)))


def _as_lines(x: Tensor, axis: int) -> tuple[Tensor, tuple[int, ...]]:
    """``x`` with ``axis`` moved last, as contiguous (lines, L), and the moved shape to restore it."""
    moved = x.movedim(axis, -1)
    return moved.reshape(-1, x.shape[axis]), tuple(moved.shape)


def _from_lines(lines: Tensor, moved_shape: tuple[int, ...], axis: int) -> Tensor:
    return lines.reshape(moved_shape).movedim(-1, axis)


def _offsets2(length: int, spacing: float, device) -> Tensor:
    """(L, L) float32: (spacing·(x − y))²."""
    index = torch.arange(length, device=device)
    return ((index[:, None] - index[None, :]).to(torch.float32) * spacing).square()


def _nearest_on_lines(mask: Tensor, spacing: float) -> Tensor:
    """(lines, L) bool → float32 squared distance along each line to its nearest True voxel (inf: none)."""
    n, length = mask.shape
    out = torch.empty(mask.shape, dtype=torch.float32, device=mask.device)
    index = torch.arange(length, device=mask.device, dtype=torch.float32)
    step = _chunk(n, 4 * 4 * length)
    for start in range(0, n, step):
        m = mask[start:start + step]
        before = torch.where(m, index, -math.inf).cummax(1).values  # last True at or before x
        after = torch.where(m, index, math.inf).flip(1).cummin(1).values.flip(1)  # first True at or after x
        out[start:start + step] = (torch.minimum(index - before, after - index) * spacing).square()
    return out


def _min_plus_on_lines(f: Tensor, spacing: float) -> Tensor:
    """(lines, L) → min_y f(y) + (spacing·(x − y))², by brute force over y, chunked over the lines."""
    n, length = f.shape
    offsets = _offsets2(length, spacing, f.device)
    out = torch.empty_like(f)
    step = _chunk(n, 4 * length * length)
    for start in range(0, n, step):
        out[start:start + step] = (f[start:start + step, None, :] + offsets).amin(-1)
    return out


def distance_to(mask: Tensor, spacing: Sequence[float] | None = None) -> Tensor:
    """Euclidean distance of each voxel to the nearest True voxel of its item: (N, *S) bool → (N, *S) float32.

    ``S`` is 2D or 3D; ``spacing`` gives one length per spatial axis (None: 1 voxel). True voxels get 0;
    an item without any True voxel gets +inf everywhere. Where the item has a True voxel this is
    ``scipy.ndimage.distance_transform_edt(~mask[n], sampling=spacing)`` up to float32 rounding (the
    tests allow an absolute 1e-4 × the largest distance).

    Exact separable squared EDT: along the last axis, the 1-D distance to the nearest True voxel of the
    line (a forward cummax and a backward cummin of the True positions); along each other axis,
    d²(x) = min_y f(y) + (spacing·(x − y))², by brute force over y for every line, in chunks of lines
    (``CHUNK_BYTES``). No host synchronisation; cost O(N·|S|·Σ sides).
    """
    if mask.ndim < 2:
        raise ValueError(f"distance_to: mask must be (N, *S), got shape {tuple(mask.shape)}")
    mask = mask.bool()
    dims = mask.ndim - 1
    sampling = _spacing(spacing, dims)
    lines, moved = _as_lines(mask, mask.ndim - 1)
    f = _from_lines(_nearest_on_lines(lines, sampling[-1]), moved, mask.ndim - 1)
    for axis in range(1, mask.ndim - 1):
        if mask.shape[axis] == 1:
            continue
        lines, moved = _as_lines(f, axis)
        del f
        f = _from_lines(_min_plus_on_lines(lines, sampling[axis - 1]), moved, axis)
        del lines
    return f.sqrt_()


def _num_classes(label: Tensor, num_classes: int | None) -> int:
    if num_classes:
        return int(num_classes)
    return max(2, int(label.max()) + 1) if label.numel() else 2  # a host synchronisation: pass num_classes


def _int_label(label: Tensor) -> Tensor:
    if type(label) is not Tensor:  # a MetaTensor or another subclass: plain tensor ops
        label = label.as_subclass(Tensor)
    return label.round().long() if label.is_floating_point() else label.long()


def signed_distance(label: Tensor, num_classes: int | None = None, spacing: Sequence[float] | None = None) -> Tensor:
    """Signed distance maps of a batch: label (B, 1, *S) int → (B, K − 1, *S) float32, on the label's device.

    Channel ``c − 1`` is ``distance_to(label == c) − distance_to(label != c)``: the distance to class
    ``c`` outside it, minus the distance to the other classes inside it (in units of ``spacing``), and 0
    in every voxel of an item where class ``c`` is absent or fills the item. The same numbers as
    ``SignedDistanceMaps`` of each case (float32; absolute 1e-4 × the largest distance in the tests).
    ``num_classes`` K counts the background; None takes the largest label of the batch + 1 (at least
    2), which reads the label on the host: a synchronisation, so give it on an accelerator.
    No other host synchronisation; the classes are processed one at a time.
    """
    if label.ndim < 3 or label.shape[1] != 1:
        raise ValueError(f"signed_distance: label must be (B, 1, *S), got shape {tuple(label.shape)}")
    label = _int_label(label)[:, 0]
    k = _num_classes(label, num_classes)
    dims = tuple(range(1, label.ndim))
    out = torch.zeros((label.shape[0], k - 1, *label.shape[1:]), dtype=torch.float32, device=label.device)
    batch = label.shape[0]
    for c in range(1, k):
        mask = label == c
        both = distance_to(torch.cat([mask, ~mask]), spacing)
        outside, inside = both[:batch], both[batch:]
        mixed = (mask.any(dim=dims) & ~mask.all(dim=dims)).reshape(-1, *(1,) * len(dims))  # per item, on the device
        out[:, c - 1] = torch.where(mixed, outside - inside, 0.0)
        del both, outside, inside
    return out


# -- torch: connected components and border weights -----------------------------------------------
def connected_components(mask: Tensor, max_iterations: int | None = None) -> Tensor:
    """Face-connected components of each item: (N, *S) bool → (N, *S) int64, background −1.

    The partition is ``scipy.ndimage.label``'s with its default structure (face connectivity); each
    component is labelled by the smallest flat index (within the item) of its voxels, so ids are
    unique within an item but neither consecutive nor shared across items.

    No host synchronisation, so no test of convergence: the labels start as each voxel's own flat
    index and go through a FIXED number of iterations (``max_iterations``, default the sum of the
    spatial sides) of: min over the 2·dims face neighbours inside the mask; hooking (the label a voxel
    had receives that minimum, a scatter-min); pointer jumping (label ← label[label]). Labels only
    decrease and always name a voxel of the same component, and each iteration does at least what plain
    min propagation does, so the result is exact for every component whose smallest-index voxel is at
    most ``max_iterations`` face steps (inside the component) from all its voxels; by default, any
    component of geodesic diameter at most the sum of the sides (compact blobs, a serpentine up to
    that length). Beyond, a longer component may keep two or more ids (it is never merged with
    another). Hooking and jumping usually converge in far fewer iterations than the bound (a few tens
    for blobs and for serpentines of thousands of voxels), but nothing is checked at run time.
    Memory: a few (N, |S|) int64 buffers.
    """
    if mask.ndim < 2:
        raise ValueError(f"connected_components: mask must be (N, *S), got shape {tuple(mask.shape)}")
    mask = mask.bool()
    n, shape = mask.shape[0], tuple(mask.shape[1:])
    size = math.prod(shape)
    iterations = sum(shape) if max_iterations is None else int(max_iterations)
    flat_mask = mask.reshape(n, size)
    # labels of the voxels, then one sentinel column: background voxels point at it, it points at itself
    labels = torch.full((n, size + 1), size, dtype=torch.int64, device=mask.device)
    labels[:, :size] = torch.where(flat_mask, torch.arange(size, device=mask.device), size)
    for _ in range(iterations):
        old = labels[:, :size].clone()
        grid = old.view(n, *shape)
        low = grid.clone()
        for axis in range(1, mask.ndim):
            length = shape[axis - 1]
            if length == 1:
                continue
            head, tail = low.narrow(axis, 0, length - 1), low.narrow(axis, 1, length - 1)
            torch.minimum(head, grid.narrow(axis, 1, length - 1), out=head)
            torch.minimum(tail, grid.narrow(axis, 0, length - 1), out=tail)
        low = low.masked_fill_(~mask, size).view(n, size)
        labels.scatter_reduce_(1, old, low, reduce="amin")  # hooking: the old label's voxel takes the minimum
        current = labels[:, :size]
        torch.minimum(current, low, out=current)
        labels[:, :size] = labels.gather(1, labels[:, :size])  # pointer jumping
        del old, grid, low
    return torch.where(flat_mask, labels[:, :size], -1).view(n, *shape)


def _top2_on_lines(values: Tensor, ids: Tensor, length: int, out: tuple[Tensor, Tensor, Tensor, Tensor]) -> None:
    """One axis of the top-2 EDT: ``values``/``ids`` (lines, C·L) candidates (C per position, inf / −1 for none)
    → per position the two smallest min_y v(y) + (x − y)² with distinct ids, written to ``out``."""
    n, width = values.shape
    copies = width // length
    index = torch.arange(length, device=values.device)
    offsets = (index[:, None] - index[None, :]).to(torch.float32).square().repeat(1, copies)  # (L, C·L)
    v1, i1, v2, i2 = out
    step = _chunk(n, 8 * length * width)
    for start in range(0, n, step):
        stop = start + step
        candidates = values[start:stop, None, :] + offsets  # (lines, L, C·L)
        cand_ids = ids[start:stop, None, :].expand_as(candidates)
        best, where_best = candidates.min(-1)
        best_id = cand_ids.gather(-1, where_best[..., None])
        candidates.masked_fill_(cand_ids == best_id, math.inf)
        second, where_second = candidates.min(-1)
        second_id = cand_ids.gather(-1, where_second[..., None])[..., 0]
        v1[start:stop], v2[start:stop] = best, second
        i1[start:stop] = torch.where(torch.isinf(best), -1, best_id[..., 0])
        i2[start:stop] = torch.where(torch.isinf(second), -1, second_id)
        del candidates, cand_ids, best_id


def border_weight(label: Tensor, w0: float, sigma: float) -> Tensor:
    """U-Net's border weights of a batch: label (B, 1, *S) int → (B, 1, *S) float32, on the label's device.

    Objects are the face-connected components of ``label > 0`` (``connected_components``, same
    iteration bound); ``d1``, ``d2`` the Euclidean distances in voxels to the nearest and the
    second-nearest object (0 inside an object for its own object); the value is
    ``w0·exp(−(d1 + d2)² / (2σ²))`` where the item has at least two objects, else 0.

    Exact, without enumerating the objects: a separable top-2 EDT keeps per voxel the two smallest
    (squared distance, object id) pairs with distinct ids through one brute-force pass per axis
    (chunked over lines). Keeping only the top-2 distinct pairs at each position is exact: if an
    object is among the final top-2 at x, it is among the top-2 at the y where its minimum over the
    line is reached. No host synchronisation.
    """
    if label.ndim < 3 or label.shape[1] != 1:
        raise ValueError(f"border_weight: label must be (B, 1, *S), got shape {tuple(label.shape)}")
    label = _int_label(label)[:, 0]
    components = connected_components(label > 0).to(torch.int32)
    values = torch.zeros(components.shape, dtype=torch.float32, device=label.device).masked_fill_(components < 0, math.inf)
    ids = components
    second = None
    for axis in range(label.ndim - 1, 0, -1):  # the last (contiguous) axis first
        length = label.shape[axis]
        v_lines, moved = _as_lines(values, axis)
        i_lines, _ = _as_lines(ids, axis)
        if second is not None:
            v_lines = torch.cat([v_lines, _as_lines(second[0], axis)[0]], 1)
            i_lines = torch.cat([i_lines, _as_lines(second[1], axis)[0]], 1)
        del values, ids, second
        out = (torch.empty(v_lines.shape[0], length, dtype=torch.float32, device=label.device),
               torch.empty(v_lines.shape[0], length, dtype=torch.int32, device=label.device),
               torch.empty(v_lines.shape[0], length, dtype=torch.float32, device=label.device),
               torch.empty(v_lines.shape[0], length, dtype=torch.int32, device=label.device))
        _top2_on_lines(v_lines, i_lines, length, out)
        del v_lines, i_lines
        values, ids = _from_lines(out[0], moved, axis), _from_lines(out[1], moved, axis)
        second = (_from_lines(out[2], moved, axis), _from_lines(out[3], moved, axis))
        del out
    total = values.sqrt() + second[0].sqrt()
    weight = float(w0) * torch.exp(-total.square() / (2 * float(sigma) ** 2))
    return torch.where(torch.isfinite(total), weight, 0.0).unsqueeze(1).contiguous()


# -- the map classes: one case (NumPy, SciPy) or a batch (torch) -----------------------------------
def _batch_label(label: Tensor, name: str) -> Tensor:
    if label.ndim < 3 or label.shape[1] != 1:
        raise ValueError(f"{name}: a tensor label must be a batch (B, 1, *S), got shape {tuple(label.shape)}")
    return label.as_subclass(Tensor) if type(label) is not Tensor else label


def _per_case(fn, label: Tensor, **kwargs) -> Tensor:
    """The NumPy map of each case of a CPU batch, stacked: (B, K, *S) float32 tensor."""
    cases = label.detach().numpy()
    if cases.dtype.kind == "f":
        cases = np.rint(cases)
    cases = cases.astype(np.int64)
    return torch.from_numpy(np.stack([fn(case, **kwargs) for case in cases]))


class SignedDistanceMaps:
    """Label map of ``boundary``: signed Euclidean distance to each foreground class, (K − 1, *S) float32.

    Channel ``c − 1`` holds class ``c``: ``EDT(outside) − EDT(inside)``, i.e. the distance to the
    nearest voxel of the class outside it and minus the distance to the nearest voxel of another
    class inside it (``scipy.ndimage.distance_transform_edt`` with ``sampling = spacing``), 0 where
    the class is absent from the case or fills it. ``num_classes`` (background included) fixes the
    number of channels so that every case of a dataset gets the same: the data pipeline passes the
    dataset's to each call (it wins over the constructor's); unknown, the classes up to the largest
    label of the case (at least 1) — of the batch for a tensor.

    Called with a NumPy case ``(1, *S)`` it returns a NumPy ``(K − 1, *S)`` array; with a tensor batch
    ``(B, 1, *S)`` a float32 tensor ``(B, K − 1, *S)`` on the label's device: SciPy per case on a CPU,
    ``signed_distance`` (torch, no host synchronisation when the class count is known) elsewhere.
    """

    def __init__(self, num_classes: int | None = None):
        self.num_classes = num_classes

    def __call__(self, label, spacing: Sequence[float] | None = None, num_classes: int | None = None):
        num_classes = num_classes or self.num_classes
        if torch.is_tensor(label):
            label = _batch_label(label, "SignedDistanceMaps")
            if label.device.type != "cpu":
                return signed_distance(label, num_classes, spacing)
            num_classes = num_classes or (max(2, int(label.max()) + 1) if label.numel() else 2)
            return _per_case(self._case, label, spacing=spacing, num_classes=num_classes)
        return self._case(label, spacing, num_classes)

    @staticmethod
    def _case(label: np.ndarray, spacing: Sequence[float] | None = None, num_classes: int | None = None) -> np.ndarray:
        from scipy import ndimage

        label = np.asarray(label)[0]
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

    Called with a NumPy case ``(1, *S)`` it returns a NumPy ``(1, *S)`` array; with a tensor batch
    ``(B, 1, *S)`` a float32 tensor ``(B, 1, *S)`` on the label's device: SciPy per case on a CPU,
    ``border_weight`` (torch, exact top-2 EDT over the whole volume, no host synchronisation) elsewhere.
    """

    TOLERANCE = 1e-6  # relative size of the term where the distances stop being computed

    def __init__(self, w0: float, sigma: float):
        self.w0, self.sigma = float(w0), float(sigma)

    def __call__(self, label, spacing: Sequence[float] | None = None, num_classes: int | None = None):
        if torch.is_tensor(label):
            label = _batch_label(label, "BorderWeightMap")
            if label.device.type != "cpu":
                return border_weight(label, self.w0, self.sigma)
            return _per_case(self._case, label)
        return self._case(label)

    def _case(self, label: np.ndarray) -> np.ndarray:
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
