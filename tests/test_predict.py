"""segtrain-predict: predictions come back in the geometry of each input image."""

from __future__ import annotations

import numpy as np
import pytest

from helpers.cli import SEGTRAIN, TINY_2D, TINY_3D, run_cli

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def trained_3d(tmp_path_factory, cache_dir):
    run = tmp_path_factory.mktemp("run3d")
    proc = run_cli([*TINY_3D, "trainer.max_epochs=2", f"hydra.run.dir={run}"], run, cache_dir)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return run


def test_prediction_is_written_in_each_inputs_own_geometry(trained_3d, tmp_path, cache_dir):
    """The same scene stored as RAS and as a flipped, anisotropic LPS volume gives the same labels in world space."""
    import nibabel as nib

    source = next((p for p in cache_dir.rglob("imagesTr/case_000.nii.gz")))
    volume = nib.load(source).get_fdata().astype(np.float32)
    inputs = tmp_path / "in"
    inputs.mkdir()
    ras = np.diag([1.0, 1.0, 1.0, 1.0])
    nib.save(nib.Nifti1Image(volume, ras), inputs / "ras.nii.gz")
    # Flip the first two axes in the array and compensate in the affine (LPS orientation), spacing 1.
    lps = np.diag([-1.0, -1.0, 1.0, 1.0])
    lps[:3, 3] = [volume.shape[0] - 1, volume.shape[1] - 1, 0]
    nib.save(nib.Nifti1Image(volume[::-1, ::-1].copy(), lps), inputs / "lps.nii.gz")

    out = tmp_path / "out"
    proc = run_cli([f"ckpt_path={trained_3d / 'checkpoints' / 'last.ckpt'}", f"input={inputs}", f"output_dir={out}",
                    f"hydra.run.dir={tmp_path / 'predict'}"], tmp_path, cache_dir,
                   program=SEGTRAIN + "-predict")
    assert proc.returncode == 0, proc.stderr[-3000:]
    a, b = nib.load(out / "ras.nii.gz"), nib.load(out / "lps.nii.gz")
    assert a.shape == volume.shape and b.shape == volume.shape
    np.testing.assert_allclose(a.affine, ras, atol=1e-5)
    np.testing.assert_allclose(b.affine, lps, atol=1e-5)
    pred_a, pred_b = np.asarray(a.dataobj), np.asarray(b.dataobj)
    assert set(np.unique(pred_a)) <= {0, 1}
    np.testing.assert_array_equal(pred_a, pred_b[::-1, ::-1])


def test_predict_2d_writes_label_pngs_of_the_input_size(tmp_path, cache_dir):
    """A non-square image gives a PNG of its size whose pixels are the argmax of the saved probabilities (same order).

    The training run holds out a 2D test split, scored on the label PNGs after training.
    """
    from PIL import Image

    import csv

    run = tmp_path / "run"
    assert run_cli([*TINY_2D, "data.test_fraction=0.34", f"hydra.run.dir={run}"], tmp_path, cache_dir).returncode == 0
    rows = list(csv.DictReader((run / "test_metrics_per_case.csv").open()))  # the 2D test split, scored on the PNGs
    assert len(rows) == 2 and all(r["nsd"] != "" or r["empty"] for r in rows)
    images = next(p for p in cache_dir.glob("synthetic2d_*/images"))
    first = sorted(images.iterdir())[0]
    inputs = tmp_path / "in"
    inputs.mkdir()
    Image.fromarray(np.asarray(Image.open(first))[:, :40]).save(inputs / "wide.png")  # 64 rows, 40 columns
    out = tmp_path / "out"
    proc = run_cli([f"ckpt_path={run / 'checkpoints' / 'last.ckpt'}", f"input={inputs}", f"output_dir={out}",
                    "save_probabilities=true", f"hydra.run.dir={tmp_path / 'predict'}"], tmp_path, cache_dir,
                   program=SEGTRAIN + "-predict")
    assert proc.returncode == 0, proc.stderr[-3000:]
    written = Image.open(out / "wide.png")
    assert written.size == Image.open(inputs / "wide.png").size == (40, 64)
    probabilities = np.load(out / "wide_probabilities.npz")["probabilities"]
    assert probabilities.shape == (2, 64, 40)
    np.testing.assert_array_equal(np.asarray(written), probabilities.argmax(0))


def test_predict_rejects_a_missing_checkpoint(tmp_path, cache_dir):
    proc = run_cli(["ckpt_path=/nope.ckpt", f"input={tmp_path}", f"hydra.run.dir={tmp_path / 'p'}"], tmp_path, cache_dir,
                   program=SEGTRAIN + "-predict")
    assert proc.returncode == 2 and "ckpt_path=/nope.ckpt: no such checkpoint" in proc.stderr


def _oblique_lps_affine(spacing=(0.7, 0.9, 2.5), degrees=20.0, origin=(12.5, -40.0, 7.0)) -> np.ndarray:
    """An LPS-like (first two axes flipped), rotated, anisotropic voxel-to-world matrix."""
    angle = np.deg2rad(degrees)
    rotation = np.array([[np.cos(angle), -np.sin(angle), 0], [np.sin(angle), np.cos(angle), 0], [0, 0, 1]])
    affine = np.eye(4)
    affine[:3, :3] = np.diag([-1.0, -1.0, 1.0]) @ rotation @ np.diag(spacing)
    affine[:3, 3] = origin
    return affine


def test_oblique_lps_anisotropic_volume_round_trips_with_tta_and_probabilities(trained_3d, tmp_path, cache_dir):
    """The output has exactly the input's shape and affine, labels in range; probabilities share the grid and sum to 1."""
    import nibabel as nib

    source = next(cache_dir.rglob("imagesTr/case_000.nii.gz"))
    volume = nib.load(source).get_fdata().astype(np.float32)[:, :, :20]
    affine = _oblique_lps_affine()
    inputs = tmp_path / "in"
    inputs.mkdir()
    nib.save(nib.Nifti1Image(volume, affine), inputs / "oblique.nii.gz")
    out = tmp_path / "out"
    proc = run_cli([f"ckpt_path={trained_3d / 'checkpoints' / 'last.ckpt'}", f"input={inputs / 'oblique.nii.gz'}",
                    f"output_dir={out}", "tta=true", "save_probabilities=true", f"hydra.run.dir={tmp_path / 'predict'}"],
                   tmp_path, cache_dir, program=SEGTRAIN + "-predict")
    assert proc.returncode == 0, proc.stderr[-3000:]
    written = nib.load(out / "oblique.nii.gz")
    assert written.shape == volume.shape
    np.testing.assert_allclose(written.affine, nib.load(inputs / "oblique.nii.gz").affine, atol=1e-5)
    assert set(np.unique(np.asarray(written.dataobj)).tolist()) <= {0, 1}
    probabilities = nib.load(out / "oblique_probabilities.nii.gz")
    assert probabilities.shape[:3] == volume.shape and probabilities.shape[-1] == 2
    np.testing.assert_allclose(probabilities.affine, written.affine, atol=1e-5)
    np.testing.assert_allclose(np.asarray(probabilities.dataobj).sum(-1), 1.0, atol=1e-3)
    assert not [p.name for p in out.iterdir() if p.name.startswith(".")]  # no staging leftovers


def test_mirroring_averages_every_flip_of_the_spatial_axes():
    """tta=true: the mean over all 2**dims flip combinations, each flipped back (nnU-Net's mirroring)."""
    import itertools

    import torch

    from segtrain.predict import mirrored

    torch.manual_seed(0)
    weight = torch.randn(2, 1, 3, 3, 3)

    def net(x):  # not flip-equivariant: the mirrored mean differs from a single pass
        return torch.nn.functional.conv3d(x, weight, padding=1) + torch.linspace(0, 1, x.shape[-1])

    x = torch.randn(1, 1, 6, 5, 4)
    expected = torch.stack([torch.flip(net(torch.flip(x, dims)), dims) if dims else net(x)
                            for r in range(4) for dims in map(list, itertools.combinations([2, 3, 4], r))]).mean(0)
    torch.testing.assert_close(mirrored(net, 3)(x), expected)
    assert not torch.allclose(mirrored(net, 3)(x), net(x))


def test_predict_with_labels_scores_only_the_predicted_cases(trained_3d, tmp_path, cache_dir):
    root = next(cache_dir.rglob("imagesTr/case_000.nii.gz")).parent.parent
    out = tmp_path / "out"
    cases = [str(root / "imagesTr" / f"case_00{i}.nii.gz") for i in (1, 3)]
    proc = run_cli([f"ckpt_path={trained_3d / 'checkpoints' / 'last.ckpt'}", f"input=[{','.join(cases)}]",
                    f"output_dir={out}", f"label={root / 'labelsTr'}", f"hydra.run.dir={tmp_path / 'predict'}"],
                   tmp_path, cache_dir, program=SEGTRAIN + "-predict")
    assert proc.returncode == 0, proc.stderr[-3000:]
    import csv
    import json

    rows = list(csv.DictReader((out / "evaluation" / "metrics_per_case.csv").open()))
    assert [r["case"] for r in rows] == ["case_001", "case_003"] and rows[0]["class_name"] == "sphere"
    assert json.loads((out / "evaluation" / "summary.json").read_text())["labels_without_prediction"] == []


@pytest.mark.parametrize("problem", ["channels", "2d_into_3d", "no_label"])
def test_predict_bad_input_is_one_line_before_anything_is_written(trained_3d, tmp_path, cache_dir, problem):
    """Checked in-process (the one-line CLI form of these errors: test_predict_rejects_a_missing_checkpoint)."""
    import nibabel as nib
    from hydra import compose, initialize_config_dir
    from PIL import Image

    from segtrain.cli import config_dir
    from segtrain.errors import DataError
    from segtrain.predict import predict

    inputs = tmp_path / "in"
    inputs.mkdir()
    args = []
    if problem == "channels":
        nib.save(nib.Nifti1Image(np.zeros((16, 16, 16, 2), np.float32), np.eye(4)), inputs / "two.nii.gz")
        expected = "two.nii.gz: case two has 2 channel(s), the model takes 1"
    elif problem == "2d_into_3d":
        Image.fromarray(np.zeros((16, 16), np.uint8)).save(inputs / "flat.png")
        expected = "flat.png: a 2D image, but the model was trained on 3D volumes"
    else:
        nib.save(nib.Nifti1Image(np.zeros((16, 16, 16), np.float32), np.eye(4)), inputs / "lonely.nii.gz")
        (tmp_path / "labels").mkdir()
        nib.save(nib.Nifti1Image(np.zeros((16, 16, 16), np.uint8), np.eye(4)), tmp_path / "labels" / "other.nii.gz")
        args = [f"label={tmp_path / 'labels'}"]
        expected = "no label for case 'lonely'"
    out = tmp_path / "out"
    with initialize_config_dir(config_dir=config_dir(), version_base="1.3"):
        cfg = compose("predict", overrides=[f"ckpt_path={trained_3d / 'checkpoints' / 'last.ckpt'}", f"input={inputs}",
                                            f"output_dir={out}", *args])
    with pytest.raises(DataError) as error:
        predict(cfg)
    assert expected in str(error.value) and "\n" not in str(error.value)
    assert not out.exists()


def test_killed_prediction_leaves_whole_files_only(trained_3d, tmp_path, cache_dir):
    """SIGKILL while predicting: every label file present loads whole; the next run cleans up and completes."""
    import os
    import signal
    import subprocess
    import time

    import nibabel as nib

    source = next(cache_dir.rglob("imagesTr/case_000.nii.gz"))
    inputs = tmp_path / "in"
    inputs.mkdir()
    for i in range(12):
        os.symlink(source, inputs / f"copy{i:02d}.nii.gz")
    out = tmp_path / "out"
    args = [SEGTRAIN + "-predict", f"ckpt_path={trained_3d / 'checkpoints' / 'last.ckpt'}", f"input={inputs}",
            f"output_dir={out}", "tta=true", "save_probabilities=true", f"hydra.run.dir={tmp_path / 'predict'}"]
    env = {**os.environ, "SEGTRAIN_CACHE_DIR": str(cache_dir), "PYTHONWARNINGS": "ignore"}
    proc = subprocess.Popen(args, cwd=tmp_path, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and not (out.is_dir() and any(out.glob("copy*.nii.gz"))):
        time.sleep(0.05)
    time.sleep(0.3)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    finished = sorted(out.glob("*.nii.gz"))
    assert finished and len(finished) < 24, "the kill should land mid-way"
    for path in finished:
        assert np.isfinite(nib.load(path).get_fdata()).all()  # a truncated gzip would raise here
    again = run_cli(args[1:], tmp_path, cache_dir, program=args[0])
    assert again.returncode == 0, again.stderr[-2000:]
    assert len(list(out.glob("copy??.nii.gz"))) == 12
    assert not [p.name for p in out.iterdir() if p.name.startswith(".")]  # the staging folder of the killed run is gone


def test_evaluating_the_validation_predictions_reproduces_val_dice(trained_3d, tmp_path, cache_dir):
    """segtrain-evaluate's global Dice on the validation cases equals the logged val/dice (same overlap: same numbers)."""
    import json

    from segtrain.events import read_scalars

    root = next(cache_dir.rglob("imagesTr/case_000.nii.gz")).parent.parent
    val = json.loads((trained_3d / "split.json").read_text())["val"]
    out = tmp_path / "out"
    files = ",".join(str(root / "imagesTr" / f"{case}.nii.gz") for case in val)
    proc = run_cli([f"ckpt_path={trained_3d / 'checkpoints' / 'last.ckpt'}", f"input=[{files}]", f"output_dir={out}",
                    "inference.overlap=0.25", f"hydra.run.dir={tmp_path / 'predict'}"], tmp_path, cache_dir,
                   program=SEGTRAIN + "-predict")
    assert proc.returncode == 0, proc.stderr[-3000:]
    proc = run_cli([f"pred={out}", f"label={root / 'labelsTr'}", f"output_dir={tmp_path / 'scores'}"], tmp_path, cache_dir,
                   program=SEGTRAIN + "-evaluate")
    assert proc.returncode == 0, proc.stderr[-3000:]
    summary = json.loads((tmp_path / "scores" / "summary.json").read_text())
    assert summary["cases"] == len(val)
    logged = read_scalars(trained_3d)["val/dice"][-1].value
    assert summary["classes"]["sphere"]["global"]["dice"] == pytest.approx(logged, abs=1e-3)
