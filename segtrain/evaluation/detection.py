"""Lesion-level counts for tiny targets: connected components found, missed and invented.

A voxel Dice of 0.8 can hide a missed 5-voxel lesion next to a well-segmented large one; these
counts do not. For one class, the lesions are the connected components of the true mask ``T``
and of the predicted mask ``P`` (``connectivity``: ``full`` joins voxels that share a corner, 26
neighbours in 3D and 8 in 2D; ``face`` only those sharing a face, 6 and 4).

The overlap rule (docs/evaluation.md#lesions), with ``overlap`` in [0, 1]:

- a true lesion ``L`` is **found** when ``|L ∩ P| > 0`` and ``|L ∩ P| / |L| >= overlap``; else it is
  **missed**;
- a predicted lesion ``M`` is **false** when ``|M ∩ T| = 0`` or ``|M ∩ T| / |M| < overlap``.

With the default ``overlap = 0`` a single shared voxel matches (the "hit" criterion common in
lesion detection). One predicted blob covering two true lesions finds both; two predicted blobs on
one lesion are both true. Recall = found / true lesions; precision = (predicted - false) / predicted.
"""

from __future__ import annotations

import numpy as np

COUNTS = ("lesions_true", "lesions_found", "lesions_missed", "lesions_pred", "lesions_false")


def bounding_box(mask: np.ndarray, margin: int = 0) -> tuple[slice, ...]:
    """The smallest box around ``mask``'s voxels (``mask`` not empty), ``margin`` voxels wider where the grid allows."""
    box = []
    for axis in range(mask.ndim):
        present = np.flatnonzero(mask.any(axis=tuple(a for a in range(mask.ndim) if a != axis)))
        box.append(slice(max(int(present[0]) - margin, 0), min(int(present[-1]) + 1 + margin, mask.shape[axis])))
    return tuple(box)


def _components(mask: np.ndarray, connectivity: str) -> tuple[np.ndarray, int]:
    from scipy import ndimage

    structure = ndimage.generate_binary_structure(mask.ndim, mask.ndim if connectivity == "full" else 1)
    labels, count = ndimage.label(mask, structure=structure)
    return labels, int(count)


def _matched(labels: np.ndarray, count: int, other: np.ndarray, overlap: float) -> int:
    """How many of the ``count`` components in ``labels`` the mask ``other`` covers by the overlap rule."""
    if count == 0:
        return 0
    sizes = np.bincount(labels.ravel(), minlength=count + 1)[1:]
    shared = np.bincount(labels[other].ravel(), minlength=count + 1)[1:]
    return int(np.count_nonzero((shared > 0) & (shared >= overlap * sizes)))


def count_lesions(pred: np.ndarray, truth: np.ndarray, overlap: float = 0.0, connectivity: str = "full") -> dict[str, int]:
    """Counts of true, found, missed, predicted and false lesions for two binary masks of one shape."""
    if not pred.any() and not truth.any():
        return dict.fromkeys(COUNTS, 0)
    box = bounding_box(pred | truth)  # every component lies inside
    pred, truth = pred[box], truth[box]
    true_labels, n_true = _components(truth, connectivity)
    pred_labels, n_pred = _components(pred, connectivity)
    found = _matched(true_labels, n_true, pred, overlap)
    correct = _matched(pred_labels, n_pred, truth, overlap)
    return {"lesions_true": n_true, "lesions_found": found, "lesions_missed": n_true - found,
            "lesions_pred": n_pred, "lesions_false": n_pred - correct}
