"""scripts/compare_nnunet.py: its datasets, nnU-Net's split, and segtrain's side of the comparison end to end.

nnU-Net itself is not installed here (it lives in a scratch environment, docs/benchmarks.md#segtrain-beside-nnu-net);
the script's segtrain runs (--skip-nnunet) are what the suite checks.
"""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest

from helpers.cli import ROOT

sys.path.insert(0, str(ROOT / "scripts"))
import compare_nnunet  # noqa: E402


def test_chest2d_is_slicerios_ct_slice_by_slice_in_both_layouts(tmp_path):
    pytest.importorskip("slicerio")
    from PIL import Image

    dataset = compare_nnunet.prepare_dataset("chest2d", tmp_path)
    assert len(dataset["cases"]) == 34 and dataset["configuration"] == "2d"
    meta = json.loads((dataset["raw"] / "dataset.json").read_text())
    assert meta["file_ending"] == ".png" and meta["channel_names"] == {"0": "CT"} and len(meta["labels"]) == 8
    case = dataset["cases"][17]
    image = np.asarray(Image.open(dataset["raw"] / "imagesTr" / f"{case}_0000.png"))
    label = np.asarray(Image.open(dataset["raw"] / "labelsTr" / f"{case}.png"))
    assert image.shape == label.shape == (128, 128) and image.dtype == np.uint8
    assert set(np.unique(label)) - {0} and max(np.unique(label)) <= 7
    assert np.array_equal(image, np.asarray(Image.open(dataset["segtrain_root"] / "images" / f"{case}.png")))
    split = json.loads(dataset["split"].read_text())
    assert split[0]["val"] == dataset["val"] and len(dataset["val"]) == 7  # nnU-Net's fold 0 of 34 cases
    assert not set(split[0]["train"]) & set(split[0]["val"]) and len(split[0]["train"]) == 27


def test_the_nnunet_trainer_it_adds_sets_only_the_budget():
    assert "class nnUNetTrainer_SegtrainBudget(nnUNetTrainer)" in compare_nnunet.TRAINER
    assert "self.num_epochs = int(os.environ" in compare_nnunet.TRAINER
    assert "self.num_iterations_per_epoch = int(os.environ" in compare_nnunet.TRAINER
    compile(compare_nnunet.TRAINER, "segtrain_budget.py", "exec")


@pytest.mark.slow
def test_segtrains_side_trains_predicts_and_scores_the_held_out_fold(tmp_path):
    pytest.importorskip("slicerio")
    proc = subprocess.run([sys.executable, str(ROOT / "scripts" / "compare_nnunet.py"), "--nnunet", str(tmp_path / "none"),
                           "--skip-nnunet", "--datasets", "chest2d", "--iterations", "2", "--epochs", "1", "--runs", "1",
                           "--work", str(tmp_path / "work"), "--segtrain-args",
                           "model.base_filters=4 model.max_filters=16 trainer.enable_model_summary=false"],
                          capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    assert "| case | segtrain seed 0 |" in proc.stdout and "| chest_000 | " in proc.stdout
    results = json.loads((tmp_path / "work" / "chest2d_segtrain_results.json").read_text())
    assert len(results) == 1 and set(results[0]["dice"]) == set(json.loads(
        (tmp_path / "work" / "chest2d_splits_final.json").read_text())[0]["val"])
    run = tmp_path / "work" / "runs" / "chest2d" / "segtrain_0"
    assert json.loads((run / "split.json").read_text())["val"] == sorted(results[0]["dice"])  # trained on nnU-Net's fold
