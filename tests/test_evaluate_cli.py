"""segtrain-evaluate as a user runs it: folders in, per-case CSV and summaries out, one line for bad input."""

from __future__ import annotations

import csv
import json

import numpy as np
import pytest

from helpers.cli import SEGTRAIN, run_cli

pytestmark = pytest.mark.slow
EVALUATE = SEGTRAIN + "-evaluate"
AFFINE = np.diag([0.8, 0.8, 2.0, 1.0])


def _cases(root, shifts: dict[str, int], affine=AFFINE):
    """labels/ and pred/ folders: a cube of class 1 and a small cube of class 2 per case, the prediction shifted."""
    import nibabel as nib

    (root / "labels").mkdir(parents=True, exist_ok=True)
    (root / "pred").mkdir(parents=True, exist_ok=True)
    for case, shift in shifts.items():
        truth = np.zeros((32, 32, 16), np.uint8)
        truth[8:16, 8:16, 4:8] = 1
        truth[24:27, 24:27, 10:12] = 2
        nib.save(nib.Nifti1Image(truth, affine), root / "labels" / f"{case}.nii.gz")
        nib.save(nib.Nifti1Image(np.roll(truth, shift, axis=0), affine), root / "pred" / f"{case}.nii.gz")
    return root / "pred", root / "labels"


def _evaluate(tmp_path, cache_dir, *args):
    return run_cli(list(args), tmp_path, cache_dir, program=EVALUATE)


def test_evaluate_writes_per_case_rows_and_a_summary_with_intervals(tmp_path, cache_dir):
    pred, labels = _cases(tmp_path, {"a": 0, "b": 1, "c": 2})
    import nibabel as nib

    nib.save(nib.Nifti1Image(np.zeros((32, 32, 16), np.uint8), AFFINE), labels / "extra.nii.gz")  # no prediction
    out = tmp_path / "scores"
    proc = _evaluate(tmp_path, cache_dir, f"pred={pred}", f"label={labels}", f"output_dir={out}", "nsd_tolerance=2")
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "1 label(s) without a prediction left out (e.g. extra)" in proc.stdout + proc.stderr
    assert {p.name for p in out.iterdir()} >= {"metrics_per_case.csv", "summary.json", "summary.md"}
    rows = list(csv.DictReader((out / "metrics_per_case.csv").open()))
    assert [(r["case"], r["class"]) for r in rows] == [(c, k) for c in "abc" for k in ("1", "2")]
    for column in ("dice", "iou", "hd95", "assd", "nsd"):
        assert column in rows[0]
    a1 = next(r for r in rows if r["case"] == "a" and r["class"] == "1")
    assert float(a1["dice"]) == 1.0 and float(a1["hd95"]) == 0.0
    b1 = next(r for r in rows if r["case"] == "b" and r["class"] == "1")
    assert float(b1["dice"]) == pytest.approx(2 * 7 * 8 * 4 / (2 * 8 * 8 * 4))  # one of 8 slabs shifted out
    summary = json.loads((out / "summary.json").read_text())
    dice = summary["classes"]["class1"]["dice"]
    assert dice["n"] == 3 and dice["ci_low"] <= dice["mean"] <= dice["ci_high"]
    assert summary["settings"]["nsd_tolerance"] == 2 and summary["labels_without_prediction"] == ["extra"]
    assert "| class | metric |" in (out / "summary.md").read_text()
    assert "dice global" in proc.stdout  # the table on the console


def test_evaluate_2d_pngs_and_class_names_from_dataset_json(tmp_path, cache_dir):
    from PIL import Image

    (tmp_path / "ds" / "labels").mkdir(parents=True)
    (tmp_path / "pred").mkdir()
    (tmp_path / "ds" / "dataset.json").write_text(json.dumps({"labels": {"background": 0, "nucleus": 1}}))
    truth = np.zeros((20, 30), np.uint8)
    truth[2:6, 3:9] = 1
    truth[12:15, 20:24] = 1
    Image.fromarray(truth).save(tmp_path / "ds" / "labels" / "img1.png")
    pred = truth.copy()
    pred[12:15, 20:24] = 0  # one nucleus missed
    Image.fromarray(pred).save(tmp_path / "pred" / "img1.png")
    out = tmp_path / "out"
    proc = _evaluate(tmp_path, cache_dir, f"pred={tmp_path / 'pred'}", f"label={tmp_path / 'ds'}", f"output_dir={out}")
    assert proc.returncode == 0, proc.stderr[-2000:]
    summary = json.loads((out / "summary.json").read_text())
    lesions = summary["classes"]["nucleus"]["lesions"]
    assert (lesions["lesions_true"], lesions["lesions_found"], lesions["lesions_missed"]) == (2, 1, 1)


@pytest.mark.parametrize("problem", ["missing_label", "shape", "unreadable", "out_of_range", "probabilities", "geometry"])
def test_bad_predictions_give_one_line_naming_the_file_and_write_nothing(tmp_path, cache_dir, problem):
    import nibabel as nib

    pred, labels = _cases(tmp_path, {"a": 0, "b": 0})
    culprit = pred / "b.nii.gz"
    expected = {"missing_label": "no label for case 'b'", "shape": "differs from its label",
                "unreadable": "cannot be read", "out_of_range": "holds class 7", "probabilities": "non-integral values",
                "geometry": "prediction geometry (affine) differs"}[problem]
    if problem == "missing_label":
        (labels / "b.nii.gz").unlink()
    elif problem == "shape":
        nib.save(nib.Nifti1Image(np.zeros((32, 32, 15), np.uint8), AFFINE), culprit)
    elif problem == "unreadable":
        culprit.write_bytes(b"not a nifti file at all")
    elif problem == "out_of_range":
        array = np.asarray(nib.load(culprit).dataobj).copy()
        array[0, 0, 0] = 7
        nib.save(nib.Nifti1Image(array, AFFINE), culprit)
        (tmp_path / "dataset.json").write_text(json.dumps({"labels": {"background": 0, "a": 1, "b": 2}}))
    elif problem == "probabilities":
        nib.save(nib.Nifti1Image(np.full((32, 32, 16), 0.3, np.float32), AFFINE), culprit)
    elif problem == "geometry":
        moved = AFFINE.copy()
        moved[:3, 3] = [5.0, 0.0, 0.0]
        nib.save(nib.Nifti1Image(np.asarray(nib.load(culprit).dataobj), moved), culprit)
    out = tmp_path / "out"
    proc = _evaluate(tmp_path, cache_dir, f"pred={pred}", f"label={labels}", f"output_dir={out}")
    assert proc.returncode == 2, proc.stdout[-2000:]
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("segtrain: error: "), proc.stderr
    assert expected in lines[0] and "b.nii.gz" in lines[0], lines[0]
    assert not out.exists()


def test_0_255_masks_need_a_label_mapping_and_get_one(tmp_path):
    """Labels stored as 0/255 against predicted class indices: an error naming label_mapping, not a silent Dice of 0."""
    from PIL import Image

    from segtrain.errors import DataError
    from segtrain.evaluation import evaluate_folders

    (tmp_path / "labels").mkdir()
    (tmp_path / "pred").mkdir()
    mask = np.zeros((16, 24), np.uint8)
    mask[4:9, 5:12] = 1
    Image.fromarray(mask * 255).save(tmp_path / "labels" / "m.png")
    Image.fromarray(mask).save(tmp_path / "pred" / "m.png")
    with pytest.raises(DataError, match=r"label_mapping='\{255: 1\}'"):
        evaluate_folders(tmp_path / "pred", tmp_path / "labels", tmp_path / "out", progress=False)
    assert not (tmp_path / "out").exists()
    summary = evaluate_folders(tmp_path / "pred", tmp_path / "labels", tmp_path / "out", progress=False,
                               label_mapping="{255: 1}")
    assert summary["classes"]["class1"]["dice"]["mean"] == 1.0
