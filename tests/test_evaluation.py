"""segtrain.evaluation: known answers for boundary distances, the empty-mask table, lesion counts, agreement with
MONAI, bootstrap intervals, the summary's pooling rules and the files it writes."""

from __future__ import annotations

import csv
import json
import math

import numpy as np
import pytest
import torch

from segtrain.evaluation.detection import count_lesions
from segtrain.evaluation.scores import ScoreSettings, score_case
from segtrain.evaluation.summary import bootstrap_interval, describe, summarise, write_results

SPACING = (0.8, 0.8, 2.0)  # mm; anisotropic, axis 2 coarse
RADIUS = 10.0  # mm
SHAPE = (36, 32, 16)  # holds a 10 mm ball (12.5 x 12.5 x 5 voxels of radius) shifted by up to 3 voxels
CENTRE = (14.5, 15.5, 7.5)  # voxel coordinates, off-grid so the ball has no single centre voxel


def physical_ball(shape=SHAPE, centre=CENTRE, spacing=SPACING, radius=RADIUS) -> np.ndarray:
    """Label map (uint8): 1 where a voxel's centre lies within ``radius`` mm of ``centre`` (voxel units)."""
    index = np.indices(shape).astype(float)
    r2 = sum(((index[a] - centre[a]) * spacing[a]) ** 2 for a in range(len(shape)))
    return (r2 <= radius**2).astype(np.uint8)


def analytic_shifted_spheres(radius: float, shift: float, percentile: float = 95.0) -> tuple[float, float]:
    """(HD-percentile, ASSD) between two spheres of ``radius`` whose centres are ``shift`` apart.

    A point of sphere A at polar angle theta from the shift axis lies |sqrt(R^2 - 2Rd cos(theta) + d^2) - R| from
    sphere B; u = cos(theta) is uniform on [-1, 1] for points uniform on the sphere, and both directions share one
    distribution, so the symmetric statistics are those of f(u).
    """
    u = np.linspace(-1.0, 1.0, 400_001)
    f = np.abs(np.sqrt(radius**2 - 2 * radius * shift * u + shift**2) - radius)
    return float(np.percentile(f, percentile)), float(f.mean())


def shifted(axis: int, voxels: int) -> np.ndarray:
    centre = list(CENTRE)
    centre[axis] += voxels
    return physical_ball(centre=tuple(centre))


def cube(mask: np.ndarray, *bounds: tuple[int, int]) -> None:
    mask[tuple(slice(lo, hi) for lo, hi in bounds)] = 1


# --- 1. known answers for boundary distances -------------------------------------------------------------------


@pytest.mark.parametrize(("axis", "voxels", "tolerance"), [(0, 2, 0.8), (0, 3, 0.8), (2, 2, 2.0)])
def test_shifted_ball_matches_analytic_hd95_assd_and_max(axis, voxels, tolerance):
    # HD95/ASSD of a ball vs. its shifted copy lie within one voxel (along the shift axis) of the sphere formulas,
    # and HD100 (the classic maximum) is the shift itself.
    truth = physical_ball()
    pred = shifted(axis, voxels)
    assert truth.sum() == pred.sum() > 0  # the shifted ball stays inside the grid
    shift = voxels * SPACING[axis]
    hd95_ref, assd_ref = analytic_shifted_spheres(RADIUS, shift)

    row = score_case(pred, truth, SPACING, [1])[0]
    assert row["empty"] == ""
    assert abs(row["hd95"] - hd95_ref) <= tolerance, (row["hd95"], hd95_ref)
    assert abs(row["assd"] - assd_ref) <= tolerance, (row["assd"], assd_ref)
    assert 0 < row["nsd"] < 1

    hd100 = score_case(pred, truth, SPACING, [1], ScoreSettings(hd_percentile=100))[0]["hd95"]
    assert abs(hd100 - shift) <= tolerance, (hd100, shift)
    assert hd100 >= row["hd95"] - 1e-6


def test_identical_masks_score_perfectly():
    # Identical masks: Dice = IoU = NSD = 1, HD95 = ASSD = 0, every lesion found and none false.
    truth = physical_ball()
    row = score_case(truth.copy(), truth, SPACING, [1])[0]
    assert row["dice"] == pytest.approx(1.0)
    assert row["iou"] == pytest.approx(1.0)
    assert row["hd95"] == pytest.approx(0.0, abs=1e-9)
    assert row["assd"] == pytest.approx(0.0, abs=1e-9)
    assert row["nsd"] == pytest.approx(1.0)
    assert (row["tp"], row["fp"], row["fn"]) == (int(truth.sum()), 0, 0)
    assert (row["lesions_true"], row["lesions_found"], row["lesions_false"]) == (1, 1, 0)


# --- 2. the empty-mask table ----------------------------------------------------------------------------------


@pytest.mark.parametrize("case", ["both", "truth", "prediction"])
def test_empty_mask_table(case):
    # The scores.py table: both empty -> NaN everywhere; one side empty -> Dice = IoU = NSD = 0, HD95 = ASSD =
    # the grid's diagonal in mm, and ``empty`` names the empty side.
    shape = (10, 12, 8)
    blob = np.zeros(shape, np.uint8)
    cube(blob, (3, 6), (4, 8), (2, 5))
    empty = np.zeros(shape, np.uint8)
    pred, truth = {"both": (empty, empty), "truth": (blob, empty), "prediction": (empty, blob)}[case]

    row = score_case(pred, truth, SPACING, [1])[0]
    assert row["empty"] == case
    if case == "both":
        for metric in ("dice", "iou", "hd95", "assd", "nsd"):
            assert math.isnan(row[metric]), (metric, row[metric])
        assert row["lesions_true"] == row["lesions_pred"] == 0
    else:
        diagonal = float(np.linalg.norm(np.asarray(shape, float) * np.asarray(SPACING)))
        assert row["dice"] == 0 and row["iou"] == 0 and row["nsd"] == 0
        assert row["hd95"] == pytest.approx(diagonal)
        assert row["assd"] == pytest.approx(diagonal)
        assert row["tp"] == 0 and row["fp"] + row["fn"] == int(blob.sum())
        if case == "truth":
            assert (row["lesions_pred"], row["lesions_false"], row["lesions_true"]) == (1, 1, 0)
        else:
            assert (row["lesions_true"], row["lesions_missed"], row["lesions_pred"]) == (1, 1, 0)


# --- 3. lesion (connected-component) counts -------------------------------------------------------------------


def three_lesions_and_prediction() -> tuple[np.ndarray, np.ndarray]:
    truth = np.zeros((30, 30, 30), bool)
    cube(truth, (2, 6), (2, 6), (2, 6))  # A: predicted fully
    cube(truth, (2, 6), (20, 24), (2, 6))  # B: predicted by two voxels only
    cube(truth, (20, 24), (2, 6), (2, 6))  # C: missed
    pred = np.zeros_like(truth)
    cube(pred, (2, 6), (2, 6), (2, 6))
    cube(pred, (2, 3), (20, 22), (2, 3))
    cube(pred, (20, 24), (20, 24), (20, 24))  # far from every true lesion: false
    return pred, truth


def test_lesion_counts_found_missed_false():
    # Three true lesions: one predicted fully, one by a few voxels, one missed, plus one invented blob.
    pred, truth = three_lesions_and_prediction()
    expected = {"lesions_true": 3, "lesions_found": 2, "lesions_missed": 1, "lesions_pred": 3, "lesions_false": 1}
    assert count_lesions(pred, truth) == expected

    # the same counts through score_case, on label maps where the lesions are class 2 beside a class-1 structure
    pred_map = pred.astype(np.int64) * 2
    truth_map = truth.astype(np.int64) * 2
    pred_map[10:14, 10:14, 10:14] = 1
    truth_map[10:14, 10:14, 10:14] = 1
    rows = {r["class"]: r for r in score_case(pred_map, truth_map, (1.0, 1.0, 1.0), [1, 2], ScoreSettings(surface=False))}
    assert {k: rows[2][k] for k in expected} == expected
    assert (rows[1]["lesions_true"], rows[1]["lesions_found"], rows[1]["lesions_false"]) == (1, 1, 0)


def test_one_blob_bridging_two_lesions_finds_both():
    # One predicted component covering two true lesions finds both and is not false.
    truth = np.zeros((20, 20, 20), bool)
    cube(truth, (2, 5), (2, 5), (2, 5))
    cube(truth, (10, 13), (2, 5), (2, 5))
    pred = np.zeros_like(truth)
    cube(pred, (3, 12), (3, 4), (3, 4))  # a bar from one lesion to the other
    assert count_lesions(pred, truth) == {"lesions_true": 2, "lesions_found": 2, "lesions_missed": 0,
                                          "lesions_pred": 1, "lesions_false": 0}


def test_two_blobs_on_one_lesion_are_both_true():
    # Two predicted components on one true lesion: both count as true predictions.
    truth = np.zeros((20, 20, 20), bool)
    cube(truth, (2, 12), (2, 6), (2, 6))
    pred = np.zeros_like(truth)
    cube(pred, (2, 4), (2, 4), (2, 4))
    cube(pred, (9, 11), (2, 4), (2, 4))
    assert count_lesions(pred, truth) == {"lesions_true": 1, "lesions_found": 1, "lesions_missed": 0,
                                          "lesions_pred": 2, "lesions_false": 0}


def test_detection_overlap_threshold():
    # A lesion covered by 10% (by a blob that is itself 90% outside) is found with overlap 0, but with
    # detection_overlap=0.5 it is missed and the blob is false.
    truth = np.zeros((30, 10, 6), bool)
    cube(truth, (5, 15), (2, 7), (2, 4))  # 10 x 5 x 2 = 100 voxels
    pred = np.zeros_like(truth)
    cube(pred, (14, 24), (2, 7), (2, 4))  # 100 voxels, 10 of them (x = 14) inside the lesion
    assert int((pred & truth).sum()) == 10

    assert count_lesions(pred, truth, overlap=0.0) == {"lesions_true": 1, "lesions_found": 1, "lesions_missed": 0,
                                                       "lesions_pred": 1, "lesions_false": 0}
    assert count_lesions(pred, truth, overlap=0.5) == {"lesions_true": 1, "lesions_found": 0, "lesions_missed": 1,
                                                       "lesions_pred": 1, "lesions_false": 1}
    row = score_case(pred.astype(np.uint8), truth.astype(np.uint8), (1.0, 1.0, 1.0), [1],
                     ScoreSettings(detection_overlap=0.5, surface=False))[0]
    assert (row["lesions_found"], row["lesions_missed"], row["lesions_false"]) == (0, 1, 1)


def test_connectivity_full_joins_corners_face_does_not():
    # Two voxels sharing only a corner: one component with connectivity='full', two with 'face' (3D and 2D).
    mask3 = np.zeros((5, 5, 5), bool)
    mask3[1, 1, 1] = mask3[2, 2, 2] = True
    assert count_lesions(mask3, mask3, connectivity="full")["lesions_true"] == 1
    assert count_lesions(mask3, mask3, connectivity="face")["lesions_true"] == 2
    mask2 = np.zeros((5, 5), bool)
    mask2[1, 1] = mask2[2, 2] = True
    assert count_lesions(mask2, mask2, connectivity="full")["lesions_pred"] == 1
    assert count_lesions(mask2, mask2, connectivity="face")["lesions_pred"] == 2
    row = score_case(mask3.astype(np.uint8), mask3.astype(np.uint8), (1.0, 1.0, 1.0), [1],
                     ScoreSettings(connectivity="face", surface=False))[0]
    assert (row["lesions_true"], row["lesions_pred"], row["lesions_false"]) == (2, 2, 0)


def test_lesion_counts_2d():
    # 2D: two true lesions, one found, one missed, one false blob; also through score_case with pixel spacing.
    truth = np.zeros((24, 24), np.uint8)
    truth[2:6, 2:6] = 1
    truth[15:19, 2:6] = 1
    pred = np.zeros_like(truth)
    pred[3:7, 3:7] = 1
    pred[18:22, 18:22] = 1
    expected = {"lesions_true": 2, "lesions_found": 1, "lesions_missed": 1, "lesions_pred": 2, "lesions_false": 1}
    assert count_lesions(pred.astype(bool), truth.astype(bool)) == expected
    row = score_case(pred, truth, (1.0, 1.0), [1])[0]
    assert {k: row[k] for k in expected} == expected
    assert math.isfinite(row["hd95"]) and math.isfinite(row["assd"]) and 0 < row["nsd"] < 1


# --- 4. agreement with MONAI ----------------------------------------------------------------------------------


def random_label_maps(seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Two 3-class label maps on a 28^3 grid: noisy blobs inside the centre, so score_case's crop is a real crop."""
    rng = np.random.default_rng(seed)
    shape = (28, 28, 28)
    maps = []
    for _ in range(2):
        labels = np.zeros(shape, np.int64)
        inner = rng.integers(0, 3, (14, 12, 10))
        inner[rng.random(inner.shape) < 0.4] = 0
        labels[6:20, 9:21, 8:18] = inner
        maps.append(labels)
    pred, truth = maps
    for c in (1, 2):
        assert (pred == c).any() and (truth == c).any()
    return pred, truth


def one_hot(labels: np.ndarray, classes: int = 3) -> torch.Tensor:
    """(1, C, *spatial) float one-hot of a label map."""
    hot = torch.nn.functional.one_hot(torch.from_numpy(labels), classes)  # (*spatial, C)
    return hot.movedim(-1, 0)[None].float()


@pytest.mark.parametrize("seed", [0, 1])
def test_dice_iou_match_monai(seed):
    # score_case's Dice and IoU equal MONAI's DiceMetric / MeanIoU (background excluded) to 1e-6.
    from monai.metrics import DiceMetric, MeanIoU

    pred, truth = random_label_maps(seed)
    rows = score_case(pred, truth, SPACING, [1, 2], ScoreSettings(surface=False))
    dice = DiceMetric(include_background=False)(y_pred=one_hot(pred), y=one_hot(truth))
    iou = MeanIoU(include_background=False)(y_pred=one_hot(pred), y=one_hot(truth))
    assert dice.shape == iou.shape == (1, 2)
    for i, row in enumerate(rows):
        assert row["dice"] == pytest.approx(float(dice[0, i]), abs=1e-6)
        assert row["iou"] == pytest.approx(float(iou[0, i]), abs=1e-6)


# MONAI's own compute_* functions pass get_mask_edges a deprecated argument (MONAI 1.5 to 1.6)
@pytest.mark.filterwarnings("ignore:.*always_return_as_numpy.*:FutureWarning")
@pytest.mark.parametrize("seed", [0, 1])
def test_surface_scores_match_monai_on_uncropped_masks(seed):
    # HD95, ASSD and NSD equal MONAI's functions on the whole (uncropped) masks to 1e-5: the bounding-box crop
    # inside score_case changes nothing.
    from monai.metrics import compute_average_surface_distance, compute_hausdorff_distance, compute_surface_dice

    pred, truth = random_label_maps(seed)
    settings = ScoreSettings(nsd_tolerance=1.5)
    rows = score_case(pred, truth, SPACING, [1, 2], settings)
    p, t, spacing = one_hot(pred), one_hot(truth), list(SPACING)
    hd = compute_hausdorff_distance(p, t, include_background=False, percentile=95, spacing=spacing)
    assd = compute_average_surface_distance(p, t, include_background=False, symmetric=True, spacing=spacing)
    nsd = compute_surface_dice(p, t, [1.5, 1.5], include_background=False, spacing=spacing)
    for i, row in enumerate(rows):
        assert row["hd95"] == pytest.approx(float(hd[0, i]), abs=1e-5)
        assert row["assd"] == pytest.approx(float(assd[0, i]), abs=1e-5)
        assert row["nsd"] == pytest.approx(float(nsd[0, i]), abs=1e-5)


# --- 5. bootstrap interval ------------------------------------------------------------------------------------


def test_bootstrap_interval_rules():
    # Same seed -> same interval; it holds the sample mean; 10x more cases narrow it; one value -> (v, v); none -> NaN.
    rng = np.random.default_rng(7)
    small = rng.normal(0.8, 0.1, 20)
    large = rng.normal(0.8, 0.1, 200)

    first = bootstrap_interval(small, samples=1000, seed=3)
    assert first == bootstrap_interval(small, samples=1000, seed=3)
    low, high = first
    assert low < small.mean() < high

    low_large, high_large = bootstrap_interval(large, samples=1000, seed=3)
    assert low_large < large.mean() < high_large
    assert (high_large - low_large) < 0.6 * (high - low)  # ~1/sqrt(10) expected

    assert bootstrap_interval(np.array([0.42])) == (0.42, 0.42)
    empty = bootstrap_interval(np.array([]))
    assert len(empty) == 2 and all(math.isnan(v) for v in empty)
    assert describe([math.nan, math.nan])["n"] == 0


# --- 6. summarise ---------------------------------------------------------------------------------------------


def hand_rows() -> list[dict]:
    """2 cases x 2 classes; case a / class 1 is empty on both sides (NaN scores)."""
    nan = math.nan

    def row(case, c, tp, fp, fn, dice, iou, hd95, assd, nsd, empty, lesions):
        true, found, pred, false = lesions
        return {"case": case, "class": c, "tp": tp, "fp": fp, "fn": fn, "truth_voxels": tp + fn,
                "pred_voxels": tp + fp, "empty": empty, "dice": dice, "iou": iou, "hd95": hd95, "assd": assd,
                "nsd": nsd, "lesions_true": true, "lesions_found": found, "lesions_missed": true - found,
                "lesions_pred": pred, "lesions_false": false}

    return [
        row("a", 1, 0, 0, 0, nan, nan, nan, nan, nan, "both", (0, 0, 0, 0)),
        row("a", 2, 20, 10, 20, 0.4, 0.25, 3.0, 1.0, 0.5, "", (2, 1, 2, 1)),
        row("b", 1, 40, 10, 10, 0.8, 2 / 3, 1.0, 0.5, 0.9, "", (3, 3, 3, 0)),
        row("b", 2, 30, 5, 35, 0.6, 0.5, 5.0, 2.0, 0.7, "", (4, 1, 1, 0)),
    ]


def test_summarise_pooling_rules():
    # Per-class means skip NaN (n counts finite values), global Dice pools TP/FP/FN, lesion recall pools counts,
    # empty kinds are counted, and the 'mean' group averages each case's classes before the cases.
    rows = hand_rows()
    out = summarise(rows, {1: "liver", 2: "tumour"}, samples=200, seed=0)
    assert out["cases"] == 2
    liver, tumour = out["classes"]["liver"], out["classes"]["tumour"]

    assert liver["dice"]["n"] == 1 and liver["dice"]["mean"] == pytest.approx(0.8)
    assert liver["hd95"]["n"] == 1 and liver["hd95"]["mean"] == pytest.approx(1.0)
    assert tumour["dice"]["n"] == 2 and tumour["dice"]["mean"] == pytest.approx(0.5)
    assert tumour["dice"]["median"] == pytest.approx(0.5)
    assert tumour["dice"]["std"] == pytest.approx(np.std([0.4, 0.6], ddof=1))
    assert tumour["dice"]["ci_low"] <= 0.5 <= tumour["dice"]["ci_high"]

    # global Dice / IoU: 2*sum(tp) / (2*sum(tp) + sum(fp) + sum(fn))
    assert tumour["global"]["dice"] == pytest.approx(2 * 50 / (2 * 50 + 15 + 55))
    assert tumour["global"]["iou"] == pytest.approx(50 / (50 + 15 + 55))
    assert liver["global"]["dice"] == pytest.approx(2 * 40 / (2 * 40 + 10 + 10))  # the empty case adds nothing

    # lesions pooled over cases
    assert tumour["lesions"]["lesions_true"] == 6 and tumour["lesions"]["lesions_found"] == 2
    assert tumour["lesions"]["recall"] == pytest.approx(2 / 6)
    assert tumour["lesions"]["precision"] == pytest.approx((3 - 1) / 3)
    assert liver["lesions"]["recall"] == pytest.approx(1.0)

    assert liver["empty"] == {"both": 1, "truth": 0, "prediction": 0}
    assert tumour["empty"] == {"both": 0, "truth": 0, "prediction": 0}

    # 'mean': case a -> 0.4 (NaN class skipped), case b -> 0.7; mean 0.55 (not the flat mean 0.6 of all rows)
    assert out["mean"]["dice"]["n"] == 2
    assert out["mean"]["dice"]["mean"] == pytest.approx(0.55)
    assert out["mean"]["hd95"]["mean"] == pytest.approx((3.0 + 3.0) / 2)
    assert out["mean"]["global"]["dice"] == pytest.approx((liver["global"]["dice"] + tumour["global"]["dice"]) / 2)


# --- 7. write_results -----------------------------------------------------------------------------------------


def _reject_constant(name):
    raise ValueError(f"non-standard JSON constant {name}")


@pytest.mark.parametrize("prefix", ["", "test_"])
def test_write_results_files(tmp_path, prefix):
    # CSV (per case, one column per metric), strict JSON (no NaN/Infinity) and markdown are written under the
    # prefix, and no temporary file is left behind.
    rows = hand_rows()
    summary = summarise(rows, {1: "liver", 2: "tumour"}, samples=100, seed=0)
    paths = write_results(tmp_path, rows, summary, prefix=prefix)

    names = sorted(p.name for p in tmp_path.iterdir())
    assert names == sorted(p.name for p in paths)  # nothing else, hidden temporaries included
    assert len(names) == 3 and all(n.startswith(prefix) for n in names)

    csv_path = next(p for p in paths if p.suffix == ".csv")
    json_path = next(p for p in paths if p.suffix == ".json")
    md_path = next(p for p in paths if p.suffix == ".md")
    assert "per_case" in csv_path.name
    assert json_path.name == f"{prefix}summary.json" and md_path.name == f"{prefix}summary.md"

    with open(csv_path, newline="") as handle:
        table = list(csv.DictReader(handle))
    header = list(table[0])
    assert "case" in header
    for metric in ("dice", "iou", "hd95", "assd", "nsd"):
        assert any(metric in column for column in header), (metric, header)
    assert len(table) == len(rows)

    data = json.loads(json_path.read_text(), parse_constant=_reject_constant)
    assert data["classes"]["tumour"]["global"]["dice"] == pytest.approx(summary["classes"]["tumour"]["global"]["dice"])

    text = md_path.read_text()
    assert any(line.startswith("| class |") for line in text.splitlines())
