"""The loss registry: values worked out by hand, an independent float64 reference for every loss,
identities between losses, cross-checks against MONAI, and eager errors.

Conventions under test are those of ../shared/LOSSES.md.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from scipy import ndimage

from segtrain.losses import available_losses, build_loss

# MONAI warns that include_background is ignored for one channel: that is the convention under test.
pytestmark = pytest.mark.filterwarnings("ignore:single channel prediction")

ALL_LOSSES = [
    "balanced_ce", "boundary", "ce", "combo", "conservative", "dice", "dice_ce", "dice_focal",
    "distance_weighted_ce", "exp_log", "focal", "focal_tversky", "generalized_dice", "iou", "lovasz",
    "sensitivity_specificity", "tversky", "wce",
]


def test_the_registry_holds_the_whole_catalogue():
    assert available_losses() == sorted(ALL_LOSSES)


# =============================================================================================
# 1. Values worked out by hand: four voxels, probabilities 0.75 / 0.5 / 0.25 / 0.5, one lesion voxel.
# =============================================================================================
LN3 = math.log(3.0)
X = [LN3, 0.0, -LN3, 0.0]  # sigmoid: p = 0.75, 0.5, 0.25, 0.5
G = [1, 0, 0, 0]
# p_t (probability of the true class): 0.75, 0.5, 0.75, 0.5 → −log p_t = a, b, a, b
A, B = -math.log(0.75), -math.log(0.5)
CE = (2 * A + 2 * B) / 4
# Foreground statistics: TP = 0.75, Σp = 2, Σg = 1, FP = 1.25, FN = 0.25
DICE = 1 - (2 * 0.75 + 1) / (2 + 1 + 1)  # 0.375
IOU = 1 - (0.75 + 1) / (2 + 1 - 0.75 + 1)
TVERSKY = 1 - (0.75 + 1) / (0.75 + 0.3 * 1.25 + 0.7 * 0.25 + 1)
FOCAL = (0.25 * 0.25**2 * A + 0.75 * 0.5**2 * B + 0.75 * 0.25**2 * A + 0.75 * 0.5**2 * B) / 4  # alpha .25, gamma 2
FOCAL_PLAIN = (0.25**2 * A + 0.5**2 * B + 0.25**2 * A + 0.5**2 * B) / 4  # alpha null, gamma 2
BCE_07 = (0.7 * A + 0.3 * (B + A + B)) / 4  # positives ×0.7, negatives ×0.3: −log(1 − p) = b, a, b
BCE_05 = (0.5 * A + 0.5 * (B + A + B)) / 4
# Boundary term: φ = −1 on the lesion, 1, 1, √2 around it → mean φ·p = (−0.75 + 0.5 + 0.25 + √2·0.5) / 4
PHI_P = (-0.75 + 0.5 + 0.25 + math.sqrt(2) * 0.5) / 4
# Generalized Dice with the background (C >= 2): w0 = 1/9 (3 voxels), w1 = 1; TP0 = 1.75, Σp0 + Σg0 = 5
GDL_BG = 1 - (2 * (1.75 / 9 + 0.75) + 1e-5) / (5 / 9 + 3 + 1e-5)
GDL_FG = 1 - (2 * 0.75 + 1e-5) / (2 + 1 + 1e-5)  # one class: w = 1
EXP_LOG_CROSS = (2 * A**0.3 + math.sqrt(4 / 3) * (B**0.3 + A**0.3 + B**0.3)) / 4  # w1 = √(4/1), w0 = √(4/3)
EXP_LOG_DICE = (-math.log(1 - DICE)) ** 0.3
CONSERVATIVE = sum(5 * (1 + math.log(p)) ** 2 * math.log(-math.log(p)) for p in (0.75, 0.5, 0.75, 0.5)) / 4
DWCE = (2 * A + (2 / 3) * (B + A + B)) / 4  # one object: no border term; w1 = 4 / (2·1), w0 = 4 / (2·3)

# name, params, expected value for C = 1, 2, 3 (C = 3 adds an empty class 2 with p = 0: its region
# term is 1 − s/s = 0, which halves the mean over the two foreground classes; pixel terms do not change).
HAND = [
    ("dice", {}, (DICE, DICE, DICE / 2)),
    ("dice", {"squared": True}, (1 - 2.5 / (1.125 + 1 + 1),) * 2 + ((1 - 2.5 / 3.125) / 2,)),  # Σp² = 1.125
    ("iou", {}, (IOU, IOU, IOU / 2)),
    ("tversky", {}, (TVERSKY, TVERSKY, TVERSKY / 2)),
    ("focal_tversky", {}, (TVERSKY**0.75, TVERSKY**0.75, TVERSKY**0.75 / 2)),
    # foreground: (1 − .75)² / 1; background: (.5² + .25² + .5²) / 3
    ("sensitivity_specificity", {}, (0.05 * 0.0625 + 0.95 * 0.5625 / 3,) * 2 + ((0.05 * 0.0625 + 0.95 * 0.1875) / 2,)),
    # an absent class takes the largest weight but adds 0 to both sums
    ("generalized_dice", {}, (GDL_FG, GDL_BG, GDL_BG)),
    ("ce", {}, (CE, CE, CE)),
    ("ce", {"class_weights": None}, (CE, CE, CE)),
    ("wce", {}, ((3 * A + B + A + B) / 4,) * 3),  # auto: w1 = (4 − 1) / 1 = 3, w0 = 1
    ("wce", {"max_weight": 2.0}, ((2 * A + B + A + B) / 4,) * 3),
    ("balanced_ce", {}, (BCE_07, BCE_07, BCE_07 / 2)),
    ("balanced_ce", {"beta": "auto"}, ((0.75 * A + 0.25 * (B + A + B)) / 4,) * 2 + ((1 - 1 / 8) * A / 8 + (1 / 8) * (B + A + B) / 8,)),
    ("distance_weighted_ce", {}, (DWCE, DWCE, DWCE)),
    ("focal", {}, (FOCAL, FOCAL, FOCAL)),
    ("focal", {"alpha": None, "gamma": 0.0}, (CE, CE, CE)),
    ("conservative", {}, (CONSERVATIVE,) * 3),
    ("dice_ce", {}, (CE + DICE, CE + DICE, CE + DICE / 2)),
    ("dice_focal", {}, (DICE + FOCAL_PLAIN, DICE + FOCAL_PLAIN, DICE / 2 + FOCAL_PLAIN)),
    ("combo", {}, (0.5 * BCE_05 + 0.5 * DICE,) * 2 + (0.5 * BCE_05 / 2 + 0.5 * DICE / 2,)),
    ("exp_log", {}, (0.8 * EXP_LOG_DICE + 0.2 * EXP_LOG_CROSS,) * 2 + (0.8 * EXP_LOG_DICE / 2 + 0.2 * EXP_LOG_CROSS,)),
    # C = 1, Lovász hinge: errors 1 − x·(2g − 1) = −0.099, 1, −0.099, 1; the two 1's (background) come
    # first, with Jaccard-loss increments 1/2 (|M|/|G ∪ M| = 1/2) and 2/3 − 1/2.
    # C >= 2, Lovász-softmax over the present classes 0 and 1: both give 5/12 (errors .25 .5 .25 .5).
    ("lovasz", {}, (0.5 + 1 / 6, 5 / 12, 5 / 12)),
    ("boundary", {}, (GDL_FG, GDL_BG, GDL_BG)),
    ("boundary", {"alpha": 0.5}, (0.5 * GDL_FG + 0.5 * PHI_P, 0.5 * GDL_BG + 0.5 * PHI_P, 0.5 * GDL_BG + 0.5 * PHI_P)),
]


def hand_inputs(channels: int, dims: int):
    """The four voxels as (1, C, 2, 2) or (1, C, 1, 2, 2); C >= 2 uses logits (0, x, [-1e4])."""
    x = torch.tensor(X).reshape(2, 2)
    if channels == 1:
        logits = x[None]
    else:
        logits = torch.stack([torch.zeros(2, 2), x] + [torch.full((2, 2), -1e4)] * (channels - 2))
    target = torch.tensor(G).reshape(1, 2, 2)
    if dims == 3:
        logits, target = logits[:, None], target[:, None]
    return logits[None].float(), target[None]


def test_every_loss_has_a_hand_computed_value():
    assert {name for name, _, _ in HAND} == set(ALL_LOSSES)


@pytest.mark.parametrize("dims", [2, 3])
@pytest.mark.parametrize("channels", [1, 2, 3])
@pytest.mark.parametrize("name, params, expected", HAND, ids=[f"{n}-{'-'.join(map(str, p.values())) or 'default'}" for n, p, _ in HAND])
def test_hand_computed_values(name, params, expected, channels, dims):
    logits, target = hand_inputs(channels, dims)
    value = build_loss(name, **params)(logits, target)
    assert value.dtype == torch.float32 and value.ndim == 0
    assert float(value) == pytest.approx(expected[channels - 1], rel=1e-5, abs=1e-6)


def test_distance_weighted_ce_border_term_by_hand():
    """Two one-voxel objects at the ends of a 1×5 row: d1 + d2 = 4 at every voxel (σ = 2: exp(−2))."""
    target = torch.tensor([[[[1, 0, 0, 0, 1]]]])
    logits = torch.zeros(1, 1, 1, 5)  # p_t = 0.5 everywhere
    # class balance: w1 = 5 / (2·2), w0 = 5 / (2·3): its mean is 1
    expected = math.log(2) * (1 + 10 * math.exp(-(4**2) / (2 * 2**2)))
    assert float(build_loss("distance_weighted_ce", sigma=2.0)(logits, target)) == pytest.approx(expected, rel=1e-5)


# =============================================================================================
# 2. An independent float64 reference of every formula of LOSSES.md, on random tiny tensors.
# =============================================================================================
def ref_log_probs(x: np.ndarray) -> np.ndarray:
    if x.shape[1] == 1:
        return np.concatenate([-np.logaddexp(0, x), -np.logaddexp(0, -x)], axis=1)
    m = x.max(1, keepdims=True)
    return x - m - np.log(np.exp(x - m).sum(1, keepdims=True))


def ref_onehot(t: np.ndarray, k: int) -> np.ndarray:
    return np.concatenate([(t == c).astype(np.float64) for c in range(k)], axis=1)


def ref_kept(channels: int, include_background: bool) -> list[int]:
    return [1] if channels == 1 else list(range(0 if include_background else 1, channels))


def ref_region(x, t, per_class, include_background=False, batch=False):
    """Mean of per_class(p, g) (flat arrays) over kept classes and samples (or the whole batch)."""
    p, g = np.exp(ref_log_probs(x)), ref_onehot(t, max(x.shape[1], 2))
    groups = [slice(None)] if batch else [slice(b, b + 1) for b in range(x.shape[0])]
    return np.mean([per_class(p[s, c].ravel(), g[s, c].ravel()) for s in groups for c in ref_kept(x.shape[1], include_background)])


def ref_dice(x, t, smooth=1.0, squared=False, include_background=False, batch=False):
    k = 2 if squared else 1
    return ref_region(x, t, lambda p, g: 1 - (2 * (p * g).sum() + smooth) / ((p**k).sum() + g.sum() + smooth), include_background, batch)


def ref_iou(x, t, smooth=1.0, include_background=False, batch=False):
    return ref_region(x, t, lambda p, g: 1 - ((p * g).sum() + smooth) / (p.sum() + g.sum() - (p * g).sum() + smooth), include_background, batch)


def ref_tversky_index(p, g, alpha, beta, smooth):
    tp, fp, fn = (p * g).sum(), (p * (1 - g)).sum(), ((1 - p) * g).sum()
    return (tp + smooth) / (tp + alpha * fp + beta * fn + smooth)


def ref_tversky(x, t, alpha=0.3, beta=None, smooth=1.0, include_background=False, batch=False):
    beta = 1 - alpha if beta is None else beta
    return ref_region(x, t, lambda p, g: 1 - ref_tversky_index(p, g, alpha, beta, smooth), include_background, batch)


def ref_focal_tversky(x, t, alpha=0.3, beta=None, gamma=0.75, smooth=1.0, include_background=False, batch=False):
    beta = 1 - alpha if beta is None else beta
    return ref_region(x, t, lambda p, g: (1 - ref_tversky_index(p, g, alpha, beta, smooth)) ** gamma, include_background, batch)


def ref_sensitivity_specificity(x, t, sensitivity_weight=0.05, smooth=1e-5, include_background=False, batch=False):
    w = sensitivity_weight

    def value(p, g):
        return w * ((g - p) ** 2 * g).sum() / (g.sum() + smooth) + (1 - w) * ((g - p) ** 2 * (1 - g)).sum() / ((1 - g).sum() + smooth)

    return ref_region(x, t, value, include_background, batch)


def ref_generalized_dice(x, t, smooth=1e-5, include_background=True, batch=False):
    p, g = np.exp(ref_log_probs(x)), ref_onehot(t, max(x.shape[1], 2))
    kept = ref_kept(x.shape[1], include_background)
    groups = [slice(None)] if batch else [slice(b, b + 1) for b in range(x.shape[0])]
    values = []
    for s in groups:
        sum_g = np.array([g[s, c].sum() for c in kept])
        w = np.array([1 / v**2 if v > 0 else 0.0 for v in sum_g])
        w[sum_g == 0] = w.max()
        tp = np.array([(p[s, c] * g[s, c]).sum() for c in kept])
        sums = np.array([p[s, c].sum() + g[s, c].sum() for c in kept])
        values.append(1 - (2 * (w * tp).sum() + smooth) / ((w * sums).sum() + smooth))
    return np.mean(values)


def ref_nll(x, t):
    return -np.take_along_axis(ref_log_probs(x), t, axis=1)


def ref_ce(x, t, class_weights=None):
    nll = ref_nll(x, t)
    if class_weights is None:
        return nll.mean()
    w = np.asarray(class_weights)[t]
    return (w * nll).sum() / w.sum()


def ref_wce(x, t, weights="auto", max_weight=1000.0):
    k = max(x.shape[1], 2)
    if weights == "auto":
        n = t.size
        weights = [1.0] + [min((n - (t == c).sum()) / (t == c).sum(), max_weight) if (t == c).any() else 0.0 for c in range(1, k)]
    return (np.asarray(weights)[t] * ref_nll(x, t)).sum() / t.size


def ref_balanced_ce(x, t, beta=0.7, include_background=False):
    logp = ref_log_probs(x)
    p, k = np.exp(logp), max(x.shape[1], 2)
    g = ref_onehot(t, k)
    kept = ref_kept(x.shape[1], include_background)
    if beta == "auto":
        beta = 1 - g[:, kept].sum() / g[:, kept].size
    terms = [beta * g[:, c] * logp[:, c] + (1 - beta) * (1 - g[:, c]) * np.log(p.sum(1) - p[:, c]) for c in kept]
    return -np.mean(terms)


def ref_border_term(label: np.ndarray, w0: float, sigma: float) -> np.ndarray:
    """Brute force: distance from every voxel to every object, the two smallest per voxel."""
    components, count = ndimage.label(label > 0)
    if count < 2:
        return np.zeros(label.shape)
    coords = np.stack(np.meshgrid(*[np.arange(n) for n in label.shape], indexing="ij"), -1).reshape(-1, label.ndim)
    dist = np.stack([
        np.sqrt(((coords[:, None, :] - coords[components.ravel() == k][None]) ** 2).sum(-1)).min(1) for k in range(1, count + 1)
    ])
    d = np.sort(dist, axis=0)
    return (w0 * np.exp(-((d[0] + d[1]) ** 2) / (2 * sigma**2))).reshape(label.shape)


def ref_distance_weighted_ce(x, t, w0=10.0, sigma=5.0):
    border = np.stack([ref_border_term(t[b, 0], w0, sigma) for b in range(t.shape[0])])[:, None]
    k = max(x.shape[1], 2)
    counts = np.array([(t == c).sum() for c in range(k)])
    present = (counts > 0).sum()
    balance = np.array([t.size / (present * n) if n else 0.0 for n in counts])
    return ((balance[t] + border) * ref_nll(x, t)).mean()


def ref_focal(x, t, alpha=0.25, gamma=2.0):
    nll = ref_nll(x, t)
    alpha_t = 1.0 if alpha is None else np.where(t > 0, alpha, 1 - alpha)
    return (alpha_t * (1 - np.exp(-nll)) ** gamma * nll).mean()


def ref_conservative(x, t, lam=5.0, base="e"):
    a = math.e if base == "e" else base
    p = np.clip(np.exp(-ref_nll(x, t)), 1e-6, 1 - 1e-6)
    log_a = np.log(p) / np.log(a)
    return (lam * (1 + log_a) ** 2 * np.log(-log_a) / np.log(a)).mean()


def ref_dice_ce(x, t, ce_weight=1.0, dice_weight=1.0, smooth=1.0, include_background=False):
    return ce_weight * ref_ce(x, t) + dice_weight * ref_dice(x, t, smooth, include_background=include_background)


def ref_dice_focal(x, t, focal_weight=1.0, gamma=2.0, alpha=None, smooth=1.0, include_background=False):
    return ref_dice(x, t, smooth, include_background=include_background) + focal_weight * ref_focal(x, t, alpha, gamma)


def ref_combo(x, t, alpha=0.5, beta=0.5, smooth=1.0, include_background=False):
    return alpha * ref_balanced_ce(x, t, beta, include_background) + (1 - alpha) * ref_dice(x, t, smooth, include_background=include_background)


def ref_exp_log(x, t, w_dice=0.8, w_cross=0.2, gamma_dice=0.3, gamma_cross=0.3, smooth=1.0, include_background=False):
    k = max(x.shape[1], 2)
    f = np.array([(t == c).sum() for c in range(k)], dtype=np.float64)
    w = np.array([math.sqrt(f.sum() / v) if v else 0.0 for v in f])
    cross = (w[t] * ref_nll(x, t) ** gamma_cross).mean()

    def log_dice(p, g):
        return (-math.log((2 * (p * g).sum() + smooth) / (p.sum() + g.sum() + smooth))) ** gamma_dice

    return w_dice * ref_region(x, t, log_dice, include_background) + w_cross * cross


def ref_lovasz_extension(errors: np.ndarray, truth: np.ndarray) -> float:
    """Σ_i e_(i)·(Δ(M_i) − Δ(M_{i−1})), Δ(M) = |M| / |G ∪ M| the Jaccard loss of mispredicted set M."""
    order = np.argsort(-errors, kind="stable")
    total, previous, in_union = 0.0, 0.0, truth.sum()
    for i, j in enumerate(order, start=1):
        in_union += 0 if truth[j] else 1
        delta = i / in_union
        total += errors[j] * (delta - previous)
        previous = delta
    return total


def ref_lovasz(x, t, per_image=False):
    groups = [slice(b, b + 1) for b in range(x.shape[0])] if per_image else [slice(None)]
    values = []
    for s in groups:
        labels = t[s].ravel()
        if x.shape[1] == 1:
            logits = x[s].ravel()
            values.append(ref_lovasz_extension(np.maximum(1 - logits * (2 * labels - 1), 0), labels == 1))
            continue
        p = np.exp(ref_log_probs(x[s]))
        per_class = [
            ref_lovasz_extension(np.abs((labels == c) - np.moveaxis(p, 1, 0)[c].ravel()), labels == c)
            for c in range(x.shape[1])
            if (labels == c).any()
        ]
        values.append(np.mean(per_class))
    return np.mean(values)


def ref_signed_distance(label: np.ndarray, c: int) -> np.ndarray:
    """Brute force: + distance to class c outside it, − distance to the other voxels inside, 0 if absent/full."""
    mask = (label == c).ravel()
    if not mask.any() or mask.all():
        return np.zeros(label.shape)
    coords = np.stack(np.meshgrid(*[np.arange(n) for n in label.shape], indexing="ij"), -1).reshape(-1, label.ndim)
    dist = np.sqrt(((coords[:, None, :] - coords[None]) ** 2).sum(-1))
    outside = np.where(mask[None], dist, np.inf).min(1)
    inside = np.where(~mask[None], dist, np.inf).min(1)
    return np.where(mask, -inside, outside).reshape(label.shape)


def ref_boundary(x, t, alpha=1.0, alpha_step=0.01, alpha_min=0.01):
    p = np.exp(ref_log_probs(x))
    term = np.mean([
        sum(ref_signed_distance(t[b, 0], c) * p[b, c] for c in range(1, max(x.shape[1], 2))) for b in range(x.shape[0])
    ])
    return alpha * ref_generalized_dice(x, t) + (1 - alpha) * term


REFERENCE = {name: globals()[f"ref_{name}"] for name in ALL_LOSSES}

# name, params (a callable of K = max(C, 2) where the value depends on the classes)
REFERENCE_CASES = [
    ("dice", {}),
    ("dice", {"squared": True, "include_background": True}),
    ("dice", {"batch": True, "smooth": 0.5}),
    ("iou", {}),
    ("iou", {"include_background": True, "batch": True}),
    ("tversky", {"alpha": 0.7}),
    ("tversky", {"alpha": 0.2, "beta": 0.9, "batch": True}),
    ("focal_tversky", {}),
    ("focal_tversky", {"gamma": 1.5, "include_background": True}),
    ("sensitivity_specificity", {}),
    ("sensitivity_specificity", {"sensitivity_weight": 0.5, "include_background": True, "batch": True}),
    ("generalized_dice", {}),
    ("generalized_dice", {"include_background": False}),
    ("generalized_dice", {"batch": True}),
    ("ce", {}),
    ("ce", lambda k: {"class_weights": [0.5 + i for i in range(k)]}),
    ("wce", {}),
    ("wce", {"max_weight": 2.0}),
    ("wce", lambda k: {"weights": [1.0] + [3.0] * (k - 1)}),
    ("balanced_ce", {}),
    ("balanced_ce", {"beta": "auto", "include_background": True}),
    ("distance_weighted_ce", {}),
    ("distance_weighted_ce", {"w0": 5.0, "sigma": 1.0}),
    ("focal", {}),
    ("focal", {"alpha": None, "gamma": 0.5}),
    ("conservative", {}),
    ("conservative", {"lam": 2.0, "base": 2.0}),
    ("dice_ce", {}),
    ("dice_ce", {"ce_weight": 0.3, "dice_weight": 2.0, "include_background": True}),
    ("dice_focal", {}),
    ("dice_focal", {"alpha": 0.25, "gamma": 1.0, "focal_weight": 0.5}),
    ("combo", {}),
    ("combo", {"alpha": 0.3, "beta": 0.8}),
    ("exp_log", {}),
    ("exp_log", {"gamma_dice": 1.0, "gamma_cross": 0.5, "include_background": True}),
    ("lovasz", {}),
    ("lovasz", {"per_image": True}),
    ("boundary", {}),
    ("boundary", {"alpha": 0.4}),
]
SHAPES = {2: (5, 6), 3: (3, 4, 5)}


def random_case(channels: int, dims: int, seed: int = 0):
    """Logits ~ N(0, 2²) and labels in [0, K); sample 1 lacks the last class (C = 1: it is empty)."""
    rng = np.random.default_rng(seed + 10 * channels + dims)
    k = max(channels, 2)
    x = rng.normal(0.0, 2.0, (2, channels, *SHAPES[dims])).astype(np.float32)
    t = rng.integers(0, k, (2, 1, *SHAPES[dims]))
    t[1][t[1] == k - 1] = 0
    return x, t


def test_every_loss_has_reference_cases():
    assert {name for name, _ in REFERENCE_CASES} == set(ALL_LOSSES)


@pytest.mark.parametrize("dims", [2, 3])
@pytest.mark.parametrize("channels", [1, 2, 3])
@pytest.mark.parametrize("name, params", REFERENCE_CASES, ids=[f"{n}{i}" for i, (n, _) in enumerate(REFERENCE_CASES)])
def test_matches_the_float64_reference(name, params, channels, dims):
    x, t = random_case(channels, dims)
    params = params(max(channels, 2)) if callable(params) else params
    expected = REFERENCE[name](x.astype(np.float64), t, **params)
    value = build_loss(name, **params)(torch.from_numpy(x), torch.from_numpy(t))
    assert float(value) == pytest.approx(float(expected), rel=1e-5, abs=1e-6)


# =============================================================================================
# 3. Identities between losses (values and gradients).
# =============================================================================================
def value_and_grad(loss, logits, target):
    x = logits.clone().requires_grad_(True)
    value = loss(x, target)
    (grad,) = torch.autograd.grad(value, x)
    return value.detach(), grad


IDENTITIES = [
    # Tversky(½, ½) is Dice with twice the smoothing: (TP + s) / (TP + ½FP + ½FN + s) = (2TP + 2s) / (2TP + FP + FN + 2s)
    (("tversky", {"alpha": 0.5, "beta": 0.5, "smooth": 1.0}), [(1.0, "dice", {"smooth": 2.0})]),
    (("tversky", {"alpha": 0.5, "beta": 0.5, "smooth": 0.0}), [(1.0, "dice", {"smooth": 0.0})]),
    (("tversky", {"alpha": 1.0, "beta": 1.0, "include_background": True}), [(1.0, "iou", {"include_background": True})]),
    (("focal_tversky", {"gamma": 1.0, "alpha": 0.6}), [(1.0, "tversky", {"alpha": 0.6})]),
    (("focal", {"gamma": 0.0, "alpha": None}), [(1.0, "ce", {})]),
    (("dice_ce", {}), [(1.0, "ce", {}), (1.0, "dice", {})]),
    (("dice_ce", {"ce_weight": 0.4, "dice_weight": 1.5, "smooth": 0.1}), [(0.4, "ce", {}), (1.5, "dice", {"smooth": 0.1})]),
    (("combo", {"alpha": 0.3, "beta": 0.8}), [(0.3, "balanced_ce", {"beta": 0.8}), (0.7, "dice", {})]),
    (("dice_focal", {"focal_weight": 0.5, "gamma": 1.5, "alpha": 0.4}), [(1.0, "dice", {}), (0.5, "focal", {"gamma": 1.5, "alpha": 0.4})]),
    (("boundary", {"alpha": 1.0}), [(1.0, "generalized_dice", {})]),
    (("wce", lambda k: {"weights": [1.0] * k}), [(1.0, "ce", {})]),
]


@pytest.mark.parametrize("dims", [2, 3])
@pytest.mark.parametrize("channels", [1, 2, 3])
@pytest.mark.parametrize("left, right", IDENTITIES, ids=[f"{l[0]}={'+'.join(r[1] for r in rs)}{i}" for i, (l, rs) in enumerate(IDENTITIES)])
def test_identities(left, right, channels, dims):
    x, t = random_case(channels, dims, seed=1)
    logits, target = torch.from_numpy(x), torch.from_numpy(t)
    name, params = left
    params = params(max(channels, 2)) if callable(params) else params
    value, grad = value_and_grad(build_loss(name, **params), logits, target)
    parts = [value_and_grad(build_loss(n, **p), logits, target) for _, n, p in right]
    expected_value = sum(w * v for (w, _, _), (v, _) in zip(right, parts))
    expected_grad = sum(w * g for (w, _, _), (_, g) in zip(right, parts))
    torch.testing.assert_close(value, expected_value, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(grad, expected_grad, rtol=1e-4, atol=1e-7)


# =============================================================================================
# 4. MONAI, where it has the same loss with matching settings: equal within 1e-5 (value and gradient).
# =============================================================================================
monai_losses = pytest.importorskip("monai.losses")


def monai_activation(channels: int) -> dict:
    return {"sigmoid": True} if channels == 1 else {"softmax": True, "to_onehot_y": True}


def monai_target(target: torch.Tensor, channels: int) -> torch.Tensor:
    return target.float() if channels == 1 else target  # MONAI's sigmoid path wants a float 0/1 map


MONAI_CASES = []
for _squared in (False, True):
    for _batch in (False, True):
        for _background in (False, True):
            MONAI_CASES.append((
                ("dice", {"squared": _squared, "batch": _batch, "include_background": _background, "smooth": 1.0}),
                lambda c, s=_squared, b=_batch, bg=_background: monai_losses.DiceLoss(
                    include_background=bg, squared_pred=s, batch=b, smooth_nr=1.0, smooth_dr=1.0, **monai_activation(c)),
            ))
MONAI_CASES += [
    # MONAI's Jaccard form is (2TP + s) / (2(TP + FP + FN) + s): our IoU with smoothing s is MONAI's with 2s.
    (("iou", {"smooth": 1.0}), lambda c: monai_losses.DiceLoss(include_background=False, jaccard=True, smooth_nr=2.0, smooth_dr=2.0, **monai_activation(c))),
    (("tversky", {}), lambda c: monai_losses.TverskyLoss(include_background=False, alpha=0.3, beta=0.7, smooth_nr=1.0, smooth_dr=1.0, **monai_activation(c))),
    (("tversky", {"alpha": 0.8, "beta": 0.4, "batch": True, "include_background": True, "smooth": 0.5}),
     lambda c: monai_losses.TverskyLoss(include_background=True, alpha=0.8, beta=0.4, batch=True, smooth_nr=0.5, smooth_dr=0.5, **monai_activation(c))),
    (("generalized_dice", {}), lambda c: monai_losses.GeneralizedDiceLoss(include_background=True, **monai_activation(c))),
    (("generalized_dice", {"include_background": False, "batch": True}),
     lambda c: monai_losses.GeneralizedDiceLoss(include_background=False, batch=True, **monai_activation(c))),
    (("dice_ce", {}), lambda c: monai_losses.DiceCELoss(include_background=False, smooth_nr=1.0, smooth_dr=1.0, **monai_activation(c))),
    (("dice_ce", {"ce_weight": 0.3, "dice_weight": 2.0, "include_background": True, "smooth": 0.1}),
     lambda c: monai_losses.DiceCELoss(include_background=True, lambda_ce=0.3, lambda_dice=2.0, smooth_nr=0.1, smooth_dr=0.1, **monai_activation(c))),
]


@pytest.mark.parametrize("dims", [2, 3])
@pytest.mark.parametrize("channels", [1, 2, 3])
@pytest.mark.parametrize("ours, theirs", MONAI_CASES, ids=[f"{o[0]}{i}" for i, (o, _) in enumerate(MONAI_CASES)])
def test_equals_monai(ours, theirs, channels, dims):
    x, t = random_case(channels, dims, seed=2)
    logits, target = torch.from_numpy(x), torch.from_numpy(t)
    value, grad = value_and_grad(build_loss(ours[0], **ours[1]), logits, target)
    expected, expected_grad = value_and_grad(lambda a, b: theirs(channels)(a, monai_target(b, channels)), logits, target)
    torch.testing.assert_close(value, expected, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(grad, expected_grad, rtol=1e-4, atol=1e-5)


def test_generalized_dice_with_a_tiny_smooth_and_no_kept_class_is_monais_zero():
    """MONAI's own case (tests/test_generalized_dice_loss.py): include_background=False, smooth 1e-8 for numerator
    and denominator, no foreground in the target: the loss is 0 (s / s). A floor at EPS used to make it 0.9."""
    from monai.losses import GeneralizedDiceLoss as MonaiGDL

    probs = torch.tensor([[[1.0, 1.0, 0.0], [0.0, 0.0, 1.0]], [[1.0, 0.0, 1.0], [0.0, 1.0, 0.0]]])
    target = torch.zeros(2, 1, 3, dtype=torch.long)
    theirs = MonaiGDL(include_background=False, to_onehot_y=True, smooth_nr=1e-8, smooth_dr=1e-8)(probs, target)
    ours = build_loss("generalized_dice", include_background=False, smooth=1e-8)(torch.log(probs.clamp_min(1e-6))[..., None], target[..., None])
    assert float(theirs) == pytest.approx(0.0, abs=1e-6) and float(ours) == pytest.approx(0.0, abs=1e-6)


@pytest.mark.parametrize("name", ["dice", "iou", "tversky", "generalized_dice"])
@pytest.mark.parametrize("smooth", [1e-12, 1e-8, 1e-3])
def test_a_class_empty_in_prediction_and_label_scores_one_whatever_the_smooth(name, smooth):
    """Every overlap index of an empty class is s / s = 1 (loss 0) for any smooth > 0, however far below EPS;
    with smooth = 0 it stays finite (0 / EPS)."""
    logits = torch.full((1, 2, 4, 4), -80.0)
    logits[:, 0] = 80.0  # background everywhere: the foreground probability underflows to exactly 0
    target = torch.zeros(1, 1, 4, 4, dtype=torch.long)
    params = {"include_background": False, **({"alpha": 0.5} if name == "tversky" else {})}
    assert float(build_loss(name, smooth=smooth, **params)(logits, target)) == pytest.approx(0.0, abs=1e-6)
    assert math.isfinite(float(build_loss(name, smooth=0.0, **({"alpha": 0.5} if name == "tversky" else {}),
                                          include_background=False)(logits, target)))


@pytest.mark.parametrize("dims", [2, 3])
@pytest.mark.parametrize("channels", [1, 2, 3])
@pytest.mark.parametrize("alpha, gamma", [(0.25, 2.0), (None, 1.0), (0.6, 0.0)])
def test_focal_equals_monai(alpha, gamma, channels, dims):
    """MONAI's FocalLoss averages over the class axis too: with C >= 2 (softmax, the background
    included, its scalar alpha giving 1 − alpha to class 0 and alpha to the others, as ours) its
    mean is ours / C. With one channel (sigmoid) the two are equal."""
    x, t = random_case(channels, dims, seed=3)
    logits, target = torch.from_numpy(x), torch.from_numpy(t)
    value, grad = value_and_grad(build_loss("focal", alpha=alpha, gamma=gamma), logits, target)
    theirs = monai_losses.FocalLoss(include_background=True, gamma=gamma, alpha=alpha, use_softmax=channels > 1, to_onehot_y=channels > 1)
    expected, expected_grad = value_and_grad(lambda a, b: channels * theirs(a, monai_target(b, channels)) if channels > 1 else theirs(a, b.float()), logits, target)
    torch.testing.assert_close(value, expected, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(grad, expected_grad, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("dims", [2, 3])
@pytest.mark.parametrize("channels", [1, 2, 3])
@pytest.mark.parametrize("alpha, gamma, focal_weight", [(None, 2.0, 1.0), (0.25, 1.5, 0.5)])
def test_dice_focal_equals_monai(alpha, gamma, focal_weight, channels, dims):
    """With one channel ours equals MONAI's DiceFocalLoss. With C >= 2 MONAI's DiceFocalLoss uses a
    sigmoid focal term on each one-hot channel (a different loss), so ours is checked against the sum
    of MONAI's DiceLoss and its softmax FocalLoss (whose mean over the classes is ours / C)."""
    x, t = random_case(channels, dims, seed=4)
    logits, target = torch.from_numpy(x), torch.from_numpy(t)
    ours = build_loss("dice_focal", alpha=alpha, gamma=gamma, focal_weight=focal_weight)
    value, grad = value_and_grad(ours, logits, target)
    if channels == 1:
        theirs = monai_losses.DiceFocalLoss(
            gamma=gamma, alpha=alpha, lambda_focal=focal_weight, smooth_nr=1.0, smooth_dr=1.0, sigmoid=True
        )
        expected, expected_grad = value_and_grad(lambda a, b: theirs(a, b.float()), logits, target)
    else:
        dice = monai_losses.DiceLoss(include_background=False, smooth_nr=1.0, smooth_dr=1.0, softmax=True, to_onehot_y=True)
        focal = monai_losses.FocalLoss(include_background=True, gamma=gamma, alpha=alpha, use_softmax=True, to_onehot_y=True)
        expected, expected_grad = value_and_grad(
            lambda a, b: dice(a, b) + focal_weight * channels * focal(a, b), logits, target
        )
    torch.testing.assert_close(value, expected, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(grad, expected_grad, rtol=1e-4, atol=1e-5)


# =============================================================================================
# 5. Eager, clear errors.
# =============================================================================================
BAD_PARAMS = [
    ("tversky", {"alpha": 1.5}, "loss 'tversky': alpha=1.5 is out of range; allowed [0.0, 1.0]"),
    ("tversky", {"beta": -0.1}, "beta=-0.1 is out of range"),
    ("tversky", {"alpha": "high"}, "alpha must be a number"),
    ("focal_tversky", {"gamma": 0}, "loss 'focal_tversky': gamma=0 is out of range; allowed (0.0, inf]"),
    ("dice", {"smooth": -1}, "loss 'dice': smooth=-1 is out of range; allowed [0.0, inf]"),
    ("dice", {"squared": "yes"}, "squared must be true or false"),
    ("iou", {"batch": 1}, "batch must be true or false"),
    ("sensitivity_specificity", {"sensitivity_weight": 2}, "sensitivity_weight=2 is out of range"),
    ("generalized_dice", {"smooth": float("nan")}, "smooth=nan is out of range"),
    ("ce", {"class_weights": [-1, 1]}, "class_weights=-1 is out of range"),
    ("ce", {"class_weights": [0, 0]}, "class_weights must hold at least one positive value"),
    ("ce", {"class_weights": "auto"}, "class_weights must be a list"),
    ("wce", {"weights": "balanced"}, "weights='balanced' is not allowed; use auto or a list"),
    ("wce", {"max_weight": 0}, "max_weight=0 is out of range; allowed (0.0, inf]"),
    ("balanced_ce", {"beta": 1.5}, "beta=1.5 is out of range"),
    ("balanced_ce", {"beta": "half"}, "beta='half' is not allowed"),
    ("distance_weighted_ce", {"sigma": 0}, "sigma=0 is out of range"),
    ("distance_weighted_ce", {"w0": -1}, "w0=-1 is out of range"),
    ("focal", {"gamma": -1}, "loss 'focal': gamma=-1 is out of range; allowed [0.0, inf]"),
    ("focal", {"alpha": 2}, "alpha=2 is out of range"),
    ("conservative", {"base": 1}, "base=1 is out of range; allowed (1.0, inf]"),
    ("conservative", {"base": "ten"}, "base='ten' is not allowed"),
    ("conservative", {"lam": -1}, "lam=-1 is out of range"),
    ("dice_ce", {"ce_weight": -1}, "loss 'dice_ce': ce_weight=-1 is out of range"),
    ("dice_ce", {"smooth": -1}, "loss 'dice_ce': smooth=-1 is out of range"),
    ("dice_focal", {"gamma": -2}, "loss 'dice_focal': gamma=-2 is out of range"),
    ("combo", {"alpha": 2}, "loss 'combo': alpha=2 is out of range"),
    ("combo", {"beta": 2}, "loss 'combo': beta=2 is out of range"),
    ("exp_log", {"gamma_dice": 0}, "loss 'exp_log': gamma_dice=0 is out of range; allowed (0.0, inf]"),
    ("lovasz", {"per_image": "no"}, "per_image must be true or false"),
    ("boundary", {"alpha": 0.5, "alpha_min": 0.6}, "alpha_min=0.6 is out of range; allowed [0.0, alpha=0.5]"),
    ("boundary", {"alpha_step": -0.1}, "alpha_step=-0.1 is out of range"),
    ("dice", {"gamma": 2}, "loss 'dice' has no parameter 'gamma'; its parameters are: smooth, squared, include_background, batch"),
]


@pytest.mark.parametrize("name, params, message", BAD_PARAMS, ids=[f"{n}-{'-'.join(p)}" for n, p, _ in BAD_PARAMS])
def test_bad_parameters_raise_eagerly(name, params, message):
    with pytest.raises(ValueError) as err:
        build_loss(name, **params)
    assert message in str(err.value)


def test_unknown_loss_lists_the_registry():
    with pytest.raises(ValueError, match="unknown loss 'dic'; available losses: balanced_ce, boundary, ce, combo"):
        build_loss("dic")


@pytest.mark.parametrize("name", ALL_LOSSES)
def test_bad_inputs_raise_with_the_loss_name(name):
    loss = build_loss(name)
    logits = torch.randn(2, 3, 4, 4)
    with pytest.raises(ValueError, match=f"loss '{name}': target must be an integer label map"):
        loss(logits, torch.zeros(2, 1, 4, 4))
    with pytest.raises(ValueError, match=r"target shape \(2, 1, 4, 5\) does not match logits \(2, 3, 4, 4\)"):
        loss(logits, torch.zeros(2, 1, 4, 5, dtype=torch.long))
    with pytest.raises(ValueError, match=r"label values must lie in \[0, 2\] for C = 3 .* found values in \[3, 3\]"):
        loss(logits, torch.full((2, 4, 4), 3))
    with pytest.raises(ValueError, match=r"label values must lie in \[0, 1\] for C = 1"):
        loss(logits[:, :1], torch.full((2, 1, 4, 4), 2))
    with pytest.raises(ValueError, match=r"logits must be \(B, C, H, W\) or \(B, C, D, H, W\)"):
        loss(torch.randn(2, 3, 4), torch.zeros(2, 1, 4, dtype=torch.long))
    with pytest.raises(ValueError, match="logits must be a float tensor"):
        loss(torch.zeros(2, 3, 4, 4, dtype=torch.long), torch.zeros(2, 4, 4, dtype=torch.long))


def test_per_class_weights_must_match_the_classes():
    with pytest.raises(ValueError, match="loss 'ce': class_weights has 2 values but the network predicts 3 classes"):
        build_loss("ce", class_weights=[1, 2])(torch.randn(1, 3, 4, 4), torch.zeros(1, 4, 4, dtype=torch.long))
    with pytest.raises(ValueError, match=r"loss 'wce': weights has 3 values but the network predicts 2 classes \(binary"):
        build_loss("wce", weights=[1, 2, 3])(torch.randn(1, 1, 4, 4), torch.zeros(1, 4, 4, dtype=torch.long))


def test_target_without_channel_axis_and_uint8_labels_are_accepted():
    logits = torch.randn(2, 3, 4, 5)
    target = torch.randint(0, 3, (2, 4, 5))
    for name in ALL_LOSSES:
        loss = build_loss(name)
        torch.testing.assert_close(loss(logits, target), loss(logits, target[:, None].to(torch.uint8)))


def test_a_batch_is_a_mean_never_a_sum():
    """Two copies of one sample give the loss of that sample, for every loss."""
    x, t = random_case(3, 2, seed=5)
    one_x, one_t = torch.from_numpy(x[:1]), torch.from_numpy(t[:1])
    for name in ALL_LOSSES:
        loss = build_loss(name)
        single = loss(one_x, one_t)
        double = loss(one_x.repeat(2, 1, 1, 1), one_t.repeat(2, 1, 1, 1))
        torch.testing.assert_close(double, single, rtol=1e-5, atol=1e-6, msg=name)


# -- the parameter table the command line is checked with before torch loads (segtrain/losses/params.py) --------
CANDIDATES = [-1.0, 0.0, 1e-9, 0.3, 1.0, 1.5, 2, float("nan"), None, True, False, "auto", "e", "x", [1.0, 2.0], [0.0, 0.0],
              [1.0, -1.0]]


@pytest.mark.parametrize("name", available_losses())
def test_the_torch_free_parameter_table_accepts_and_refuses_what_the_loss_does(name):
    from segtrain.losses.params import PARAMETERS, problem
    from segtrain.losses.registry import loss_parameters

    assert set(PARAMETERS[name]) == set(loss_parameters(name)), name  # every parameter, no other
    for key in PARAMETERS[name]:
        for value in CANDIDATES:
            try:
                build_loss(name, **{key: value})
                accepted = True
            except ValueError:
                accepted = False
            found = problem(name, {key: value})
            assert (found is None) == accepted, (name, key, value, found)
            if found:
                assert found.startswith(f"loss '{name}': ") and key in found
    assert problem("boundary", {"alpha": 0.0}) is not None and problem("tversky", {"alpha": 0, "beta": 0, "smooth": 0})
