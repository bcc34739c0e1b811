"""Bad input: each problem stops the run before training with one line naming the file, the fault and the fix."""

from __future__ import annotations

import gzip
import json
import shutil

import numpy as np
import pytest

from helpers.cli import compose, run_cli
from segtrain.errors import DataError
from test_data_factory import TINY_MODEL, images2d_dataset, msd_dataset, nnunet_dataset, save_nifti, sphere_case


def _relabel(root, fn, case="case01"):
    """Rewrite one label of an nnU-Net dataset with ``fn(label)``; returns the dataset root."""
    _, label = sphere_case(seed=1)
    save_nifti(root / "labelsTr" / f"{case}.nii.gz", fn(label))
    return root


def missing_label(tmp):
    root = nnunet_dataset(tmp)
    (root / "labelsTr" / "case01.nii.gz").unlink()
    return root, ["labelsTr/case01.nii.gz: label file missing for image", "add the label"]


def shape_mismatch(tmp):
    root = nnunet_dataset(tmp)
    save_nifti(root / "imagesTr" / "case02_0000.nii.gz", np.zeros((16, 16, 12), np.float32))
    return root, ["imagesTr/case02_0000.nii.gz: image shape [16, 16, 12] differs from its label", "resample the label"]


def affine_mismatch(tmp):
    root = nnunet_dataset(tmp)
    _, label = sphere_case(seed=1)
    shifted = np.eye(4)
    shifted[:3, 3] = [0.0, 2.0, 0.0]
    save_nifti(root / "labelsTr" / "case01.nii.gz", label, shifted)
    return root, ["imagesTr/case01_0000.nii.gz: image geometry (affine) differs from its label", "by up to 2 mm",
                  "data.geometry_tolerance"]


def mask_0_255(tmp):
    root = _relabel(nnunet_dataset(tmp), lambda label: label * 255)
    return root, ["labelsTr/case01.nii.gz: label values [0, 255] fall outside [0, 1] for 2 classes",
                  "data.label_mapping='{255: 1}'"]


def values_out_of_range(tmp):
    root = _relabel(nnunet_dataset(tmp), lambda label: label * 3)
    return root, ["labelsTr/case01.nii.gz: label values [0, 3] fall outside [0, 1]", "dataset.json 'labels'"]


def float_labels(tmp):
    root = _relabel(nnunet_dataset(tmp), lambda label: label.astype(np.float32) * 0.5)
    return root, ["labelsTr/case01.nii.gz: label has non-integral values (e.g. 0.5)", "nearest-neighbour"]


def nan_intensities(tmp):
    root = nnunet_dataset(tmp)
    image, _ = sphere_case(seed=2)
    image[3, 4, 5] = np.nan
    save_nifti(root / "imagesTr" / "case02_0000.nii.gz", image)
    return root, ["imagesTr/case02_0000.nii.gz: image contains NaN or Inf intensities", "replace them"]


def huge_intensities(tmp):
    root = nnunet_dataset(tmp, num_cases=10)  # one case among ten is enough to ruin a run
    image, _ = sphere_case(seed=7)
    image[2, 3, 4] = 1e38
    save_nifti(root / "imagesTr" / "case07_0000.nii.gz", image)
    return root, ["imagesTr/case07_0000.nii.gz: intensities reach 1e+38, beyond +-1e+30", "rescale the image"]


def truncated_gzip(tmp):
    root = nnunet_dataset(tmp, shape=(32, 32, 32))
    path = root / "imagesTr" / "case03_0000.nii.gz"
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    return root, ["imagesTr/case03_0000.nii.gz: cannot be read", "corrupt, truncated"]


def corrupt_file(tmp):
    root = nnunet_dataset(tmp)
    (root / "labelsTr" / "case00.nii.gz").write_bytes(gzip.compress(b"not a nifti file" * 10))
    return root, ["labelsTr/case00.nii.gz: cannot be read", "re-export or re-download it"]


def empty_root(tmp):
    tmp.mkdir()
    return tmp, [f"data.root={tmp}: the folder is empty", "nnU-Net v2"]


def wrong_root(tmp):
    root = nnunet_dataset(tmp / "Dataset001_Liver")
    return tmp, [f"data.root={tmp}: no dataset found (it holds Dataset001_Liver)", f"did you mean data.root={root}?"]


def json_names_missing_file(tmp):
    root = msd_dataset(tmp)
    (root / "imagesTr" / "vol2.nii.gz").unlink()
    return root, ["dataset.json: training entry 2 names ./imagesTr/vol2.nii.gz, but", "does not exist",
                  "fix the path in dataset.json"]


def empty_dataset(tmp):
    root = nnunet_dataset(tmp, num_cases=0)
    return root, ["the nnunet dataset has no training cases (imagesTr/ holds no images)"]


# Each problem the issue lists goes through the real CLI once; the remaining ones are checked in-process only.
CLI_CASES = [missing_label, shape_mismatch, affine_mismatch, mask_0_255, values_out_of_range, float_labels,
             nan_intensities, huge_intensities, truncated_gzip, empty_root, wrong_root, json_names_missing_file]
CASES = [*CLI_CASES, corrupt_file, empty_dataset]


def _build(root, tmp_path, *overrides):
    from segtrain.data import build_datamodule

    cfg = compose(["data=nifti", f"data.root={root}", "data.patch_size=[16,16,16]", *overrides], cache_dir=tmp_path / "cache")
    return build_datamodule(cfg.data, tmp_path / "run")


@pytest.mark.parametrize("make", CASES, ids=lambda f: f.__name__)
def test_bad_dataset_raises_one_clear_data_error(tmp_path, make):
    root, expected = make(tmp_path / "ds")
    with pytest.raises(DataError) as info:
        _build(root, tmp_path)
    message = str(info.value)
    assert "\n" not in message
    for part in expected:
        assert part in message, message


@pytest.mark.slow
@pytest.mark.parametrize("make", CLI_CASES, ids=lambda f: f.__name__)
def test_bad_dataset_through_the_cli_exits_before_training(tmp_path, cache_dir, make):
    root, expected = make(tmp_path / "ds")
    run = tmp_path / "run"
    proc = run_cli(["data=nifti", f"data.root={root}", "data.patch_size=[16,16,16]", *TINY_MODEL, f"hydra.run.dir={run}"],
                   tmp_path, cache_dir)
    assert proc.returncode == 2, proc.stderr[-3000:]
    errors = [line for line in proc.stderr.splitlines() if line.startswith("segtrain: error:")]
    assert len(errors) == 1 and "Traceback" not in proc.stderr, proc.stderr[-3000:]
    for part in expected:
        assert part in errors[0], errors[0]
    assert not (run / "checkpoints").exists()


def test_label_mapping_fixes_a_0_255_mask(tmp_path):
    root, _ = mask_0_255(tmp_path / "ds")
    data = _build(root, tmp_path, "data.label_mapping='{255: 1}'")
    assert data.report.num_classes == 2 and data.report.cases[1].class_voxels[1] > 0
    data.setup("fit")
    labels = {int(v) for i in range(len(data.val_set)) for v in data.val_set[i]["label"].unique()}
    labels |= {int(v) for i in range(len(data.train_set)) for v in data.train_set[i]["label"].unique()}
    assert labels <= {0, 1}


def test_geometry_tolerance_accepts_rounding_noise(tmp_path):
    root = nnunet_dataset(tmp_path / "ds")
    _, label = sphere_case(seed=1)
    noisy = np.eye(4)
    noisy[:3, 3] = [1e-4, 0.0, 0.0]
    save_nifti(root / "labelsTr" / "case01.nii.gz", label, noisy)
    assert _build(root, tmp_path).report.num_cases == 4


def test_first_failing_case_is_reported_and_good_cases_are_cached(tmp_path):
    import segtrain.data.preflight as preflight

    root = nnunet_dataset(tmp_path / "ds", num_cases=6)
    for case in ("case02", "case04"):
        _relabel(root, lambda label: label * 7, case)
    with pytest.raises(DataError, match="case02.nii.gz"):
        _build(root, tmp_path, "data.preflight_workers=2")
    cached = json.loads(next((tmp_path / "cache" / "preflight").glob("*.json")).read_text())["cases"]
    assert "case00" in cached and "case02" not in cached
    assert preflight.DataError is DataError


def test_2d_problems(tmp_path):
    from PIL import Image

    root = images2d_dataset(tmp_path / "colour")
    Image.fromarray(np.zeros((40, 32, 3), np.uint8)).save(root / "labels" / "img1.png")
    with pytest.raises(DataError, match="labels/img1.png: label has 3 colour channels"):
        _build(root, tmp_path, "data=images2d", "data.patch_size=[16,16]")
    root = images2d_dataset(tmp_path / "mixed")
    Image.fromarray(np.zeros((40, 32, 3), np.uint8)).save(root / "images" / "img2.png")
    with pytest.raises(DataError, match=r"different numbers of image channels \(1 in case img0, 3 in case img2\)"):
        _build(root, tmp_path, "data=images2d", "data.patch_size=[16,16]")
    root = images2d_dataset(tmp_path / "nolabel")
    (root / "labels" / "img3.png").unlink()
    with pytest.raises(DataError, match="labels/img3.png: label file missing for image"):
        _build(root, tmp_path, "data=images2d", "data.patch_size=[16,16]")
    shutil.rmtree(root / "images")
    with pytest.raises(DataError, match="data.layout=images2d needs images there"):
        _build(root, tmp_path, "data=images2d", "data.patch_size=[16,16]")


def test_0_255_masks_without_class_names_stop_with_the_mapping_hint(tmp_path, cache_dir):
    """Without dataset.json labels the classes are inferred; 0/255 masks would make a silent 256-class model."""
    from PIL import Image

    from segtrain.data import build_datamodule

    root = images2d_dataset(tmp_path / "cells")
    (root / "dataset.json").unlink()
    for path in sorted((root / "labels").glob("*.png")):
        Image.fromarray((np.asarray(Image.open(path)) > 0).astype(np.uint8) * 255).save(path)
    cfg = compose(["data=images2d", f"data.root={root}", "data.patch_size=[16,16]"], cache_dir=cache_dir)
    with pytest.raises(DataError, match=r"labels/img\d\.png: the labels hold the values \[0, 255\].*data.label_mapping='\{255: 1\}'"):
        build_datamodule(cfg.data)
    mapped = compose(["data=images2d", f"data.root={root}", "data.patch_size=[16,16]", "data.label_mapping={255: 1}"],
                     cache_dir=cache_dir)
    assert build_datamodule(mapped.data).spec.num_classes == 2


def test_gaps_in_inferred_label_values_get_a_mapping_that_closes_them(tmp_path, cache_dir):
    from segtrain.data import build_datamodule

    root = _relabel(msd_dataset(tmp_path / "ds"), lambda label: label * 3, case="vol1")
    meta = json.loads((root / "dataset.json").read_text())
    del meta["labels"]
    (root / "dataset.json").write_text(json.dumps(meta))
    cfg = compose(["data=nifti", f"data.root={root}", "data.patch_size=[8,8,8]"], cache_dir=cache_dir)
    with pytest.raises(DataError, match=r"values \[0, 1, 3\].*data.label_mapping='\{3: 2\}'"):
        build_datamodule(cfg.data)
