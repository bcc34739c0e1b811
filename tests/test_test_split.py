"""The held-out test split: imagesTs/labelsTs or data.test_fraction, scored after fit with the best checkpoint."""

from __future__ import annotations

import csv
import json
import shutil

import numpy as np
import pytest

from helpers.cli import TINY_3D, on_user_data, run_cli
from segtrain.events import read_scalars

pytestmark = pytest.mark.slow


def _rows(run):
    return list(csv.DictReader((run / "test_metrics_per_case.csv").open()))


def test_test_fraction_holds_cases_out_and_scores_them_after_training(tmp_path, cache_dir):
    run = tmp_path / "run"
    proc = run_cli([*TINY_3D, "data.synthetic.num_cases=8", "data.test_fraction=0.25",
                    "evaluation.val_surface_every_n_epochs=1", f"hydra.run.dir={run}"], tmp_path, cache_dir)
    assert proc.returncode == 0, proc.stderr[-3000:]
    split = json.loads((run / "split.json").read_text())
    assert len(split["test"]) == 2 and not set(split["test"]) & set(split["train"] + split["val"])
    assert sorted({r["case"] for r in _rows(run)}) == sorted(split["test"])
    assert "scoring 2 test case(s) with the best checkpoint (best.ckpt)" in proc.stdout
    assert "test (2 cases): dice" in proc.stdout
    scalars = read_scalars(run)
    for tag in ("test/dice", "test/dice_per_case", "test/hd95", "test/nsd", "test/lesion_recall", "val/hd95", "val/nsd"):
        assert tag in scalars, tag
    assert (run / "test_summary.json").is_file() and (run / "test_summary.md").is_file()
    from segtrain.compare import compare, markdown_table

    (row,) = compare([run])  # segtrain-compare shows the test columns, and the test adds no epoch
    assert row.test["test/dice"] == pytest.approx(scalars["test/dice"][-1].value) and row.epochs == 1
    assert "test/dice_per_case" in markdown_table([row])
    # the test cases never entered the plan: the dataset report counts the 6 others
    assert json.loads((run / "dataset_report.json").read_text())["num_cases"] == 6


def test_images_ts_of_an_nnunet_dataset_is_the_test_set_and_scored_on_its_own_grid(tmp_path, cache_dir):
    """Test cases stored with another spacing are scored against their label files, on the label's grid."""
    import nibabel as nib

    source = next(cache_dir.rglob("imagesTr/case_000.nii.gz")).parent.parent
    root = tmp_path / "Dataset001_Spheres"
    for sub in ("imagesTr", "labelsTr", "imagesTs", "labelsTs"):
        (root / sub).mkdir(parents=True)
    for i in range(6):
        shutil.copy(source / "imagesTr" / f"case_00{i}.nii.gz", root / "imagesTr" / f"sph{i}_0000.nii.gz")
        shutil.copy(source / "labelsTr" / f"case_00{i}.nii.gz", root / "labelsTr" / f"sph{i}.nii.gz")
    for i in (0, 1):  # the same scenes stored at 2 mm along the last axis (every other slice)
        image, label = nib.load(source / "imagesTr" / f"case_00{i}.nii.gz"), nib.load(source / "labelsTr" / f"case_00{i}.nii.gz")
        affine = image.affine @ np.diag([1.0, 1.0, 2.0, 1.0])
        nib.save(nib.Nifti1Image(image.get_fdata()[..., ::2].astype(np.float32), affine), root / "imagesTs" / f"ts{i}_0000.nii.gz")
        nib.save(nib.Nifti1Image(np.asarray(label.dataobj)[..., ::2], affine), root / "labelsTs" / f"ts{i}.nii.gz")
    (root / "dataset.json").write_text(json.dumps({"channel_names": {"0": "noise"}, "labels": {"background": 0, "sphere": 1},
                                                   "numTraining": 6, "file_ending": ".nii.gz"}))
    run = tmp_path / "run"
    tiny = on_user_data(TINY_3D)
    proc = run_cli([*tiny, "data=nifti", f"data.root={root}", "data.spacing=[1,1,1]", "trainer.max_epochs=2",
                    f"hydra.run.dir={run}"], tmp_path, cache_dir)
    assert proc.returncode == 0, proc.stderr[-3000:]
    rows = _rows(run)
    assert [r["case"] for r in rows] == ["ts0", "ts1"] and rows[0]["class_name"] == "sphere"
    truth_voxels = int(np.count_nonzero(np.asarray(nib.load(root / "labelsTs" / "ts0.nii.gz").dataobj) == 1))
    assert int(rows[0]["truth_voxels"]) == truth_voxels  # counted on the label file's own 2 mm grid
    assert json.loads((run / "split.json").read_text())["test"] == ["ts0", "ts1"]


def test_test_split_reads_labels_through_the_runs_label_mapping(tmp_path, cache_dir):
    """A 2D dataset of 0/255 masks trained with data.label_mapping: the test labels are mapped the same way."""
    from PIL import Image

    from helpers.cli import TINY_2D

    source = next(cache_dir.glob("synthetic2d_*/images"), None)
    if source is None:  # the 2D synthetic set is made by the first 2D run of the session
        assert run_cli([*TINY_2D, "trainer.fast_dev_run=true", f"hydra.run.dir={tmp_path / 'warm'}"], tmp_path,
                       cache_dir).returncode == 0
        source = next(cache_dir.glob("synthetic2d_*/images"))
    root = tmp_path / "masks"
    (root / "images").mkdir(parents=True)
    (root / "labels").mkdir()
    for image in sorted(source.iterdir())[:6]:
        shutil.copy(image, root / "images" / image.name)
        label = np.asarray(Image.open(source.parent / "labels" / image.name))
        Image.fromarray((label > 0).astype(np.uint8) * 255).save(root / "labels" / image.name)
    run = tmp_path / "run"
    tiny = on_user_data(TINY_2D)
    proc = run_cli([*tiny, "data=images2d", f"data.root={root}", "data.label_mapping={255: 1}", "data.test_fraction=0.34",
                    f"hydra.run.dir={run}"], tmp_path, cache_dir)
    assert proc.returncode == 0, proc.stderr[-3000:]
    rows = _rows(run)
    assert len(rows) == 2 and {r["class"] for r in rows} == {"1"}
    assert sum(int(r["truth_voxels"]) for r in rows) > 0  # 255 became class 1, not an unscored value
