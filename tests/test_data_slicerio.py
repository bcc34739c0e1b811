"""Real data shipped in a package: slicerio's chest CT with its 7-class segmentation, as an nnU-Net v2 layout."""

from __future__ import annotations

import json

import pytest
import torch

from helpers.cli import compose, run_cli
from segtrain.events import read_scalars
from test_data_factory import SLICER_CLASSES, TINY_MODEL, slicer_chest_dataset

pytest.importorskip("slicerio")

CHEST = ["data=nifti", "data.patch_size=[32,32,16]", "data.normalize=ct", "data.sampling=class_balanced",
         "data.val_fraction=0.25"]


@pytest.fixture(scope="module")
def chest(tmp_path_factory):
    return slicer_chest_dataset(tmp_path_factory.mktemp("chest") / "Dataset001_Chest")


def test_chest_ct_reads_with_names_orientation_and_ct_statistics(chest, tmp_path, cache_dir):
    from monai.transforms import Compose

    from segtrain.data import build_datamodule
    from segtrain.data.transforms import deterministic_transforms

    cfg = compose([*CHEST, f"data.root={chest}"], cache_dir=cache_dir)
    data = build_datamodule(cfg.data, tmp_path)
    spec = data.spec
    assert spec.class_names == ["background", *SLICER_CLASSES] and spec.channel_names == ["CT"]
    assert (spec.in_channels, spec.num_classes, spec.normalize) == (1, 8, ["ct"])
    stats = spec.intensity[0]
    assert -1100 < stats["percentile_00_5"] < stats["mean"] < stats["percentile_99_5"] < 1500  # HU of the labelled tissue
    case = data.report.cases[0]
    assert case.spacing == pytest.approx([6.09375, 6.09375, 10.0], abs=1e-3) and case.dtype == "int16"
    report = json.loads((tmp_path / "dataset_report.json").read_text())
    assert set(report["foreground_fraction"]) == set(SLICER_CLASSES)
    assert all(0 < f < 0.5 for f in report["foreground_fraction"].values())
    # chest03 is chest00 stored with x and y swapped: identical once both are reoriented to RAS.
    pipeline = Compose(deterministic_transforms(cfg.data, spec))
    a, b = (pipeline({"image": str(chest / "imagesTr" / f"{c}_0000.nrrd"), "label": str(chest / "labelsTr" / f"{c}.nrrd")})
            for c in ("chest00", "chest03"))
    assert a["image"].shape == (1, 64, 64, 34)
    assert torch.equal(a["label"], b["label"]) and torch.allclose(a["image"], b["image"])
    assert sorted(torch.unique(a["label"]).tolist()) == list(range(8))


@pytest.mark.slow
def test_trains_on_chest_ct_through_the_cli(chest, tmp_path, cache_dir):
    run = tmp_path / "run"
    proc = run_cli([*CHEST, f"data.root={chest}", "data.patches_per_epoch=4", "trainer.max_epochs=2", *TINY_MODEL,
                    f"hydra.run.dir={run}"], tmp_path, cache_dir)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "foreground fraction: ribs" in proc.stdout
    scalars = read_scalars(run)
    for name in SLICER_CLASSES:
        assert len(scalars[f"val/dice/{name}"]) == 2 and f"val/iou/{name}" in scalars
    assert (run / "dataset_report.txt").is_file() and (run / "data_spec.json").is_file()
    assert json.loads((run / "split.json").read_text())["val"] and len(json.loads((run / "split.json").read_text())["train"]) == 3
