"""Dataset layouts, geometry, intensity, foreground sampling, splits and caching (in-process, tiny data)."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch

from helpers.cli import compose
from test_data_factory import (images2d_dataset, msd_dataset, nnunet_dataset, save_nifti, save_nrrd, sphere_case)


def datamodule(root, *overrides, cache_dir, run_dir=None, label_maps=None):
    from segtrain.augment import build_augmentation
    from segtrain.data import build_datamodule

    cfg = compose(["data=nifti", f"data.root={root}", "data.patch_size=[8,8,8]", *overrides], cache_dir=cache_dir)
    return build_datamodule(cfg.data, run_dir, label_maps=label_maps, augmentation=build_augmentation(cfg.augment))


def draw(data, n: int) -> dict:
    """``n`` training patches through the real training loader (as one epoch of training sees them)."""

    data.options.patches_per_epoch, data.batch_size = n, 50
    data.setup("fit")
    batches = list(data.train_dataloader())
    return {k: torch.cat([b[k] for b in batches]) for k in ("image", "label")}


# -- layouts -------------------------------------------------------------------------------------
def test_nnunet_multichannel_names_from_dataset_json(tmp_path, cache_dir):
    root = nnunet_dataset(tmp_path / "ds", channels=("T1", "FLAIR"), classes=("edema", "tumour"))
    data = datamodule(root, cache_dir=cache_dir, run_dir=tmp_path / "run")
    spec = data.spec
    assert (spec.in_channels, spec.num_classes) == (2, 3)
    assert spec.channel_names == ["T1", "FLAIR"] and spec.class_names == ["background", "edema", "tumour"]
    data.setup("fit")
    item = data.val_set[0]
    assert item["image"].shape == (2, 16, 16, 16) and item["label"].dtype == torch.uint8
    assert torch.allclose(item["image"].mean((1, 2, 3)), torch.zeros(2), atol=1e-5)  # zscore per channel
    report = json.loads((tmp_path / "run" / "dataset_report.json").read_text())
    assert set(report["foreground_fraction"]) == {"edema", "tumour"}


def test_msd_layout_and_plain_nii_and_nrrd(tmp_path, cache_dir):
    data = datamodule(msd_dataset(tmp_path / "msd"), cache_dir=cache_dir)
    assert data.spec.class_names == ["background", "lesion"] and data.spec.channel_names == ["MRI"]
    data = datamodule(nnunet_dataset(tmp_path / "nii", ending=".nii"), cache_dir=cache_dir)
    assert len(data.train_cases) + len(data.val_cases) == 4
    root = nnunet_dataset(tmp_path / "nrrd", num_cases=0, ending=".nrrd")
    for i in range(3):
        image, label = sphere_case(seed=i)
        save_nrrd(root / "imagesTr" / f"c{i}_0000.nrrd", image.astype(np.int16), np.diag([-1.0, -1.0, 2.5]), [0, 0, 0])
        save_nrrd(root / "labelsTr" / f"c{i}.nrrd", label, np.diag([-1.0, -1.0, 2.5]), [0, 0, 0])
    data = datamodule(root, cache_dir=cache_dir)
    assert data.report.cases[0].spacing == pytest.approx([1.0, 1.0, 2.5]) and data.report.cases[0].axcodes == "RAS"


@pytest.mark.parametrize("rgb, suffix", [(False, ".png"), (True, ".png"), (False, ".tif"), (True, ".jpg")])
def test_images2d_grayscale_and_rgb(tmp_path, cache_dir, rgb, suffix):
    root = images2d_dataset(tmp_path / "2d", rgb=rgb, suffix=suffix)
    data = datamodule(root, "data=images2d", "data.patch_size=[16,16]", cache_dir=cache_dir)
    assert data.spec.spatial_dims == 2 and data.spec.in_channels == (3 if rgb else 1)
    assert data.spec.class_names == ["background", "cell"]
    batch = draw(data, 4)
    assert batch["image"].shape == (4, 3 if rgb else 1, 16, 16) and batch["label"].shape == (4, 1, 16, 16)
    assert data.report.cases[0].shape == [32, 40]  # MONAI's (width, height) order, as data.patch_size


# -- geometry and intensity ----------------------------------------------------------------------
def test_any_orientation_gives_the_same_voxels(tmp_path, cache_dir):
    """The same anatomy stored RAS (float MR) and LPS-flipped (int16 CT) is identical after reorientation."""
    from monai.transforms import Compose

    from segtrain.data.transforms import deterministic_transforms

    image, label = sphere_case((16, 12, 10), seed=3)
    ras = np.diag([1.0, 2.0, 3.0, 1.0])
    flipped = ras.copy()
    flipped[:2, :2] *= -1
    flipped[:2, 3] = [15 * 1.0, 11 * 2.0]  # voxel (0, 0) of the flipped array is voxel (15, 11) of the original
    root = tmp_path / "ds"
    save_nifti(root / "imagesTr" / "a_0000.nii.gz", image, ras)
    save_nifti(root / "labelsTr" / "a.nii.gz", label, ras)
    save_nifti(root / "imagesTr" / "b_0000.nii.gz", np.round(image[::-1, ::-1] * 100).astype(np.int16), flipped)
    save_nifti(root / "labelsTr" / "b.nii.gz", label[::-1, ::-1].copy(), flipped)
    (root / "dataset.json").write_text(json.dumps({"labels": {"background": 0, "x": 1}, "channel_names": {"0": "x"},
                                                   "file_ending": ".nii.gz"}))
    data = datamodule(root, "data.normalize=none", cache_dir=cache_dir)
    pipeline = Compose(deterministic_transforms(data.options, data.spec))
    a = pipeline({"image": str(root / "imagesTr/a_0000.nii.gz"), "label": str(root / "labelsTr/a.nii.gz")})
    b = pipeline({"image": str(root / "imagesTr/b_0000.nii.gz"), "label": str(root / "labelsTr/b.nii.gz")})
    assert torch.equal(a["label"], b["label"])
    assert torch.allclose(a["image"] * 100, b["image"], atol=0.51)  # int16 rounding
    assert torch.allclose(a["image"].affine, b["image"].affine)


def test_resampling_and_inversion_back_to_the_original_geometry(tmp_path, cache_dir):
    from monai.data import MetaTensor

    from segtrain.data.transforms import inference_transforms, prediction_inverter

    root = nnunet_dataset(tmp_path / "ds", num_cases=0, ending=".nrrd")
    directions = np.array([[0.0, -1.5, 0.0], [-1.5, 0.0, 0.0], [0.0, 0.0, 4.0]])  # anisotropic, axes swapped, LPS
    for i in range(2):
        image, label = sphere_case((20, 18, 6), seed=i, radius=2)
        save_nrrd(root / "imagesTr" / f"c{i}_0000.nrrd", image, directions, [10.0, -5.0, 3.0])
        save_nrrd(root / "labelsTr" / f"c{i}.nrrd", label, directions, [10.0, -5.0, 3.0])
    data = datamodule(root, "data.spacing=[2,2,2]", "data.num_workers=0", cache_dir=cache_dir, run_dir=tmp_path / "run")
    data.setup("fit")
    item = data.val_set[0]
    assert item["image"].pixdim.tolist() == pytest.approx([2.0, 2.0, 2.0])
    assert set(torch.unique(item["label"]).tolist()) <= {0, 1}  # nearest-neighbour labels
    from segtrain.data import DataSpec

    spec = DataSpec.load(tmp_path / "run" / "data_spec.json")
    assert spec.spacing == [2.0, 2.0, 2.0] and spec.normalize == ["zscore"]
    from monai.transforms import Compose

    transforms = Compose(inference_transforms(None, spec))  # as segtrain.predict wraps it
    path = str(root / "imagesTr" / "c0_0000.nrrd")
    prepared = transforms({"image": path})
    image = prepared["image"]
    assert image.shape[1:] == item["image"].shape[1:]
    prepared["pred"] = MetaTensor((image > 1.0).float(), meta=image.meta, applied_operations=image.applied_operations)
    restored = prediction_inverter(transforms)(prepared)["pred"]
    from monai.transforms import LoadImage

    original = LoadImage(image_only=True, ensure_channel_first=True)(path)
    assert restored.shape == original.shape
    assert torch.allclose(restored.affine.double(), original.affine.double(), atol=1e-4)


def test_ct_normalisation_uses_foreground_percentiles(tmp_path, cache_dir):
    root = tmp_path / "ct"
    rs = np.random.RandomState(0)
    for i in range(3):
        image = np.full((16, 16, 16), -1000, np.int16)  # air
        label = np.zeros((16, 16, 16), np.uint8)
        label[4:12, 4:12, 4:12] = 1
        image[label == 1] = rs.randint(0, 100, int(label.sum()))  # tissue 0..99 HU
        image[0, 0, 0] = 3000  # metal outlier outside the foreground
        save_nifti(root / "imagesTr" / f"c{i}_0000.nii.gz", image)
        save_nifti(root / "labelsTr" / f"c{i}.nii.gz", label)
    (root / "dataset.json").write_text(json.dumps({"labels": {"background": 0, "organ": 1}, "channel_names": {"0": "CT"},
                                                   "file_ending": ".nii.gz"}))
    data = datamodule(root, "data.normalize=ct", cache_dir=cache_dir, run_dir=tmp_path / "run")
    stats = data.spec.intensity[0]
    assert 0 <= stats["percentile_00_5"] <= 2 and 97 <= stats["percentile_99_5"] <= 99
    assert stats["mean"] == pytest.approx(49.5, abs=3)
    data.setup("fit")
    image = data.val_set[0]["image"]
    low = (stats["percentile_00_5"] - stats["mean"]) / stats["std"]
    high = (stats["percentile_99_5"] - stats["mean"]) / stats["std"]
    assert float(image.min()) == pytest.approx(low, abs=1e-4) and float(image.max()) == pytest.approx(high, abs=1e-4)
    assert json.loads((tmp_path / "run" / "dataset_report.json").read_text())["intensity"][0]["mean"] == stats["mean"]
    assert "data.normalize=ct" not in (tmp_path / "run" / "dataset_report.txt").read_text()  # no CT hint: already ct
    text = "\n".join(datamodule(root, "data.normalize=zscore", cache_dir=cache_dir).report.notes)
    assert "looks like CT" in text


# -- foreground sampling -------------------------------------------------------------------------
def _sparse_dataset(root, num_cases=3, shape=(64, 64, 64)):
    """~0.05% foreground: one 5x5x5 cube (125 of 262,144 voxels) in the middle of each case."""
    for i in range(num_cases):
        image, label = np.random.RandomState(i).normal(0, 1, shape).astype(np.float32), np.zeros(shape, np.uint8)
        label[30:35, 28:33, 30:35] = 1
        save_nifti(root / "imagesTr" / f"c{i}_0000.nii.gz", image)
        save_nifti(root / "labelsTr" / f"c{i}.nii.gz", label)
    (root / "dataset.json").write_text(json.dumps({"labels": {"background": 0, "speck": 1}, "channel_names": {"0": "MR"},
                                                   "file_ending": ".nii.gz"}))
    return root


@pytest.mark.parametrize("pos_fraction", [0.0, 0.33, 1.0])
def test_foreground_patches_at_the_configured_rate_with_tiny_foreground(tmp_path, cache_dir, pos_fraction):
    root = _sparse_dataset(tmp_path / "sparse")
    data = datamodule(root, "data.patch_size=[16,16,16]", f"data.pos_fraction={pos_fraction}", "augment=none",
                      cache_dir=cache_dir, run_dir=tmp_path / "run")
    assert data.report.foreground_fraction()["speck"] == pytest.approx(125 / 64**3)
    assert "speck 0.0477%" in (tmp_path / "run" / "dataset_report.txt").read_text()
    n = 600
    batch = draw(data, n)
    centred = (batch["label"][:, 0, 8, 8, 8] > 0).float().mean().item()  # the voxel each patch was centred on
    sigma = math.sqrt(pos_fraction * (1 - pos_fraction) / n)
    assert abs(centred - pos_fraction) <= 4 * sigma + 1e-9, (centred, pos_fraction)
    touched = (batch["label"].flatten(1).amax(1) > 0).float().mean().item()
    assert touched >= centred  # background patches may still graze the speck


def test_class_balanced_sampling_sees_rare_classes(tmp_path, cache_dir):
    root = tmp_path / "multi"
    for i in range(3):
        label = np.zeros((32, 32, 32), np.uint8)
        label[8:24, 8:24, 8:24] = 1  # 4096 voxels
        label[15:17, 15:17, 15:17] = 2  # 8 voxels, inside class 1
        save_nifti(root / "imagesTr" / f"c{i}_0000.nii.gz", np.random.RandomState(i).rand(32, 32, 32).astype(np.float32))
        save_nifti(root / "labelsTr" / f"c{i}.nii.gz", label)
    (root / "dataset.json").write_text(json.dumps({"labels": {"background": 0, "big": 1, "rare": 2},
                                                   "channel_names": {"0": "x"}, "file_ending": ".nii.gz"}))
    shares = {}
    for sampling in ("posneg", "class_balanced"):
        data = datamodule(root, "data.patch_size=[8,8,8]", "data.pos_fraction=1.0", f"data.sampling={sampling}",
                          "augment=none", cache_dir=cache_dir)
        centres = draw(data, 400)["label"][:, 0, 4, 4, 4]
        assert (centres > 0).all()
        shares[sampling] = (centres == 2).float().mean().item()
    assert shares["posneg"] < 0.03  # ~8 / 4096
    assert abs(shares["class_balanced"] - 0.5) < 4 * math.sqrt(0.25 / 400)


def test_class_locations_stay_small_for_large_structures():
    from segtrain.data.transforms import ForegroundLocationsd

    label = torch.zeros(1, 100, 100, 100, dtype=torch.uint8)
    label[0, :, :, :60] = 1  # 600,000 voxels
    label[0, 0, 0, 99] = 2
    locations = ForegroundLocationsd()({"label": label})["label_locations"]
    assert locations[1]["count"] == 600_000 and locations[1]["coords"].shape == (10_000, 3)
    assert locations[2]["coords"].tolist() == [[0, 0, 99]]


def test_small_cases_are_padded_to_the_patch(tmp_path, cache_dir):
    root = nnunet_dataset(tmp_path / "ds", shape=(12, 10, 16))
    data = datamodule(root, "data.patch_size=[16,16,16]", cache_dir=cache_dir, run_dir=tmp_path / "run")
    assert draw(data, 3)["image"].shape == (3, 1, 16, 16, 16)
    assert "zero-padded" in (tmp_path / "run" / "dataset_report.txt").read_text()


def test_label_maps_hook_follows_the_label(tmp_path, cache_dir):
    """Training batches get the maps of their (augmented) labels; validation cases theirs, computed once."""
    root = nnunet_dataset(tmp_path / "ds")
    maps = {"twice": lambda label, spacing, num_classes=None: 2.0 * (label.float() if torch.is_tensor(label) else label)}
    data = datamodule(root, "augment=nnunet", "data.num_workers=0", cache_dir=cache_dir, label_maps=maps)
    data.setup("fit")
    batch = next(iter(data.train_dataloader()))
    assert batch["twice"].shape == batch["label"].shape == (2, 1, 8, 8, 8)
    assert torch.equal(batch["twice"], 2.0 * batch["label"].float())
    assert data.val_set[0]["twice"].shape == data.val_set[0]["label"].shape


# -- split and caching ---------------------------------------------------------------------------
def test_folds_partition_the_cases_deterministically(tmp_path, cache_dir):
    root = nnunet_dataset(tmp_path / "ds", num_cases=7)
    seen = []
    for fold in range(3):
        data = datamodule(root, f"data.fold={fold}", "data.num_folds=3", cache_dir=cache_dir, run_dir=tmp_path / f"f{fold}")
        split = json.loads((tmp_path / f"f{fold}" / "split.json").read_text())
        assert split["val"] == [c["id"] for c in data.val_cases]
        assert not set(split["train"]) & set(split["val"]) and len(split["train"]) + len(split["val"]) == 7
        seen += split["val"]
    assert sorted(seen) == [f"case{i:02d}" for i in range(7)]
    again = datamodule(root, "data.fold=1", "data.num_folds=3", cache_dir=cache_dir)
    assert [c["id"] for c in again.val_cases] == json.loads((tmp_path / "f1" / "split.json").read_text())["val"]


def test_folds_are_nnunets_and_a_split_file_is_read():
    """data.fold holds the cases nnU-Net v2's fold holds (its KFold(5, shuffle, seed 12345) over sorted ids; the values
    below are scikit-learn's, computed in nnU-Net's venv); data.split_file reads nnU-Net's splits_final.json."""
    import json

    from segtrain.data.split import nnunet_folds, split_cases

    assert nnunet_folds([f"case{i:02d}" for i in range(7)], 3) == [["case03", "case04", "case06"], ["case00", "case01"],
                                                                   ["case02", "case05"]]
    assert sorted(nnunet_folds([f"c{i:03d}" for i in range(34)], 5)[0]) == ["c000", "c003", "c015", "c024", "c025",
                                                                           "c031", "c033"]
    ids = [f"case{i:02d}" for i in range(7)]
    assert split_cases(ids, fold=1, num_folds=3) == (["case02", "case03", "case04", "case05", "case06"], ["case00", "case01"])


def test_split_file_gives_the_fold_it_names(tmp_path):
    import json

    from segtrain.data.split import split_cases
    from segtrain.errors import ConfigError

    ids = [f"case{i:02d}" for i in range(6)]
    path = tmp_path / "splits_final.json"
    path.write_text(json.dumps([{"train": ids[:4], "val": ids[4:]}, {"train": ids[2:], "val": ids[:2]}]))
    assert split_cases(ids, fold=1, split_file=str(path)) == (ids[2:], ids[:2])
    with pytest.raises(ConfigError, match="holds 2 folds; choose one with data.fold=0..1"):
        split_cases(ids, split_file=str(path))
    with pytest.raises(ConfigError, match="data.fold=3 is not in data.split_file"):
        split_cases(ids, fold=3, split_file=str(path))
    path.write_text(json.dumps({"train": ["case00", "nope"], "val": ["case01"]}))
    with pytest.raises(ConfigError, match="names 1 case\\(s\\) the dataset does not have, e.g. nope"):
        split_cases(ids, split_file=str(path))
    path.write_text("not json")
    with pytest.raises(ConfigError, match="cannot read it as JSON"):
        split_cases(ids, split_file=str(path))


def test_preflight_cache_skips_unchanged_cases(tmp_path, cache_dir, monkeypatch):
    import segtrain.data.preflight as preflight

    root = nnunet_dataset(tmp_path / "ds")
    datamodule(root, cache_dir=tmp_path / "cache")
    read = []
    original = preflight.read_voxels
    monkeypatch.setattr(preflight, "read_voxels", lambda path: read.append(path) or original(path))
    datamodule(root, cache_dir=tmp_path / "cache")
    assert read == []
    image, label = sphere_case(seed=9)
    save_nifti(root / "labelsTr" / "case01.nii.gz", label)  # changed file: only that case is read again
    datamodule(root, cache_dir=tmp_path / "cache")
    assert sorted(read) == sorted([str(root / "labelsTr" / "case01.nii.gz"), str(root / "imagesTr" / "case01_0000.nii.gz")])


@pytest.mark.parametrize("cache", ["memory", "disk", "none"])
def test_cache_modes_give_the_same_cases(tmp_path, cache_dir, cache):
    root = nnunet_dataset(tmp_path / "ds")
    for attempt in range(2 if cache == "disk" else 1):  # the second disk run reads the cached cases
        data = datamodule(root, f"data.cache={cache}", cache_dir=tmp_path / "cache")
        data.setup("fit")
        assert [data.val_set[i]["image"].shape for i in range(len(data.val_set))] == [(1, 16, 16, 16)]
        region = tuple(data.augmentation.crop_size([8, 8, 8]))  # cut larger for rotation and scaling (augment=nnunet)
        assert [data.train_set[i]["image"].shape for i in range(len(data.train_set))] == [(1, *region)] * 3
    if cache == "disk":
        cached = list((tmp_path / "cache" / "persistent").rglob("*.pt"))
        assert len(cached) == 4
        for path in cached:  # plain tensors and containers: read back with weights_only=True
            torch.load(path, weights_only=True)
